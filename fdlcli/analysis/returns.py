"""Learning curves of the chapter-9 agents: average training return per episode (book figure 9-6)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fdlcli.runs import read_metrics


@dataclass
class Curve:
    label: str
    episodes: np.ndarray  # episode number (1-based) of each return
    returns: np.ndarray


def training_returns(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``train/return`` records of a run: (episode numbers, returns)."""
    records = [r for r in read_metrics(run_dir) if r["name"] == "train/return"]
    returns = np.array([r["value"] for r in records], dtype=float)
    return np.arange(1, len(returns) + 1), returns


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def plot_curves(curves: list[Curve], out: Path, window: int, threshold: float | None, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    for curve in curves:
        ax.plot(curve.episodes, moving_average(curve.returns, window), label=curve.label, linewidth=1.4)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8, label=f"solved ({threshold:g})")
    ax.set_xlabel("episode")
    ax.set_ylabel(f"average return (last {window} episodes)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
