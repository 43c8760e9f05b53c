"""Metric curves read back from a run's ``metrics.jsonl``, and figures read off them.

Every run logs one JSON record per value (``{"name", "value", "step", "epoch", "time"}``); the training
cost is the mean over the ``trainer.log_every`` minibatches since the previous record. Everything here is
computed from those records alone, so it works for finished, interrupted and still-running runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fdlcli.analysis.artifacts import pyplot, save_png
from fdlcli.analysis.rundata import flatten, load_run, override_keys
from fdlcli.analysis.sweeps import without_seed
from fdlcli.catalog import read_json_object, timestamp
from fdlcli.errors import RunDirError, UsageError
from fdlcli.runs import CONFIG_FILE, META_FILE, locate, read_metrics

# Chapter 4's yardstick: minibatches until the training cost first reaches 0.1 (book: ~18,000 for SGD,
# just over 2,000 for momentum).
COST_METRIC = "train/cost"
COST_THRESHOLD = 0.1


# What a curve's x axis counts: the minibatch (step) of each record, or the wall-clock minutes since the
# run started (meta.json's start_time, so setup counts; the pause between an interruption's last kept record
# and each resume does not, so runs that were resumed compare with runs that were not).
X_AXES = {"step": "minibatches", "minutes": "wall minutes since the run started"}


def read_curves(run_dir: Path, x: str = "step") -> dict[str, list[tuple[float, float]]]:
    """Every logged metric of a run as ``{name: [(x, value), ...]}`` in logging order, ``x`` the step or
    (``x="minutes"``) the wall minutes since the run started.

    A half-written last line (a run killed mid-write) is skipped, not an error.
    """
    records = read_metrics(Path(run_dir))
    clock = _training_clock(Path(run_dir), records) if x == "minutes" else None
    curves: dict[str, list[tuple[float, float]]] = {}
    for record in records:
        try:
            name, value = str(record["name"]), float(record["value"])
            at = int(record["step"]) if clock is None else clock(float(record["time"])) / 60
        except (ValueError, KeyError, TypeError):
            continue
        curves.setdefault(name, []).append((at, value))
    return curves


def _training_clock(run_dir: Path, records: list[dict]) -> Callable[[float], float]:
    """Seconds since the run started at a record's time, less the pauses before its resumes.

    A resume truncates the records to its checkpoint, so the pause is the time from the last record kept
    before the resume to the resume itself (the lost work after that checkpoint is not counted twice).
    """
    meta = read_json_object(run_dir / META_FILE)
    start = timestamp(meta.get("start_time"))
    if start is None:
        start = float(records[0].get("time", 0.0)) if records else 0.0
    times = sorted(float(r["time"]) for r in records if isinstance(r.get("time"), int | float))
    pauses = []  # (resume time, seconds paused before it)
    for resume in meta.get("resumes") or []:
        resumed = timestamp(resume.get("time")) if isinstance(resume, dict) else None
        if resumed is None:
            continue
        before = [t for t in times if t <= resumed]
        pauses.append((resumed, resumed - max(before[-1] if before else start, start)))

    def clock(at: float) -> float:
        return at - start - sum(paused for resumed, paused in pauses if at >= resumed)

    return clock


def lower_is_better(metric: str) -> bool:
    """Costs, losses, errors and perplexities fall as a model learns; accuracies and rewards rise."""
    leaf = metric.rsplit("/", 1)[-1].lower()
    return any(word in leaf for word in ("cost", "loss", "error", "perplexity"))


def steps_to_threshold(
    points: Iterable[tuple[float, float]], threshold: float, below: bool = True
) -> float | None:
    """The first logged step (or minute: whatever the points' x counts) whose value is at or below
    (``below=False``: at or above) ``threshold``; None if the curve never gets there.

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
# Several runs on one figure: a sweep's jobs overlay, labelled by what differs between them. Runs whose
# resolved configs differ only in their seed can be drawn as one curve: the mean over the seeds with a
# shaded band (the standard deviation, or a bootstrap 95% interval of the mean).

BANDS = {"std": "shaded: mean ± 1 std over seeds", "ci": "shaded: bootstrap 95% interval of the mean"}
BOOTSTRAP_SAMPLES = 2000


@dataclass
class Curve:
    run_dir: Path  # the run (the first seed of a group)
    label: str
    points: list[tuple[float, float]]  # (x, value), or (step, mean over seeds); x as X_AXES
    runs: int = 1  # seeds averaged into ``points``
    band: list[tuple[float, float]] | None = None  # (low, high) at each point when runs > 1


def expand_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Run directories named directly, and the job directories of any sweep directory (in job order)."""
    found: list[Path] = []
    for path in paths:
        path = locate(path)
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


def _distinct_labels(overrides: list[list[str]], fallbacks: list[str]) -> list[str]:
    """Each entry's overrides that not every entry shares (``optim=adam``), else its fallback name."""
    distinct = distinct_overrides(overrides)
    return [" ".join(own) or fallback for own, fallback in zip(distinct, fallbacks, strict=True)]


# keys that change how a run is saved and logged, not what it learns: no label names them
BOOKKEEPING_KEYS = frozenset(
    f"trainer.{key}"
    for key in ("log_every", "print_every_s", "checkpoint_every", "keep_checkpoints", "histograms")
)


def distinct_overrides(overrides: list[list[str]]) -> list[list[str]]:
    """Each entry's overrides but those that every entry shares and the bookkeeping ones."""
    shared = set.intersection(*(set(o) for o in overrides)) if len(overrides) > 1 else set()
    return [
        [
            o
            for o, key in zip(own, override_keys(own), strict=True)
            if o not in shared and key not in BOOKKEEPING_KEYS
        ]
        for own in overrides
    ]


def run_labels(run_dirs: list[Path]) -> list[str]:
    """Each run's command-line overrides that not every run shares (``optim=adam``), else its folder name;
    runs of several experiments are named by their experiment first (``cnn-cifar10 trainer.epochs=86``)."""
    loaded = [load_run(d) for d in run_dirs]
    if len({run.experiment for run in loaded}) > 1:
        overrides = distinct_overrides([run.overrides for run in loaded])
        return [" ".join([run.experiment, *own]) for run, own in zip(loaded, overrides, strict=True)]
    folders = [f"{d.parent.name}/{d.name}" for d in run_dirs]
    return _distinct_labels([run.overrides for run in loaded], folders)


def seed_groups(run_dirs: list[Path]) -> list[list[Path]]:
    """Runs whose resolved configs are the same except for ``seed``, in first-seen order."""
    groups: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        config = flatten(load_run(run_dir).config)
        config.pop("seed", None)
        groups.setdefault(json.dumps(config, sort_keys=True, default=str), []).append(run_dir)
    return list(groups.values())


def group_labels(groups: list[list[Path]]) -> list[str]:
    """What sets each group of seeds apart: its overrides but the seed, else the folder name."""
    return _distinct_labels(
        [without_seed(load_run(g[0]).overrides) for g in groups],
        [f"{g[0].parent.name}/{g[0].name}" if len(g) == 1 else g[0].parent.name for g in groups],
    )


def aggregate(
    curves: list[list[tuple[float, float]]], band: str = "std", seed: int = 0
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """The mean of several seeds' curves at the steps every one of them logged, and a band around it.

    ``band="std"``: mean +- the sample standard deviation over seeds. ``band="ci"``: a percentile
    bootstrap 95% interval of the mean, resampling whole seeds (curves) with replacement, so each point's
    interval comes from the same resamples. Keeping only the common steps means every point averages
    the same seeds: a seed that stopped early shortens the curve instead of making the mean jump.
    """
    import numpy as np

    if band not in BANDS:
        raise UsageError(f"unknown band {band!r}; choose from: {', '.join(BANDS)}")
    by_run = [dict(points) for points in curves]
    steps = sorted(set.intersection(*(set(p) for p in by_run)))
    values = np.array([[points[s] for s in steps] for points in by_run], dtype=float).reshape(len(curves), -1)
    mean = values.mean(axis=0)
    if len(curves) < 2:
        low = high = mean
    elif band == "std":
        std = values.std(axis=0, ddof=1)
        low, high = mean - std, mean + std
    else:
        draws = np.random.default_rng(seed).integers(0, len(curves), size=(BOOTSTRAP_SAMPLES, len(curves)))
        means = values[draws].mean(axis=1)  # (samples, steps)
        low, high = np.percentile(means, [2.5, 97.5], axis=0)
    return (
        list(zip(steps, mean.tolist(), strict=True)),
        list(zip(low.tolist(), high.tolist(), strict=True)),
    )


def load_curves(
    run_dirs: list[Path], metric: str, group_seeds: bool = False, band: str = "std", x: str = "step"
) -> list[Curve]:
    """The ``metric`` curve of every run (or of every group of seeds) against ``x``; an error naming the
    logged metrics if no run has it. Seeds average at common steps, so they group only on steps."""
    if x not in X_AXES:
        raise UsageError(f"unknown x axis {x!r}; choose from: {', '.join(X_AXES)}")
    if group_seeds and x != "step":
        raise UsageError("seeds are averaged at the steps they share: group them only with --x step")
    groups = seed_groups(run_dirs) if group_seeds else [[d] for d in run_dirs]
    labels = group_labels(groups) if group_seeds else run_labels(run_dirs)
    curves, available = [], set()
    for group, label in zip(groups, labels, strict=True):
        members = []
        for run_dir in group:
            logged = read_curves(run_dir, x)
            available.update(logged)
            if logged.get(metric):
                members.append((run_dir, logged[metric]))
        if len(members) == 1:
            curves.append(Curve(members[0][0], label, members[0][1]))
        elif members:
            points, interval = aggregate([m[1] for m in members], band)
            if points:
                seeds = f"{label} ({len(members)} seeds)"
                curves.append(Curve(members[0][0], seeds, points, len(members), interval))
    if not curves:
        choices = ", ".join(sorted(available)) or "none (no metrics.jsonl records yet)"
        raise UsageError(f"no run logged metric {metric!r}; logged metrics: {choices}")
    return curves


def auto_log_y(metric: str, curves: list[Curve]) -> bool:
    """A log axis for costs and losses that fall by more than a decade; narrower ranges read better on a
    linear one (and its tick labels stay plain numbers)."""
    values = [v for c in curves for _, v in c.points]
    return lower_is_better(metric) and min(values) > 0 and max(values) > 10 * min(values)


def plot_curves(
    path: Path,
    curves: list[Curve],
    metric: str,
    log_y: bool,
    threshold: float | None,
    title: str,
    xlabel: str = "minibatches",
) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    for curve in curves:
        steps, values = zip(*curve.points, strict=True)
        (line,) = ax.plot(steps, values, lw=1.3, label=curve.label, marker="o" if len(steps) < 3 else None)
        if curve.band is not None:
            low, high = zip(*curve.band, strict=True)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, lw=0)
    if threshold is not None:
        ax.axhline(threshold, color="grey", lw=0.8, ls="--")
    positive = all(v > 0 for c in curves for _, v in c.points if not math.isnan(v)) and all(
        low > 0 for c in curves for low, _ in c.band or [] if not math.isnan(low)
    )  # NaN (a null record): a gap
    if log_y and positive:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if len(curves) > 1 or curves[0].label:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    save_png(fig, path)
