"""Chapter 4: the optimizer sweep's steps-to-threshold column, `fdl plot`, `fdl interpolate` (exact ends,
two runs, batch norm) and `fdl momentum-walk`, on real MNIST slices."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import torch
from conftest import MIRROR, fdl
from torch import nn

# 500 training images in minibatches of 100, a cost record after every minibatch: with lr 0.1 momentum
# gets the window cost under 0.1 within 10 epochs and plain SGD does not, so both cases of the column occur.
# The book's chapter-4 setting: constant lr, no shifts (mlp-mnist's own defaults go past the book).
SWEEP = [
    "-m",
    "optim=sgd,momentum",
    "optim.lr=0.1",
    "optim.schedule=constant",
    "data.shift=0",
    "trainer.epochs=10",
    "data.train_limit=500",
    "data.eval_limit=500",
    "trainer.log_every=1",
    "trainer.threads=1",
    "trainer.histograms=false",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, mirror: Path, cache_dir: Path) -> tuple[Path, str]:
    runs = tmp_path_factory.mktemp("chapter4-runs")
    env = {
        **os.environ,
        "FDL_DATA_DIR": str(mirror),
        "FDL_RUNS_DIR": str(runs),
        "FDL_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("FDL_DEBUG", None)
    result = fdl("train", "mlp-mnist", *SWEEP, env=env)
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = (runs / "mlp-mnist" / "sweeps").iterdir()
    return sweep_dir, result.stdout


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """The real `fdl` entry point, in process (saves the interpreter start-up of a subprocess)."""
    from fdlcli.cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def first_cost_at_or_below(run_dir: Path, threshold: float) -> int | None:
    """Independent of fdlcli.analysis: scan metrics.jsonl by hand."""
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["name"] == "train/cost" and record["value"] <= threshold:
            return record["step"]
    return None


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# --------------------------------------------------------------------------------------------------
# Steps to threshold


def test_steps_to_threshold_is_the_first_logged_step_at_or_past_it():
    from fdlcli.analysis.curves import lower_is_better, steps_to_threshold

    points = [(50, 0.4), (100, 0.12), (150, 0.1), (200, 0.05)]
    assert steps_to_threshold(points, 0.1) == 150  # at the threshold counts
    assert steps_to_threshold(points, 0.01) is None
    assert steps_to_threshold([(1, 0.5), (2, 0.97), (3, 0.99)], 0.97, below=False) == 2
    assert lower_is_better("train/cost") and lower_is_better("val/error")
    assert not lower_is_better("val/accuracy")


def test_sweep_table_shows_minibatches_to_cost_from_logged_metrics(sweep):
    sweep_dir, stdout = sweep
    assert "minibatches to cost<=0.1" in stdout
    expected = {job: first_cost_at_or_below(sweep_dir / job, 0.1) for job in ("0", "1")}
    assert expected["0"] is None and expected["1"] is not None, expected  # both branches exercised
    rows = [line for line in stdout.splitlines() if re.match(r"^│ [01] │", line)]
    cells = {row.split("│")[1].strip(): [c.strip() for c in row.split("│")] for row in rows}
    assert cells["0"][-3] == "-"
    assert cells["1"][-3] == str(expected["1"])


def test_plot_overlays_a_sweep_and_reports_the_threshold(sweep, env, capsys, tmp_path):
    sweep_dir, _ = sweep
    out = tmp_path / "curves.png"
    code, stdout, stderr = run_cli(capsys, "plot", sweep_dir, "--threshold", "0.1", "--out", out)
    assert code == 0, stderr
    assert_png(out)
    assert "optim=sgd" in stdout and "optim=momentum" in stdout  # labels: what differs between the jobs
    assert str(first_cost_at_or_below(sweep_dir / "1", 0.1)) in stdout
    assert f"wrote {out}" in stdout
    # default destination: the sweep's artifacts/
    code, stdout, _ = run_cli(capsys, "plot", sweep_dir / "0", sweep_dir / "1", "--metric", "val/accuracy")
    assert code == 0
    assert_png(sweep_dir / "0" / "artifacts" / "plot-val-accuracy.png")


def test_plot_against_wall_minutes_reads_the_run_clock(sweep, env, capsys, tmp_path):
    """--x minutes: each point at (record time - meta.json's start_time) / 60, the threshold in minutes."""
    import datetime as dt

    from fdlcli.analysis.curves import read_curves

    sweep_dir, _ = sweep
    job = sweep_dir / "1"
    start = dt.datetime.fromisoformat(json.loads((job / "meta.json").read_text())["start_time"]).timestamp()
    records = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r for r in records if r["name"] == "test/accuracy"]
    expected = [((r["time"] - start) / 60, r["value"]) for r in accuracy]
    drawn = read_curves(job, x="minutes")["test/accuracy"]
    assert [v for _, v in drawn] == [v for _, v in expected]
    assert [m for m, _ in drawn] == pytest.approx([m for m, _ in expected])
    assert all(0 <= minutes < 10 for minutes, _ in expected)
    out = tmp_path / "minutes.png"
    code, stdout, stderr = run_cli(
        capsys, "plot", job, "--metric", "test/accuracy", "--x", "minutes", "--threshold", "0", "--out", out
    )
    assert code == 0, stderr
    assert_png(out)
    assert "minutes to threshold" in stdout and f"{expected[0][0]:.4g}" in stdout
    code, _, stderr = run_cli(capsys, "plot", sweep_dir, "--x", "minutes", "--group-seeds")
    assert code == 2 and "only with --x step" in stderr


def test_minutes_leave_out_the_pause_before_a_resume(tmp_path):
    """A run interrupted at 10 s (last kept record) and resumed at 100 s: its records after the resume sit
    90 s earlier on the minutes axis, so a resumed run compares with an uninterrupted one."""
    import datetime as dt

    from fdlcli.analysis.curves import read_curves

    start = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)
    iso = (start + dt.timedelta(seconds=100)).isoformat()
    (tmp_path / "meta.json").write_text(
        json.dumps({"start_time": start.isoformat(), "resumes": [{"time": iso}]})
    )
    t0 = start.timestamp()
    times = [t0 + 5, t0 + 10, t0 + 130, t0 + 160]
    lines = [
        json.dumps({"name": "train/return", "value": i, "step": i, "time": t}) for i, t in enumerate(times)
    ]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    drawn = read_curves(tmp_path, x="minutes")["train/return"]
    assert [m * 60 for m, _ in drawn] == pytest.approx([5, 10, 40, 70])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--metric", "val/nope"], "logged metrics: test/accuracy, test/cost, test/error, train/cost"),
        (["--threshold", "x"], "Invalid value"),
    ],
)
def test_plot_bad_input_is_one_line(sweep, env, capsys, args, message):
    code, _, stderr = run_cli(capsys, "plot", sweep[0], *args)
    assert code == 2 and message in stderr and "Traceback" not in stderr


def test_plot_refuses_a_folder_without_runs(env, capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "plot", tmp_path)
    assert code == 1 and "neither an fdl run nor a sweep" in stderr


# --------------------------------------------------------------------------------------------------
# Interpolation


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path) as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def test_interpolation_ends_reproduce_init_and_trained_costs_exactly(sweep, env, capsys):
    run = sweep[0] / "1"
    code, stdout, stderr = run_cli(
        capsys, "interpolate", run, "--start", "-0.5", "--stop", "1.5", "--step", "0.25", "--examples", "0"
    )
    assert code == 0, stderr
    assert "batch norm: none in this model" in stdout
    rows = read_csv(run / "artifacts" / "interpolation-init-last-test500.csv")
    assert [r["alpha"] for r in rows] == [-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25]
    at = {r["alpha"]: r for r in rows}
    for alpha, checkpoint in ((0.0, "init"), (1.0, "last")):
        code, stdout, stderr = run_cli(capsys, "eval", run, "--checkpoint", checkpoint, "--json")
        assert code == 0, stderr
        metrics = json.loads(stdout)
        assert at[alpha]["cost"] == metrics["test/cost"]  # exactly, not approximately
        assert at[alpha]["accuracy"] == metrics["test/accuracy"]
    assert at[1.0]["cost"] < at[0.0]["cost"]
    assert_png(run / "artifacts" / "interpolation-init-last-test500.png")
    summary = json.loads((run / "artifacts" / "interpolation-init-last-test500.json").read_text())
    assert summary["points"] == 8 and summary["batch_norm_reestimated"] is False


def test_interpolation_between_two_runs_reports_a_barrier_or_none(sweep, env, capsys):
    run_a, run_b = sweep[0] / "0", sweep[0] / "1"
    code, stdout, stderr = run_cli(capsys, "interpolate", run_a, run_b, "--step", "0.1", "--examples", "300")
    assert code == 0, stderr
    assert "barrier" in stdout
    rows = read_csv(run_a / "artifacts" / f"interpolation-last-to-{sweep[0].name}-1-test300.csv")
    assert len(rows) == 40


@pytest.mark.parametrize(
    "args, message",
    [
        (["--step", "0"], "--step must be positive"),
        (["--start", "1", "--stop", "0"], "must be greater than --start"),
        (["--checkpoint", "step-7"], "no step-7 checkpoint"),
    ],
)
def test_interpolate_bad_input_is_one_line(sweep, env, capsys, args, message):
    code, _, stderr = run_cli(capsys, "interpolate", sweep[0] / "0", *args)
    assert code != 0 and message in stderr and "Traceback" not in stderr


def test_interpolate_refuses_a_sweep_directory(sweep, env, capsys):
    code, _, stderr = run_cli(capsys, "interpolate", sweep[0])
    assert code != 0 and "is a sweep" in stderr


# A model with batch norm, trained on nothing in particular: what matters is that the statistics along the
# path are re-estimated from data rather than taken from either end's stale running averages.


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(784, 32)
        self.norm = nn.BatchNorm1d(32)
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.hidden(x.flatten(1)))))


def test_batch_norm_statistics_are_reestimated_along_the_path(env):
    from fdlcli import config
    from fdlcli.analysis.interpolation import has_batch_norm, interpolate_path, reestimate_batch_norm
    from fdlcli.experiments.mlp import MNISTClassification

    run_config = config.validate(
        config.compose("mlp-mnist", ["data.train_limit=1000", "data.eval_limit=400", f"data.dir={MIRROR}"])
    )
    task = MNISTClassification(run_config)
    data = task.load_data()
    bn_data = tuple(a[:1000] for a in data.train)
    torch.manual_seed(0)
    model = BNNet()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    end_model = BNNet()
    end_model.norm.running_mean += 5.0  # stale, wrong statistics that must not be used
    end_model.norm.running_var *= 9.0
    end = {k: v.clone() for k, v in end_model.state_dict().items()}
    assert has_batch_norm(model)

    result = interpolate_path(task, model, start, end, [0.0, 0.5, 1.0], data.test, bn_data, 100)
    assert result.batch_norm and result.bn_examples == 1000

    # a=1 is the end model with statistics re-estimated from the same examples
    reference = BNNet()
    reference.load_state_dict(end)
    reestimate_batch_norm(reference, bn_data, 100)
    expected = task.metrics(reference, data.test, 100)
    assert result.metrics[2] == expected
    # ...and those statistics are the mean of the pre-BN activations over the data (equal minibatches)
    with torch.no_grad():
        activations = reference.hidden(bn_data[0])
    torch.testing.assert_close(reference.norm.running_mean, activations.mean(0), rtol=1e-4, atol=1e-5)
    # the stale statistics would have given another model
    stale = BNNet().eval()
    stale.load_state_dict(end)
    with torch.no_grad():
        assert (stale(data.test[0]) - reference.eval()(data.test[0])).abs().max() > 0.1


# --------------------------------------------------------------------------------------------------
# Momentum random walk


def test_momentum_walk_smooths_steps_as_an_exponential_average(env, capsys, tmp_path):
    code, stdout, stderr = run_cli(
        capsys, "momentum-walk", "--steps", "3000", "--momentum", "0,0.9", "--out", tmp_path
    )
    assert code == 0, stderr
    rows = read_csv(tmp_path / "momentum-walk.csv")
    assert len(rows) == 3000
    assert "momentum 0.9: std of the smoothed steps" in stdout
    steps = [r["step"] for r in rows]
    assert all(-10 <= s <= 10 for s in steps)
    v = 0.0
    for row in rows:  # v_t = 0.9 v_{t-1} + 0.1 step_t, checked from the CSV alone
        v = 0.9 * v + 0.1 * row["step"]
        assert row["momentum_0.9"] == pytest.approx(v, abs=1e-5)
        assert row["momentum_0"] == row["step"]
    stats = json.loads((tmp_path / "momentum-walk.json").read_text())
    for got, want in zip(stats["std_measured"], stats["std_predicted"], strict=True):
        assert got == pytest.approx(want, rel=0.1)
    assert_png(tmp_path / "momentum-walk.png")


def test_momentum_walk_rejects_momentum_of_one_or_more(env, capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "momentum-walk", "--momentum", "0.5,1.0", "--out", tmp_path)
    assert code == 2 and "[0, 1)" in stderr
