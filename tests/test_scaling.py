"""Scale-out: data-parallel training (gloo, 2 CPU processes), resumable and aggregated sweeps,
fail-fast, parallel launchers (joblib, submitit's local executor) and their per-job resources."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fdl, fdl_call, fdl_in_process, metric_records, read_summary, run_dirs

# 601 examples in batches of 100: the last global batch holds one example, so one of two ranks has
# nothing to compute there (the zero-weight path of engine/distributed.shard)
TINY = [
    "optim.schedule=constant",  # one epoch, then resumed to two: a decay over the run would differ
    "data.shift=0",  # each rank draws its own shifts, one process draws them all: no exact comparison
    "data.train_limit=601",
    "data.eval_limit=300",
    "trainer.histograms=false",
    "trainer.threads=1",
    "trainer.log_every=2",
]
SWEEP = ["data.train_limit=300", "data.eval_limit=200", "trainer.histograms=false", "trainer.threads=1"]
# float32 all-reduce sums in another order than one process: measured differences are ~1e-7
TOLERANCE = 1e-5


def sweep_dir(env: dict[str, str], experiment: str = "mlp-mnist") -> Path:
    (directory,) = (Path(env["FDL_RUNS_DIR"]) / experiment / "sweeps").iterdir()
    return directory


def values(run: Path, name: str) -> list[float]:
    return [r["value"] for r in metric_records(run) if r["name"] == name]


def test_two_process_data_parallel_equals_one_process_and_resumes(env, capsys):
    # the one-process reference in this process (compared within TOLERANCE): one interpreter start less
    code, _, err = fdl_call(["train", "mlp-mnist", *TINY, "trainer.epochs=2"], capsys)
    assert code == 0, err
    (single_run,) = run_dirs(env, "mlp-mnist")

    parallel = fdl("train", "mlp-mnist", *TINY, "trainer.epochs=1", "trainer.devices=2", env=env)
    assert parallel.returncode == 0, parallel.stderr
    (ddp_run,) = [p for p in run_dirs(env, "mlp-mnist") if p != single_run]  # one run dir for both ranks
    meta = json.loads((ddp_run / "meta.json").read_text())
    assert meta["world_size"] == 2 and meta["status"] == "completed"
    assert parallel.stdout.count("epoch 1/1") == 1  # only rank 0 speaks

    # resume the data-parallel run for a second epoch: it must land where one process lands
    resumed = fdl("train", "--resume", str(ddp_run), "trainer.epochs=2", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert len(run_dirs(env, "mlp-mnist")) == 2
    for name in ("train/cost", "train/epoch_cost", "val/cost", "val/accuracy"):
        expected, got = values(single_run, name), values(ddp_run, name)
        assert len(got) == len(expected), name
        assert got == pytest.approx(expected, rel=TOLERANCE, abs=TOLERANCE), name
    one, two = read_summary(single_run)["final"], read_summary(ddp_run)["final"]
    assert two["test/cost"] == pytest.approx(one["test/cost"], rel=TOLERANCE)
    assert two["test/accuracy"] == pytest.approx(one["test/accuracy"], abs=1 / 300 + 1e-9)
    assert json.loads((ddp_run / "meta.json").read_text())["resumes"]


def test_data_parallel_bad_input_is_one_line(env, capsys):
    code, err = fdl_in_process(["train", "mlp-mnist", "trainer.devices=0"], capsys)
    assert code == 2 and "trainer.devices" in err and "Traceback" not in err
    code, err = fdl_in_process(["train", "mlp-mnist", "-m", "seed=0,1", "trainer.devices=2"], capsys)
    assert code == 2 and "trainer.devices>1" in err
    assert run_dirs(env, "mlp-mnist") == []


def test_interrupted_sweep_resumes_keeping_numbers_then_summarizes(env, tmp_path, capsys):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fdlcli",
            "train",
            "mlp-mnist",
            "-m",
            *SWEEP,
            "trainer.epochs=30",
            "seed=0,1,2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    marker = Path(env["FDL_RUNS_DIR"]) / "mlp-mnist" / "sweeps"
    while not list(marker.glob("*/1/checkpoints/latest.json")):  # job 1 has trained a little
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) != 0
    sweep = sweep_dir(env)
    assert read_summary(sweep / "0")["status"] == "completed"
    assert read_summary(sweep / "1")["status"] == "running"  # interrupted mid-way, checkpoint kept
    assert not (sweep / "2" / "summary.json").exists()  # Ctrl-C stopped the whole sweep

    resumed = fdl("train", "--resume", str(sweep), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "completed (earlier)" in resumed.stdout
    assert "resumes" not in json.loads((sweep / "0" / "meta.json").read_text())  # skipped, not retrained
    assert json.loads((sweep / "1" / "meta.json").read_text())["resumes"]  # continued from its checkpoint
    numbered = json.loads((sweep / "sweep_summary.json").read_text())
    assert [job["number"] for job in numbered] == [0, 1, 2]
    assert all(job["status"] == "completed" for job in numbered)
    assert [f"seed={n}" in " ".join(job["overrides"]) for n, job in enumerate(numbered)] == [True] * 3
    assert "per configuration, over seeds" in resumed.stdout

    table = tmp_path / "out" / "summary.csv"
    code, _, err = fdl_call(["summary", str(sweep), "--csv", str(table)], capsys)  # reads the sweep only
    assert code == 0, err
    (row,) = list(csv.DictReader(table.open()))
    assert row["n"] == "3" and row["seeds"] == "0 1 2"
    accuracies = [read_summary(sweep / str(n))["final"]["test/accuracy"] for n in range(3)]
    mean = sum(accuracies) / 3
    std = (sum((a - mean) ** 2 for a in accuracies) / 2) ** 0.5
    assert float(row["test acc (final) mean"]) == pytest.approx(mean)
    assert float(row["test acc (final) std"]) == pytest.approx(std)


def test_fail_fast_stops_a_sweep_and_keep_going_does_not(env):
    # SGD with lr 1e9 diverges within the first epoch: the job fails with a one-line reason
    args = ["train", "mlp-mnist", "-m", *SWEEP, "trainer.epochs=1", "optim.lr=1e9,0.01"]
    stopped = fdl(*args, "--fail-fast", env=env)
    assert stopped.returncode != 0
    jobs = json.loads((sweep_dir(env) / "sweep_summary.json").read_text())
    assert jobs[0]["status"] == "failed" and "became" in jobs[0]["error"]
    assert jobs[1]["status"] == "failed" and jobs[1]["error"].startswith(
        "not run: the sweep stopped (fail-fast)"
    )
    assert not (sweep_dir(env) / "1" / "summary.json").exists()
    # resuming a fail-fast sweep runs the jobs it skipped
    again = fdl("train", "--resume", str(sweep_dir(env)), env=env)
    jobs = json.loads((sweep_dir(env) / "sweep_summary.json").read_text())
    assert again.returncode != 0 and jobs[1]["status"] == "completed"


# submitit's local executor polls its jobs: ~70 s on the loaded 2-core machine, hence slow
@pytest.mark.parametrize("launcher", ["joblib", pytest.param("local", marks=pytest.mark.slow)])
def test_parallel_launchers_share_the_cpus(env, launcher):
    """Both jobs of a two-seed sweep complete side by side, each with its share of the CPUs as its
    thread count; the sweep's table and sweep_summary.json list both (joblib with an explicit n_jobs)."""
    if launcher == "local":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = [
        "train",
        "mlp-mnist",
        "-m",
        *SWEEP[:3],
        "trainer.epochs=1",
        "seed=0,1",
        f"hydra/launcher={launcher}",
        *(["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []),
    ]
    result = fdl(*args, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    assert "sweep: 2 jobs" in result.stdout and "seed=0" in result.stdout and "seed=1" in result.stdout
    sweep = sweep_dir(env)
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    table = json.loads((sweep / "sweep_summary.json").read_text())
    assert len(table) == 2 and all(job["status"] == "completed" for job in table)
    for job in ("0", "1"):
        assert read_summary(sweep / job)["status"] == "completed"
        meta = json.loads((sweep / job / "meta.json").read_text())
        cpus = len(os.sched_getaffinity(0))
        # joblib runs as many jobs as CPUs at once, submitit's local executor all (2) jobs
        assert meta["threads"] == (1 if launcher == "joblib" else max(1, cpus // min(2, cpus)))


def test_slurm_preset_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose

    from fdlcli import config

    with config.hydra_context():
        cfg = compose("config", ["experiment=mlp-mnist", "hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.cpus_per_task == 8


def test_one_gpu_per_job(monkeypatch):
    import torch

    from fdlcli import launch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        pytest.skip("CUDA already started in this process")
    monkeypatch.setenv(launch.SWEEP_GPUS_ENV, "3,5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    launch._pin_gpu(0)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    launch._pin_gpu(3)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"


def test_seed_groups_mean_and_sample_std():
    from fdlcli.analysis import sweeps

    def job(number, overrides, accuracy, status="completed"):
        return sweeps.Job(number, overrides, status, {"final": {"test/accuracy": accuracy}, "best": {}})

    jobs = [
        job(0, ["optim.lr=0.1", "seed=0"], 0.90),
        job(1, ["optim.lr=0.1", "seed=1"], 0.92),
        job(2, ["optim.lr=0.2", "seed=0"], 0.80),
        job(3, ["optim.lr=0.2", "seed=1"], 0.0, status="failed"),  # failed jobs do not enter the mean
    ]
    first, second = sweeps.rows(sweeps.group_by_seed(jobs))
    assert first["config"] == "optim.lr=0.1" and first["n"] == 2
    assert first["test acc (final) mean"] == pytest.approx(0.91)
    assert first["test acc (final) std"] == pytest.approx(0.0141421356)
    assert second["n"] == 1 and second["jobs"] == 2 and second["test acc (final) std"] is None
