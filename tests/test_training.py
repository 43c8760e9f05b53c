"""Training on real MNIST: accuracy, exact resume after SIGTERM and SIGKILL, sweeps, concurrency."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    copy_run,
    fdl,
    fdl_call,
    fdl_environment,
    fdl_in_process,
    metric_records,
    read_summary,
    run_dirs,
)

# Small enough for CI, large enough that the resume points fall mid-epoch and mid-logging-window.
RESUMABLE = [
    "trainer.epochs=3",
    "data.train_limit=6000",
    "data.eval_limit=2000",
    "trainer.checkpoint_every=7",
    "trainer.log_every=4",
    "model.dropout=0.3",  # dropout makes the torch RNG state matter
    "optim=momentum",
    "seed=5",
]


def test_short_real_training_passes_90_percent(env):
    result = fdl("train", "mlp-mnist", "optim=momentum", "trainer.epochs=2", env=env)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(env, "mlp-mnist")
    summary = read_summary(run)
    assert summary["final"]["test/accuracy"] >= 0.90, summary["final"]


def _start(env, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fdlcli", "train", "mlp-mnist", *overrides],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_step(
    run_root: Path, min_step: int, process: subprocess.Popen, exclude: Path, timeout: float = 120
) -> Path:
    """The new run's directory, once its latest checkpoint has reached ``min_step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for latest in run_root.glob("*/checkpoints/latest.json"):
            if latest.parent.parent == exclude:
                continue
            try:
                if json.loads(latest.read_text())["step"] >= min_step:
                    return latest.parent.parent
            except (ValueError, KeyError, OSError):
                pass
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.02)
    raise AssertionError("training never reached the expected step")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, mirror: Path, cache_dir: Path) -> Path:
    """The uninterrupted run the interrupted ones must equal: trained once for this module's four tests
    (once per xdist worker that runs them), never written to."""
    environment = fdl_environment(tmp_path_factory.mktemp("reference"), mirror, cache_dir)
    result = fdl("train", "mlp-mnist", *RESUMABLE, env=environment)
    assert result.returncode == 0, result.stderr
    (run,) = run_dirs(environment, "mlp-mnist")
    return run


@pytest.mark.parametrize("kill_at_step", [15, 70, 121])
def test_resume_after_sigkill_matches_uninterrupted_run(env, reference_run, kill_at_step):
    process = _start(env, *RESUMABLE)
    run = _wait_for_step(Path(env["FDL_RUNS_DIR"]) / "mlp-mnist", kill_at_step, process, reference_run)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert json.loads((run / "meta.json").read_text())["status"] == "running"  # killed mid-run

    resumed = fdl("train", "--resume", str(run), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run)["final"] == read_summary(reference_run)["final"]
    assert read_summary(run)["history"] == read_summary(reference_run)["history"]
    assert metric_records(run) == metric_records(reference_run)


def test_sigterm_checkpoints_and_resume_is_exact(env, reference_run):
    process = _start(env, *RESUMABLE)
    root = Path(env["FDL_RUNS_DIR"]) / "mlp-mnist"
    _wait_for_step(root, 1, process, reference_run)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "resume with: fdl train --resume" in stderr
    assert "Traceback" not in stderr
    run = next(r for r in run_dirs(env, "mlp-mnist") if r != reference_run)
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "interrupted"
    resumed = fdl("train", "--resume", str(run), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert read_summary(run)["final"] == read_summary(reference_run)["final"]
    assert metric_records(run) == metric_records(reference_run)


def test_resume_can_extend_training(golden_run, env, tmp_path):
    run = copy_run(golden_run("logreg-mnist").run, tmp_path)  # a finished 2-epoch run
    result = fdl("train", "--resume", str(run), "trainer.epochs=3", env=env)
    assert result.returncode == 0, result.stderr
    assert read_summary(run)["epochs"] == 3


def test_val_every_epochs_evaluates_every_nth_epoch_and_the_last(env, capsys):
    """trainer.val_every_epochs=2 over 3 epochs: validation after epochs 2 and 3 only, the epoch cost and a
    checkpoint after every epoch; a step-based experiment refuses the key."""
    quick = ["trainer.epochs=3", "trainer.val_every_epochs=2", "data.train_limit=500", "data.eval_limit=200"]
    code, stderr = fdl_in_process(["train", "logreg-mnist", *quick], capsys)
    assert code == 0, stderr
    (run,) = run_dirs(env, "logreg-mnist")
    records = metric_records(run)
    assert [r["epoch"] for r in records if r["name"] == "val/accuracy"] == [2, 3]
    assert [r["epoch"] for r in records if r["name"] == "train/epoch_cost"] == [1, 2, 3]
    assert [h["epoch"] for h in read_summary(run)["history"]] == [2, 3]
    code, stderr = fdl_in_process(["train", "dqn-cartpole", "trainer.val_every_epochs=2"], capsys)
    assert code == 2 and "trains in steps, not epochs" in stderr


def test_two_job_sweep(env):
    """Hydra's basic launcher, one job after the other; the joblib launcher's sweep (jobs side by side, its
    n_jobs) is test_scaling's test_parallel_launchers_share_the_cpus."""
    result = fdl(
        "train",
        "mlp-mnist",
        "-m",
        "optim=sgd,momentum",
        "trainer.epochs=1",
        "data.train_limit=1000",
        "data.eval_limit=500",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "sweep: 2 jobs" in result.stdout
    assert "optim=sgd" in result.stdout and "optim=momentum" in result.stdout
    (sweep,) = (Path(env["FDL_RUNS_DIR"]) / "mlp-mnist" / "sweeps").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name for p in jobs] == ["0", "1"]
    optimizers = set()
    for job in jobs:
        assert read_summary(job)["status"] == "completed"
        optimizers.add(json.loads((job / "meta.json").read_text())["overrides"][1])
    assert optimizers == {"optim=sgd", "optim=momentum"}
    table = json.loads((sweep / "sweep_summary.json").read_text())
    assert len(table) == 2 and all(job["status"] == "completed" for job in table)


def test_checkpoint_errors_are_one_line_and_leave_the_run_alone(golden_run, env, tmp_path, capsys):
    # finished 2-epoch runs of two experiments: copies of golden runs (two trainings less)
    run = copy_run(golden_run("logreg-mnist").run, tmp_path)
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())["name"]
    weights = run / "checkpoints" / latest / "model.safetensors"

    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    code, err = fdl_in_process(["eval", str(run), "--checkpoint", "last"], capsys)
    assert code == 1 and "corrupt" in err and "Traceback" not in err

    other = golden_run("mlp-mnist").run  # only read
    foreign = other / "checkpoints" / "init" / "model.safetensors"
    weights.write_bytes(foreign.read_bytes())  # weights of another experiment
    code, err = fdl_in_process(["eval", str(run), "--checkpoint", "last"], capsys)
    assert code == 1 and "not of experiment 'logreg-mnist'" in err

    state = run / "checkpoints" / latest / "trainer.pt"
    state.write_bytes(b"not a checkpoint")
    before = sorted(p.name for p in run.iterdir())
    code, err = fdl_in_process(["train", "--resume", str(run), "trainer.epochs=3"], capsys)
    assert code == 1 and "Traceback" not in err
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_sweep_and_single_runs_in_parallel_never_collide(env):
    """Two single runs and a sweep started at once: the singles claim run directories in the same second
    (distinct names: a time stamp and a random suffix, claimed by an exclusive mkdir), the sweep's jobs get
    theirs. Each process costs ~5 s of one core: two singles race as well as four did."""
    quick = ["trainer.epochs=1", "data.train_limit=200", "data.eval_limit=200", "trainer.histograms=false"]
    commands = [["train", "logreg-mnist", "-m", "seed=0,1", *quick]] + [["train", "logreg-mnist", *quick]] * 2
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "fdlcli", *command, "trainer.threads=1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
    singles = run_dirs(env, "logreg-mnist")
    (sweep,) = (Path(env["FDL_RUNS_DIR"]) / "logreg-mnist" / "sweeps").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(singles) == 2 and [j.name for j in jobs] == ["0", "1"]
    for run in [*singles, *jobs]:
        assert read_summary(run)["status"] == "completed"
        assert json.loads((run / "meta.json").read_text())["pid"]  # each written by its own process


@pytest.mark.parametrize("slow", [True, False])
def test_bf16_on_a_cpu_without_fast_bf16_kernels_warns(env, capsys, monkeypatch, slow):
    """On an AVX2-only CPU bf16 autocast falls back to slow kernels (dqn-breakout's update ~10x slower
    than fp32, measured): the run says so once, and trains anyway; elsewhere it says nothing."""
    from fdlcli.engine import loop

    monkeypatch.setattr(loop, "bf16_is_slow", lambda device: slow)
    quick = ["trainer.epochs=1", "data.train_limit=300", "data.eval_limit=100", "trainer.precision=bf16"]
    code, out, err = fdl_call(["train", "logreg-mnist", *quick], capsys)
    assert code == 0, err
    assert (out.count("without AVX-512") == 1) is slow
