"""Browsing and comparing runs: `fdl runs`, `fdl runs clean`, `fdl compare`, `fdl diff`, the code a run
records, and what a sweep does with a failing job (`--retry-failed`).

Listing and cleaning use fake run directories (meta.json, summary.json, config.yaml as fdl writes them),
so that thousands of runs cost nothing to make; comparing, code recording and sweeps use real runs."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import platform
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO, fdl, fdl_call

NOW = time.time()
TINY = ["data.train_limit=300", "data.eval_limit=200", "trainer.histograms=false", "trainer.epochs=1"]


def iso(seconds_ago: float) -> str:
    return dt.datetime.fromtimestamp(NOW - seconds_ago, dt.timezone.utc).isoformat(timespec="seconds")


def fake_run(
    root: Path,
    run_id: str,
    *,
    age: float = 3600.0,
    status: str = "completed",
    best: float | None = 0.9,
    final: float | None = 0.89,
    metric: str = "val/accuracy",
    mode: str = "max",
    overrides: tuple[str, ...] = (),
    epochs: int = 50,
    size: int = 10_000,
    **meta_fields: object,
) -> Path:
    """A run directory as fdl leaves it, without weights: meta.json, summary.json (with a per-epoch
    history as long as a real one's), config.yaml, and a checkpoint file of ``size`` bytes."""
    path = root / run_id
    path.mkdir(parents=True)
    experiment = run_id.split("/")[0]
    meta = {
        "experiment": experiment,
        "overrides": [f"experiment={experiment}", *overrides],
        "host": platform.node(),
        "pid": 1,
        "start_time": iso(age),
        "end_time": iso(age - 60),
        "status": status,
        "train_seconds": 60.0,
        "monitor": {"metric": metric, "mode": mode},
        "git": {"commit": "0" * 40, "dirty": False},
        **meta_fields,
    }
    history = [{"epoch": e, metric: 0.5 + e / 1000, "val/cost": 1 / e} for e in range(1, epochs + 1)]
    summary = {
        "experiment": experiment,
        "status": status,
        "epochs": epochs,
        "final": {**history[-1], metric: final, "test/accuracy": 0.88},
        "best": {"metric": metric, "value": best},
        "history": history,
    }
    (path / "meta.json").write_text(json.dumps(meta))  # NaN stays NaN, as Python's json writes it
    (path / "summary.json").write_text(json.dumps(summary))
    (path / "config.yaml").write_text(yaml.safe_dump({"name": experiment, "optim": {"lr": 0.01}}))
    if size:
        (path / "checkpoints").mkdir()
        (path / "checkpoints" / "model.safetensors").write_bytes(b"\0" * size)
    return path


def in_process(capsys: pytest.CaptureFixture[str]) -> Callable[..., subprocess.CompletedProcess]:
    """``fdl(*args)`` through the CLI's entry point in this process, in the environment the `env` fixture
    set here (`fdl runs` and `runs clean` only read and delete folders): returncode, stdout and stderr as
    a subprocess gives them, without its interpreter start."""

    def run(*args: str) -> subprocess.CompletedProcess:
        code, out, err = fdl_call(list(args), capsys)
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def strict_json(text: str) -> object:
    def refuse(token: str) -> None:
        raise AssertionError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------------------------------
# fdl runs


def test_runs_lists_two_thousand_runs_fast_from_meta_and_summary_only(env):
    root = Path(env["FDL_RUNS_DIR"])
    experiments = ("mlp-mnist", "cnn-mnist", "autoencoder-mnist")
    for n in range(1400):
        status = "failed" if n % 7 == 0 else "completed"
        run_id = f"{experiments[n % 3]}/run-{n:04d}"
        fake_run(root, run_id, age=3600 + n * 60, status=status, overrides=(f"seed={n}",), size=0)
    for s in range(30):
        for job in range(20):
            run_id = f"mlp-mnist/sweeps/sweep-{s:02d}/{job}"
            fake_run(root, run_id, age=200_000 + s * 100 + job, best=float("nan"), size=0)
    # reading metrics.jsonl would block on these FIFOs (and time the command out)
    for n in (1, 2, 3):
        os.mkfifo(root / experiments[n % 3] / f"run-{n:04d}" / "metrics.jsonl")
    fake_run(root, "mlp-mnist/alive", age=1, status="running", pid=os.getpid(), best=None, final=None)
    fake_run(root, "mlp-mnist/killed", age=2, status="running", pid=dead_pid())
    fake_run(root, "mlp-mnist/elsewhere", age=3, status="running", host="another-host")

    before = child_cpu_seconds()
    listed = fdl("runs", "--json", env=env, timeout=60)
    cpu = child_cpu_seconds() - before
    assert listed.returncode == 0, listed.stderr
    runs = strict_json(listed.stdout)
    assert len(runs) == 2003
    assert cpu < 3.0, f"fdl runs --json took {cpu:.2f} s of CPU for 2003 runs"
    print(f"fdl runs --json: 2003 runs, {cpu:.2f} s CPU")
    starts = [dt.datetime.fromisoformat(r["start_time"]) for r in runs]
    assert starts == sorted(starts, reverse=True)  # newest first
    by_id = {r["id"]: r for r in runs}
    assert [r["id"] for r in runs[:3]] == ["mlp-mnist/alive", "mlp-mnist/killed", "mlp-mnist/elsewhere"]
    assert by_id["mlp-mnist/alive"]["status"] == "running"
    assert by_id["mlp-mnist/killed"]["status"] == "dead"
    assert by_id["mlp-mnist/killed"]["recorded_status"] == "running"
    assert by_id["mlp-mnist/elsewhere"]["status"] == "running"  # another host: cannot tell
    job = by_id["mlp-mnist/sweeps/sweep-00/3"]
    assert job["sweep"] == "mlp-mnist/sweeps/sweep-00" and job["best"] is None  # NaN became null
    first = by_id["mlp-mnist/run-0000"]
    assert first["status"] == "failed" and first["overrides"] == ["seed=0"]
    assert (first["metric"], first["best"], first["final"]) == ("val/accuracy", 0.9, 0.89)

    before = child_cpu_seconds()
    table = fdl("runs", env=env, timeout=60)
    cpu = child_cpu_seconds() - before
    assert table.returncode == 0, table.stderr
    assert cpu < 3.0, f"fdl runs took {cpu:.2f} s of CPU"
    assert "the newest 50 of 2003 runs" in table.stdout
    assert "│ failed " in table.stdout and "[/]" not in table.stdout  # styled, not markup printed as text
    lines = table.stdout.splitlines()
    for run in runs[:50]:  # each id whole, on one line
        assert any(run["id"] in line for line in lines), run["id"]
    assert runs[50]["id"] not in table.stdout


def test_runs_table_keeps_ids_whole_on_a_narrow_console(env):
    from rich.console import Console

    from fdlcli import catalog
    from fdlcli.commands.runs import _runs_table

    root = Path(env["FDL_RUNS_DIR"])
    long_id = "autoencoder-mnist/sweeps/2026-11-28_21-40-00_d4e5f6/12"
    fake_run(root, long_id, overrides=("model.code_size=30", "optim.lr=0.001"))
    records = catalog.load()
    for width in (80, 140):
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(_runs_table(records, None, width))
        text = console.export_text()
        cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
        assert long_id in (text if width == 140 else cells)  # whole on a line, or folded but complete
        assert all(len(line) <= width for line in text.splitlines())


def test_runs_filters_and_one_line_errors(env, capsys):
    fdl_here = in_process(capsys)
    root = Path(env["FDL_RUNS_DIR"])
    empty = fdl_here("runs")
    assert empty.returncode == 0 and "no runs under" in empty.stdout
    assert strict_json(fdl_here("runs", "--json").stdout) == []
    fake_run(root, "mlp-mnist/a", status="failed", error="RuntimeError: boom")
    fake_run(root, "mlp-mnist/b")
    fake_run(root, "cnn-mnist/c")
    only = strict_json(fdl_here("runs", "mlp-mnist", "--json").stdout)
    assert sorted(r["id"] for r in only) == ["mlp-mnist/a", "mlp-mnist/b"]
    failed = strict_json(fdl_here("runs", "--status", "failed", "--json").stdout)
    assert [(r["id"], r["error"]) for r in failed] == [("mlp-mnist/a", "RuntimeError: boom")]
    assert "no runs of logreg-mnist" in fdl_here("runs", "logreg-mnist").stdout  # known, no runs
    for args, message in (
        (["runs", "mlp-mnst"], "unknown experiment 'mlp-mnst'; with runs under"),
        (["runs", "--status", "done"], "unknown status 'done'; choose from: running"),
        (["runs", "-n", "-1"], "-1 is not in the range"),
    ):
        result = fdl_here(*args)
        assert result.returncode == 2, (args, result.stdout)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


# --------------------------------------------------------------------------------------------------
# fdl runs clean


def test_clean_dry_run_then_deletes_only_what_was_asked(env, capsys):
    fdl_here = in_process(capsys)
    root = Path(env["FDL_RUNS_DIR"])
    day = 86_400
    fake_run(root, "mlp-mnist/old-best", age=10 * day, best=0.95)
    fake_run(root, "mlp-mnist/old-worse", age=10 * day, best=0.90)
    fake_run(root, "mlp-mnist/new", age=day, best=0.85)
    fake_run(root, "mlp-mnist/new-failed", age=day, status="failed", best=None)
    fake_run(root, "mlp-mnist/old-diverged", age=10 * day, status="diverged", best=float("nan"))
    # started long ago, resumed a second ago by a process that is still training it
    resumed = [{"time": iso(1), "overrides": []}]
    fake_run(root, "mlp-mnist/old-training", age=10 * day, status="running", pid=os.getpid(), resumes=resumed)
    fake_run(root, "mlp-mnist/old-killed", age=10 * day, status="running", pid=dead_pid())
    for job in ("0", "1"):
        fake_run(root, f"mlp-mnist/sweeps/s1/{job}", age=day, status="failed")
    (root / "mlp-mnist/sweeps/s1/multirun.yaml").write_text("hydra: {}\n")
    (root / "mlp-mnist/sweeps/s1/2/.hydra").mkdir(parents=True)  # a job that never ran
    # costs: lower is better (trainer.monitor_mode=min)
    fake_run(root, "autoencoder-mnist/low", age=10 * day, metric="val/cost", mode="min", best=0.1)
    fake_run(root, "autoencoder-mnist/high", age=10 * day, metric="val/cost", mode="min", best=0.2)

    def remaining() -> set[str]:
        return {r["id"] for r in strict_json(fdl_here("runs", "--json").stdout)}

    everything = remaining()
    for args, message in (
        (["runs", "clean"], "say what to delete"),
        (["runs", "clean", "--older-than", "7x"], "bad duration '7x'"),
        (["runs", "clean", "--older-than", "week"], "bad duration 'week'"),
        (["runs", "clean", "--keep-best", "-1"], "--keep-best needs a count"),
    ):
        result = fdl_here(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1

    dry = fdl_here("runs", "clean", "--failed")
    assert dry.returncode == 0, dry.stderr
    assert "would delete 4 runs" in dry.stdout and "add --yes" in dry.stdout
    assert "KB" in dry.stdout  # the space each run and all of them take
    assert remaining() == everything
    done = fdl_here("runs", "clean", "--failed", "--yes")
    assert done.returncode == 0 and "deleted 4 runs" in done.stdout, done.stdout + done.stderr
    gone = {
        "mlp-mnist/new-failed",
        "mlp-mnist/old-diverged",
        "mlp-mnist/sweeps/s1/0",
        "mlp-mnist/sweeps/s1/1",
    }
    assert remaining() == everything - gone
    assert not (root / "mlp-mnist/sweeps/s1").exists()  # its last job went, so did the sweep

    kept = fdl_here("runs", "clean", "--older-than", "7d", "--keep-best", "1", "--yes")
    assert kept.returncode == 0, kept.stderr
    assert "kept mlp-mnist/old-training: it is still running" in kept.stdout
    assert remaining() == {
        "mlp-mnist/old-best",  # the best of its experiment
        "mlp-mnist/new",  # not old enough
        "mlp-mnist/old-training",  # its process is alive
        "autoencoder-mnist/low",  # the lowest cost
    }
    assert not list(root.rglob(".*.deleting"))


# --------------------------------------------------------------------------------------------------
# The code a run records


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def checkout_of_fdl(where: Path, commit: bool = True) -> Path:
    """A copy of this checkout's package and config groups in a git repository of its own."""
    shutil.copytree(REPO / "fdlcli", where / "fdlcli", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "conf", where / "conf")
    (where / "README.md").write_text("docs\n")
    git(where.parent, "init", "-q", str(where))
    git(where, "add", "-A" if commit else "README.md")  # else: a repository that does not track fdl
    git(where, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    return where


def code_state(checkout: Path) -> dict:
    from fdlcli import runs

    state, diff = runs.git_state(checkout / "fdlcli")
    return {**state, "patch": diff.decode()}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_run_records_its_code_and_diff_shows_the_difference(env, tmp_path, monkeypatch):
    checkout = checkout_of_fdl(tmp_path / "checkout")
    base = git(checkout, "rev-parse", "HEAD")
    clean = code_state(checkout)
    assert (clean["commit"], clean["dirty"], clean["patch"]) == (base, False, "")

    (checkout / "README.md").write_text("other docs\n")  # not code: the run's code is still clean
    assert code_state(checkout)["dirty"] is False
    with open(checkout / "fdlcli" / "registry.py", "a") as handle:
        handle.write("# a local experiment\n")
    (checkout / "conf" / "extra.yaml").write_text("x: 1\n")
    dirty = code_state(checkout)
    assert dirty["dirty"] is True and dirty["untracked"] == ["conf/extra.yaml"]
    assert "+# a local experiment" in dirty["patch"] and "README" not in dirty["patch"]

    # no record where there is nothing true to say: no git, no checkout, a package git does not track
    plain = tmp_path / "plain"
    shutil.copytree(checkout / "fdlcli", plain / "fdlcli")
    assert code_state(plain)["commit"] is None
    untracked = checkout_of_fdl(tmp_path / "venv-in-a-repo", commit=False)
    assert code_state(untracked)["commit"] is None
    with monkeypatch.context() as patch:
        patch.setenv("PATH", "/nonexistent")
        assert code_state(checkout)["commit"] is None

    # a real run from the dirty checkout saves its uncommitted changes
    source_env = {**env, "PYTHONPATH": str(checkout)}
    trained = fdl("train", "mlp-mnist", *TINY, env=source_env, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    (run_a,) = (Path(env["FDL_RUNS_DIR"]) / "mlp-mnist").iterdir()
    meta = json.loads((run_a / "meta.json").read_text())
    assert meta["git"]["commit"] == base and meta["git"]["dirty"] is True
    assert meta["git"]["diff"] == "code.diff"
    assert (run_a / "code.diff").read_text() == dirty["patch"]

    # run B: the same config on the next commit, with other uncommitted changes
    git(checkout, "add", "fdlcli/registry.py")
    git(checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "next")
    with open(checkout / "fdlcli" / "runs.py", "a") as handle:
        handle.write("# work in progress\n")
    run_b = run_a.with_name("b")
    shutil.copytree(run_a, run_b)
    state = code_state(checkout)
    (run_b / "code.diff").write_text(state["patch"])
    meta["git"] = {**{k: v for k, v in state.items() if k != "patch"}, "diff": "code.diff"}
    (run_b / "meta.json").write_text(json.dumps(meta))

    diff = fdl("diff", str(run_a), str(run_b), "--patch", env=source_env, cwd=tmp_path)
    assert diff.returncode == 0, diff.stderr
    assert "config: same" in diff.stdout
    assert f"commit {base[:10]} -> {state['commit'][:10]}" in diff.stdout
    assert "fdlcli/registry.py | 1 +" in diff.stdout  # what the commits changed
    assert "uncommitted changes differ in: fdlcli/registry.py, fdlcli/runs.py" in diff.stdout
    assert "+# a local experiment" in diff.stdout and "+# work in progress" in diff.stdout
    as_json = strict_json(fdl("diff", str(run_a), str(run_b), "--json", env=source_env, cwd=tmp_path).stdout)
    assert as_json["code"]["same_commit"] is False
    assert as_json["code"]["files_with_different_uncommitted_changes"] == [
        "fdlcli/registry.py",
        "fdlcli/runs.py",
    ]


# --------------------------------------------------------------------------------------------------
# Real runs: a sweep with a failing job, comparing its jobs, retrying the failure


def test_sweep_failure_is_recorded_compared_and_retried(env, capsys):
    """The sweep and its resumes run as processes; the commands that only read runs (runs, eval, compare,
    diff) run in this process, the same code without a new interpreter and torch import each."""

    def call(*argv: str) -> tuple[int, str, str]:
        return fdl_call(list(argv), capsys)

    root = Path(env["FDL_RUNS_DIR"])
    # SGD with lr 1e9 diverges within its first epoch; the two others train
    swept = fdl("train", "mlp-mnist", "-m", *TINY, "trainer.threads=1", "optim.lr=1e9,0.01,0.02", env=env)
    assert swept.returncode == 1
    (sweep,) = (root / "mlp-mnist" / "sweeps").iterdir()
    sweep_id = f"mlp-mnist/sweeps/{sweep.name}"
    assert "job 0 failed: the training cost became nan" in swept.stderr
    assert f"--resume {sweep} --retry-failed" in swept.stderr
    assert "failed: the" in swept.stdout  # the sweep's table
    meta = json.loads((sweep / "0" / "meta.json").read_text())
    assert meta["status"] == "diverged" and "became nan" in meta["error"]
    error = (sweep / "0" / "error.txt").read_text()
    assert error.startswith("the training cost became nan") and "Traceback" in error

    listed = {r["id"]: r for r in strict_json(call("runs", "--json")[1])}
    assert {listed[f"{sweep_id}/{n}"]["status"] for n in "012"} == {"diverged", "completed"}

    # fdl eval takes the id `fdl runs` shows; compare shows what it recorded
    code, evaluated, err = call("eval", f"{sweep_id}/1", "--json")
    assert code == 0, err
    compared = strict_json(call("compare", sweep_id, "--format", "json")[1])
    assert [c["id"] for c in compared] == [f"{sweep_id}/{n}" for n in "012"]
    assert all(list(c["config"]) == ["optim.lr"] for c in compared)  # the only key that differs
    one, two = compared[1]["metrics"], compared[2]["metrics"]
    assert one["test/accuracy@eval-best"] == json.loads(evaluated)["test/accuracy"]
    assert two["test/accuracy@eval-best"] is None and two["val/accuracy@best"] is not None
    assert compared[0]["metrics"]["val/accuracy@best"] is None  # diverged: no value, not NaN

    ordered = call("compare", sweep_id, "--sort", "test/accuracy", "--format", "csv")[1]
    rows = list(csv.DictReader(io.StringIO(ordered)))
    assert rows[-1]["id"] == f"{sweep_id}/0" and rows[-1]["test/accuracy@final"] == ""  # no value: last
    assert float(rows[0]["test/accuracy@final"]) >= float(rows[1]["test/accuracy@final"])  # best first
    code, table, _ = call("compare", f"{sweep_id}/1", f"{sweep_id}/2", "--all")
    assert code == 0 and "trainer.epochs" in table and "optim.lr" in table
    markdown = call("compare", sweep_id, "--format", "md")[1].splitlines()
    assert markdown[0].startswith("| id | experiment | status | optim.lr |") and len(markdown) == 5
    code, _, err = call("compare", sweep_id, "--sort", "nope")
    assert code == 2 and "cannot sort by 'nope'" in err

    code, diff, err = call("diff", f"{sweep_id}/1", f"{sweep_id}/2")
    assert code == 0, err
    assert "~ optim.lr: 0.01 -> 0.02" in diff and "environment: same" in diff

    # resuming the sweep leaves the failed job alone; --retry-failed runs it (only it) again
    job_1 = (sweep / "1" / "meta.json").read_text()
    resumed = fdl("train", "--resume", sweep_id, env=env)
    assert resumed.returncode == 1 and "(earlier)" in resumed.stdout
    assert not (sweep / "0" / "attempts").exists()
    retried = fdl("train", "--resume", sweep_id, "--retry-failed", env=env)
    assert retried.returncode == 1 and "job 0 failed" in retried.stderr
    assert (sweep / "1" / "meta.json").read_text() == job_1  # a completed job is not touched
    first = json.loads((sweep / "0" / "attempts" / "1" / "meta.json").read_text())
    assert first["status"] == "diverged" and (sweep / "0" / "attempts" / "1" / "error.txt").is_file()
    again = json.loads((sweep / "0" / "meta.json").read_text())
    assert again["attempts"] == [
        {"dir": "attempts/1", **{k: first[k] for k in ("status", "error", "start_time", "end_time")}}
    ]
    assert again["status"] == "diverged" and again["start_time"] >= first["start_time"]
    assert "--retry-failed reruns" in call("train", "--retry-failed")[2]
