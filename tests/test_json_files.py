"""Every JSON file fdl writes is strict JSON: a NaN or infinite metric is written as null, and fdl's own
readers take null back as NaN where they compute."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fdlcli import runs
from fdlcli.analysis import sweeps
from fdlcli.analysis.curves import read_curves
from fdlcli.engine.tracking import MetricsWriter


def strict(text: str) -> object:
    """json.loads that refuses NaN and Infinity, as jq, JavaScript and most JSON readers do."""

    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_metrics_jsonl_writes_non_finite_values_as_null_and_reads_them_as_nan(tmp_path: Path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    # the DNC's error of a task absent from the evaluated stories is NaN (experiments/dnc.py task_errors)
    writer.log({"test/error_task3": math.nan, "train/cost": math.inf, "test/error": 0.25}, step=7, epoch=0)
    writer.log({"test/error_task3": np.float32("nan")}, step=8, epoch=0)
    writer.close()
    lines = (tmp_path / runs.METRICS_FILE).read_text().splitlines()
    records = [strict(line) for line in lines]
    assert [r["value"] for r in records] == [None, None, 0.25, None]

    read = runs.read_metrics(tmp_path)
    assert math.isnan(read[0]["value"]) and math.isnan(read[1]["value"]) and read[2]["value"] == 0.25
    curves = read_curves(tmp_path)  # what fdl plot draws: a NaN point is a gap, not a dropped record
    assert [step for step, _ in curves["test/error_task3"]] == [7, 8]
    assert all(math.isnan(value) for _, value in curves["test/error_task3"])


def test_summary_meta_and_evals_are_strict_json(tmp_path: Path):
    run = runs.Run(path=tmp_path, config=None)
    run.write_summary(
        {
            "final": {"test/error_task3": float("nan"), "test/error": np.float64(0.5)},
            "history": [1.0, -np.inf],
        }
    )
    run.update_meta(status="failed", train_seconds=np.float32(1.5), steps=np.int64(3))
    eval_path = run.write_eval("best", "step-000000005", {"test/error_task3": float("nan")}, "test")
    summary = strict((tmp_path / runs.SUMMARY_FILE).read_text())
    assert summary == {"final": {"test/error_task3": None, "test/error": 0.5}, "history": [1.0, None]}
    assert strict((tmp_path / runs.META_FILE).read_text()) == {
        "status": "failed",
        "train_seconds": 1.5,
        "steps": 3,
    }
    assert strict(eval_path.read_text())["metrics"] == {"test/error_task3": None}


def test_sweep_summaries_skip_a_null_metric():
    jobs = [
        sweeps.Job(0, ["seed=0"], "completed", {"final": {"test/accuracy": None}}),
        sweeps.Job(1, ["seed=1"], "completed", {"final": {"test/accuracy": 0.9}}),
    ]
    (group,) = sweeps.group_by_seed(jobs)
    assert group.values(("final", "test/accuracy")) == [0.9]


def test_to_json_keeps_plain_values():
    assert runs.to_json({"a": [1, 2.5, "x", None, True], "p": Path("/r")}) == (
        '{"a": [1, 2.5, "x", null, true], "p": "/r"}'
    )
    with pytest.raises(ValueError):
        strict('{"value": NaN}')  # the check above can fail
