"""Learning curves of the chapter-9 agents: average training return per episode (book figure 9-6)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fdlcli.analysis.artifacts import pyplot, save_png
from fdlcli.analysis.curves import read_curves

# What the x axis of a returns figure counts: episodes (the book's figure 9-6), agent steps (agents that
# play episodes of different lengths compared at equal experience), or wall minutes since the run started
# (agents of different speeds compared at equal time: A3C's processes against DQN's single loop).
X_AXES = {"episodes": "episode", "steps": "agent steps", "minutes": "wall minutes since the run started"}


@dataclass
class Curve:
    label: str
    x: np.ndarray  # where each return was recorded, as X_AXES
    returns: np.ndarray


def training_returns(run_dir: Path, x: str = "episodes") -> tuple[np.ndarray, np.ndarray]:
    """The ``train/return`` records of a run: (x of each, returns), ``x`` one of X_AXES."""
    points = read_curves(run_dir, "minutes" if x == "minutes" else "step").get("train/return", [])
    returns = np.array([value for _, value in points], dtype=float)
    if x == "episodes":
        return np.arange(1, len(returns) + 1), returns
    return np.array([at for at, _ in points], dtype=float), returns


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    sums = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (sums[1:] - sums[np.arange(1, len(values) + 1) - counts]) / counts


def describe(curve: Curve, window: int) -> str:
    """One line on a curve: episodes, the mean of the first and of the last ``window`` returns (the book's
    test of learning: the last well above the first), and the best ``window``-episode mean."""
    n = len(curve.returns)
    k = min(window, n)
    means = moving_average(curve.returns, window)
    best = int(np.argmax(means[k - 1 :])) + k - 1  # only full windows (all of them when fewer episodes)
    return (
        f"{curve.label}: {n} episodes; mean of the first {k} {curve.returns[:k].mean():.2f}, of the last {k} "
        f"{curve.returns[-k:].mean():.2f}; best {k}-episode mean {means[best]:.2f} (episodes "
        f"{best - k + 2}-{best + 1})"
    )


def returns_figure() -> tuple[Any, Any]:
    """An empty figure and axes of the size every returns figure has."""
    return pyplot().subplots(figsize=(8, 4.8), dpi=100)


def finish_returns_figure(
    fig: Any, ax: Any, out: Path, window: int, xlabel: str, title: str, each: bool = False
) -> Path:
    """Label, grid, legend and save a returns figure (fdl plot-returns, benchmarks/pomdp_cartpole.py,
    benchmarks/unreal_vs_a3c.py); ``each``: the faint points are every episode's return."""
    ax.set_xlabel(xlabel)
    average = f"average return (last {window} episodes)"
    ax.set_ylabel(f"return: each episode (dots), {average}" if each else average)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, out)
    return out


def plot_curves(
    curves: list[Curve],
    out: Path,
    window: int,
    threshold: float | None,
    title: str,
    x: str = "episodes",
    each: bool = False,
) -> Path:
    """One moving-average line per curve; ``each`` also scatters every episode's return behind it, in the
    line's colour (the book's figure of DQN on Breakout shows both)."""
    fig, ax = returns_figure()
    for curve in curves:
        (line,) = ax.plot(curve.x, moving_average(curve.returns, window), label=curve.label, linewidth=1.4)
        if each:
            ax.scatter(curve.x, curve.returns, s=4, alpha=0.35, color=line.get_color(), linewidths=0)
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8, label=f"solved ({threshold:g})")
    return finish_returns_figure(fig, ax, out, window, X_AXES[x], title, each)
