"""The rich consoles fdl prints through, with markup off.

What fdl prints is mostly text from outside: paths, overrides, messages of other libraries, install
hints such as ``pip install 'fdlcli[atari]'``. Rich would read ``[...]`` in such text as markup: it
would drop ``[atari]`` or ``[bold]`` and fail on ``[/x]`` with a MarkupError traceback. So every fdl
console prints strings as they are (``markup=False``, tables and progress messages included), and the
few styled words (the red ``error:``) are rich ``Text`` objects, never markup in a string.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.text import Text


def make_console(*, stderr: bool = False, width: int | None = None) -> Console:
    """A console that prints strings literally: use it instead of ``rich.console.Console(...)``."""
    return Console(stderr=stderr, width=width, markup=False)


# Tables stay readable in logs and pipes, where rich would otherwise assume 80 columns (unless COLUMNS
# says how wide the output may be).
console = make_console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
err_console = make_console(stderr=True)


def print_error(message: str, label: str = "error:") -> None:
    """One line on stderr: a red ``label`` and the message, verbatim."""
    err_console.print(Text.assemble((label, "red"), " " if message else "", message), soft_wrap=True)
