"""Attention matrices of a translation: a PNG heatmap (book figure 7-33) and a terminal heatmap."""

from __future__ import annotations

from pathlib import Path

import torch

from fdlcli.analysis.artifacts import pyplot, save_png

SHADES = " ░▒▓█"  # weight 0 .. 1, one character per level


def attention_png(weights: torch.Tensor, source: list[str], target: list[str], path: Path) -> Path:
    """``weights`` [len(target), len(source)]: each row is where one output word looked."""
    plt = pyplot()
    rows, cols = weights.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * cols + 1.5), max(3.0, 0.4 * rows + 1.2)), dpi=100)
    ax.imshow(weights.float().numpy(), cmap="gray", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), source, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(rows), target, fontsize=9)
    ax.set_xlabel("source")
    ax.set_ylabel("translation")
    fig.tight_layout()
    save_png(fig, path)
    return path


def attention_text(weights: torch.Tensor, source: list[str], target: list[str], cell: int = 3) -> str:
    """A heatmap of shade characters: one row per output word, one column per source word (numbered, with
    a key below), darker where the decoder attended more (scaled to the largest weight)."""
    label = max((len(w) for w in target), default=0)
    header = " " * (label + 1) + "".join(f"{i + 1:>{cell}}" for i in range(len(source)))
    lines = [header]
    scaled = weights / weights.max().clamp_min(1e-9)
    for word, row in zip(target, scaled.tolist(), strict=False):
        shades = "".join(" " + SHADES[min(len(SHADES) - 1, int(w * len(SHADES)))] * (cell - 1) for w in row)
        lines.append(f"{word:>{label}} {shades}")
    lines.append("  ".join(f"{i + 1}={w}" for i, w in enumerate(source)))
    return "\n".join(lines)
