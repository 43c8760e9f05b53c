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
    """Save and close ``fig``. A 256-colour palette keeps line plots sharp at half the bytes or less,
    small enough for docs/figures."""
    from PIL import Image

    rendered = io.BytesIO()
    fig.savefig(rendered, format="png")
    pyplot().close(fig)
    rendered.seek(0)
    palette = io.BytesIO()
    Image.open(rendered).convert("RGB").quantize(colors=256).save(palette, format="png", optimize=True)
    atomic_write_bytes(Path(path), palette.getvalue())


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[float]], digits: int = 8) -> None:
    lines = [",".join(header)]
    lines += [",".join(f"{value:.{digits}g}" for value in row) for row in rows]
    atomic_write_text(Path(path), "\n".join(lines) + "\n")
