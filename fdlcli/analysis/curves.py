"""Metric curves read back from a run's ``metrics.jsonl``, and figures read off them.

Every run logs one JSON record per value (``{"name", "value", "step", "epoch", "time"}``); the training
cost is the mean over the ``trainer.log_every`` minibatches since the previous record. Everything here is
computed from those records alone, so it works for finished, interrupted and still-running runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

from fdlcli.analysis.artifacts import pyplot, save_png
from fdlcli.errors import RunDirError, UsageError
from fdlcli.runs import CONFIG_FILE, OVERRIDES_FILE, read_metrics

# Chapter 4's yardstick: minibatches until the training cost first reaches 0.1 (book: ~18,000 for SGD,
# just over 2,000 for momentum).
COST_METRIC = "train/cost"
COST_THRESHOLD = 0.1


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric of a run as ``{name: [(step, value), ...]}`` in logging order.

    A half-written last line (a run killed mid-write) is skipped, not an error.
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(Path(run_dir)):
        try:
            name, step, value = str(record["name"]), int(record["step"]), float(record["value"])
        except (ValueError, KeyError, TypeError):
            continue
        curves.setdefault(name, []).append((step, value))
    return curves


def lower_is_better(metric: str) -> bool:
    """Costs, losses, errors and perplexities fall as a model learns; accuracies and rewards rise."""
    leaf = metric.rsplit("/", 1)[-1].lower()
    return any(word in leaf for word in ("cost", "loss", "error", "perplexity"))


def steps_to_threshold(
    points: Iterable[tuple[int, float]], threshold: float, below: bool = True
) -> int | None:
    """The first logged step whose value is at or below (``below=False``: at or above) ``threshold``;
    None if the curve never gets there.

    With records every ``log_every`` minibatches the answer is resolved to that many minibatches, and as
    each training-cost record averages its window, it is the step at which the *window mean* first dips
    below the threshold.
    """
    for step, value in points:
        if (value <= threshold) if below else (value >= threshold):
            return step
    return None


def minibatches_to_cost(
    run_dir: Path, threshold: float = COST_THRESHOLD, metric: str = COST_METRIC
) -> int | None:
    """Minibatches a run needed until its logged training cost first reached ``threshold``."""
    return steps_to_threshold(read_curves(run_dir).get(metric, []), threshold)


# --------------------------------------------------------------------------------------------------
# Several runs on one figure: a sweep's jobs overlay, labelled by what differs between them.


@dataclass
class Curve:
    run_dir: Path
    label: str
    points: list[tuple[int, float]]


def expand_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Run directories named directly, and the job directories of any sweep directory (in job order)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path)
        if not path.is_dir():
            raise RunDirError(f"no such run or sweep directory: {path}")
        if (path / CONFIG_FILE).is_file():
            found.append(path)
            continue
        jobs = [p for p in path.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file()]
        if not jobs:
            raise RunDirError(f"{path} is neither an fdl run nor a sweep of runs (no {CONFIG_FILE} found)")
        found += sorted(
            jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
        )
    return found


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's command-line overrides that not every run shares (``optim=adam``), else its folder name."""
    overrides = []
    for run_dir in run_dirs:
        path = run_dir / OVERRIDES_FILE
        try:
            saved = yaml.safe_load(path.read_text()) if path.is_file() else []
        except yaml.YAMLError:
            saved = []
        overrides.append([str(o) for o in saved or [] if not str(o).startswith(("experiment=", "hydra"))])
    shared = set.intersection(*(set(o) for o in overrides)) if len(overrides) > 1 else set()
    labels = []
    for run_dir, own in zip(run_dirs, overrides, strict=True):
        distinct = [o for o in own if o not in shared]
        labels.append(" ".join(distinct) if distinct else f"{run_dir.parent.name}/{run_dir.name}")
    return labels


def load_curves(run_dirs: list[Path], metric: str) -> list[Curve]:
    """The ``metric`` curve of every run; an error naming the logged metrics if no run has it."""
    labels = run_labels(run_dirs)
    curves, available = [], set()
    for run_dir, label in zip(run_dirs, labels, strict=True):
        logged = read_curves(run_dir)
        available.update(logged)
        if metric in logged:
            curves.append(Curve(run_dir, label, logged[metric]))
    if not curves:
        choices = ", ".join(sorted(available)) or "none (no metrics.jsonl records yet)"
        raise UsageError(f"no run logged metric {metric!r}; logged metrics: {choices}")
    return curves


def plot_curves(
    path: Path, curves: list[Curve], metric: str, log_y: bool, threshold: float | None, title: str
) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for curve in curves:
        steps, values = zip(*curve.points, strict=True)
        ax.plot(steps, values, lw=1.3, label=curve.label)
    if threshold is not None:
        ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    if log_y and all(v > 0 for c in curves for _, v in c.points if not math.isnan(v)):  # NaN: a gap
        ax.set_yscale("log")
    ax.set_xlabel("minibatches")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(curves) > 1 or curves[0].label:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    save_png(fig, path)
