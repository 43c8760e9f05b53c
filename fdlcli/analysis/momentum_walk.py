"""Momentum as smoothing (book figure 4-8).

A random walk takes steps drawn uniformly from [-10, 10]; momentum m replaces each step by the exponentially
weighted average v_t = m * v_{t-1} + (1 - m) * step_t (v_0 = 0). The larger m, the smoother the walk and
the longer it keeps going in one direction: for independent steps the average's standard deviation falls to
sqrt((1 - m) / (1 + m)) times that of the steps (10 / sqrt(3) for this uniform), once it has warmed up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from fdlcli.analysis.artifacts import pyplot, save_png, write_csv

STEP_BOUND = 10.0


@dataclass
class Walk:
    steps: torch.Tensor  # [T] float64
    momenta: list[float]
    smoothed: torch.Tensor  # [len(momenta), T]


def simulate(length: int, momenta: list[float], seed: int) -> Walk:
    generator = torch.Generator().manual_seed(seed)
    steps = (torch.rand(length, generator=generator, dtype=torch.float64) * 2 - 1) * STEP_BOUND
    m = torch.tensor(momenta, dtype=torch.float64)
    smoothed = torch.empty(len(momenta), length, dtype=torch.float64)
    v = torch.zeros(len(momenta), dtype=torch.float64)
    for t in range(length):  # a recurrence over time, vectorized over the momentum values
        v = m * v + (1 - m) * steps[t]
        smoothed[:, t] = v
    return Walk(steps, list(momenta), smoothed)


def stats(walk: Walk) -> dict[str, list[float | None]]:
    """Measured and predicted standard deviation of each smoothed series after a warm-up of 5/(1-m)
    steps (measured is None when the walk is not at least twice that long)."""
    measured: list[float | None] = []
    predicted: list[float | None] = []
    step_std = STEP_BOUND / math.sqrt(3.0)
    for row, m in zip(walk.smoothed, walk.momenta, strict=True):
        warmup = math.ceil(5 / (1 - m))
        measured.append(float(row[warmup:].std()) if len(row) >= 2 * warmup else None)
        predicted.append(step_std * math.sqrt((1 - m) / (1 + m)))
    return {"std_measured": measured, "std_predicted": predicted}


def describe(walk: Walk) -> list[str]:
    numbers = stats(walk)
    lines = [f"{len(walk.steps)} steps uniform in [-{STEP_BOUND:g}, {STEP_BOUND:g}]"]
    for m, got, want in zip(walk.momenta, numbers["std_measured"], numbers["std_predicted"], strict=True):
        measured = f"{got:.2f}" if got is not None else "n/a (walk shorter than twice the warm-up)"
        lines.append(
            f"momentum {m:g}: std of the smoothed steps {measured} (independent steps predict {want:.2f})"
        )
    return lines


def save_csv(path: Path, walk: Walk) -> None:
    header = ["t", "step", *(f"momentum_{m:g}" for m in walk.momenta)]
    table = torch.cat([torch.arange(1, len(walk.steps) + 1).double()[None], walk.steps[None], walk.smoothed])
    write_csv(path, header, table.T.tolist(), digits=7)


def plot(path: Path, walk: Walk) -> None:
    plt = pyplot()
    count = len(walk.momenta)
    fig, axes = plt.subplots(count, 1, figsize=(7, 1.5 * count + 0.6), dpi=96, sharex=True, squeeze=False)
    t = range(1, len(walk.steps) + 1)
    for ax, m, row in zip(axes[:, 0], walk.momenta, walk.smoothed, strict=True):
        ax.plot(t, walk.steps.tolist(), color="lightgrey", lw=0.8, label="steps")
        ax.plot(t, row.tolist(), color="tab:blue", lw=1.4, label=f"momentum {m:g}")
        ax.set_ylim(-STEP_BOUND * 1.1, STEP_BOUND * 1.1)
        ax.legend(loc="upper right", fontsize=7, frameon=False)
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(
        "Random walk (steps uniform in [-10, 10]) and its exponentially weighted average", fontsize=9
    )
    fig.tight_layout()
    save_png(fig, path)
