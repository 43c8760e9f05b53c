"""Files analyses write into a run's artifacts/: PNGs (matplotlib without a display) and CSV tables, both
written atomically, so a reader never sees half a file."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fdlcli.runs import atomic_write_bytes, atomic_write_text


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed; imported only when drawing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[float]], digits: int = 8) -> None:
    lines = [",".join(header)]
    lines += [",".join(f"{value:.{digits}g}" for value in row) for row in rows]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
