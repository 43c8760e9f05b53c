"""Graceful stops: Ctrl-C or SIGTERM ask the loop to checkpoint and exit at the next step boundary."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopFlag:
    def __init__(self) -> None:
        self.requested: str | None = None


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Within the block, the first SIGINT/SIGTERM sets the flag; a second SIGINT interrupts at once."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag  # signal handlers can only be installed from the main thread
        return

    def handler(signum: int, _frame: object) -> None:
        if flag.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.requested = signal.Signals(signum).name

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
