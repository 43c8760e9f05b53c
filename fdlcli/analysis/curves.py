"""Metric curves read back from a run's ``metrics.jsonl``, and figures read off them.

Every run logs one JSON record per value (``{"name", "value", "step", "epoch", "time"}``); the training
cost is the mean over the ``trainer.log_every`` minibatches since the previous record. Everything here is
computed from those records alone, so it works for finished, interrupted and still-running runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from fdlcli.runs import METRICS_FILE

# Chapter 4's yardstick: minibatches until the training cost first reaches 0.1 (book: ~18,000 for SGD,
# just over 2,000 for momentum).
COST_METRIC = "train/cost"
COST_THRESHOLD = 0.1


def read_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every logged metric of a run as ``{name: [(step, value), ...]}`` in logging order.

    A half-written last line (a run killed mid-write) is skipped, not an error.
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return curves
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
                name, step, value = record["name"], int(record["step"]), float(record["value"])
            except (ValueError, KeyError, TypeError):
                continue
            curves.setdefault(name, []).append((step, value))
    return curves


def steps_to_threshold(points: Iterable[tuple[int, float]], threshold: float) -> int | None:
    """The first logged step whose value is at or below ``threshold``; None if it never gets there.

    With records every ``log_every`` minibatches the answer is resolved to that many minibatches, and as
    each record averages its window, it is the step at which the *window mean* first dips below.
    """
    for step, value in points:
        if value <= threshold:
            return step
    return None


def minibatches_to_cost(
    run_dir: Path, threshold: float = COST_THRESHOLD, metric: str = COST_METRIC
) -> int | None:
    """Minibatches a run needed until its logged training cost first reached ``threshold``."""
    return steps_to_threshold(read_curves(run_dir).get(metric, []), threshold)
