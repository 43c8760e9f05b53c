"""Shared fixtures: real data from the mirror in ../shared/data, runs in a temporary folder, Hub off."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
MIRROR = Path(os.environ.get("FDL_DATA_DIR") or REPO.parent / "shared" / "data").resolve()


def pytest_configure(config: pytest.Config) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    if os.environ.get("PYTEST_XDIST_WORKER"):  # xdist workers get COLUMNS=80 LINES=24: the fdl commands
        os.environ.pop("COLUMNS", None)  # the tests start would print their tables 80 wide
        os.environ.pop("LINES", None)
    _pin_xdist_worker()


def _pin_xdist_worker() -> None:
    """Under pytest-xdist, give each worker its own share of the CPUs.

    fdl's automatic thread count is the CPUs this process may use; without pinning, two workers on two
    cores would each start two intra-op threads, and OpenMP threads that share a core with another busy
    thread slow down 20-40x (docs/RESULTS.md, Speed). The subprocesses a test starts inherit the mask.
    """
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not worker or not count or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    index, workers = int(worker.removeprefix("gw")), int(count)
    if workers > 1 and len(cpus) >= workers:
        os.sched_setaffinity(0, cpus[index % workers :: workers])


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "mnist" / "train.parquet").is_file():
        pytest.fail(f"the data mirror is missing: {MIRROR} (set FDL_DATA_DIR)")
    return MIRROR


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one tensor cache for the whole session: MNIST is decoded once, then every test reuses it
    return tmp_path_factory.mktemp("fdl-cache")


def _fdl_variables(folder: Path, mirror: Path, cache_dir: Path) -> dict[str, str]:
    """The environment variables of an `fdl` process whose runs (and Hub home) live under ``folder``."""
    return {
        "FDL_DATA_DIR": str(mirror),
        "FDL_RUNS_DIR": str(folder / "runs"),
        "FDL_CACHE_DIR": str(cache_dir),
        "HF_HOME": str(folder / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # the subprocesses run this checkout's code, also from a git worktree beside an editable install
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


@pytest.fixture()
def env(tmp_path: Path, mirror: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = _fdl_variables(tmp_path, mirror, cache_dir)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("FDL_DEBUG", raising=False)
    return {**os.environ, **values}


def fdl_environment(folder: Path, mirror: Path, cache_dir: Path) -> dict[str, str]:
    """The environment of an `fdl` process started by a fixture wider than a test (no `env` fixture there):
    runs under ``folder``."""
    environment = {**os.environ, **_fdl_variables(folder, mirror, cache_dir)}
    environment.pop("FDL_DEBUG", None)
    return environment


@dataclass(frozen=True)
class GoldenRun:
    """A finished run of an experiment's golden command (tests/golden/record.py's COMMANDS)."""

    run: Path  # shared with other tests: read it, or copy it (copy_run) before a command writes into it
    inputs: Path  # neural-style's images, which the command names
    overrides: list[str]  # the golden command's overrides, the inputs folder filled in
    stdout: str  # what `fdl train` printed

    def without(self, key: str) -> list[str]:
        """The overrides less ``key``'s, to give it another value (e.g. half the epochs, then resume)."""
        return [o for o in self.overrides if not o.startswith(f"{key}=")]


@pytest.fixture(scope="session")
def golden_run(
    tmp_path_factory: pytest.TempPathFactory, mirror: Path, cache_dir: Path
) -> Callable[[str], GoldenRun]:
    """``golden_run(name)``: the golden run of ``name``, trained once per session and shared by the xdist
    workers (a lock file per experiment in their common temporary folder): tests/test_golden.py compares
    it with the golden file, and tests that need the same short run (to evaluate, play, or to compare a
    resumed run with) take it instead of training it again, ~5-10 s of CPU each."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "golden-runs"
    root.mkdir(exist_ok=True)
    known: dict[str, GoldenRun] = {}

    def get(name: str) -> GoldenRun:
        if name in known:
            return known[name]
        from golden import compare

        path = compare.golden_path(name)
        if not path.is_file():
            pytest.fail(f"{name}: no golden file {path.name}; {compare.regenerate_hint(name)}")
        folder, overrides = root / name, json.loads(path.read_text())["overrides"]
        inputs = folder / "inputs"
        with open(root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another worker may be training it: wait for its run
            done = folder / "run.txt"
            if not done.is_file():
                shutil.rmtree(folder, ignore_errors=True)  # a failed attempt's run directory
                compare.make_inputs(inputs)
                environment = fdl_environment(folder, mirror, cache_dir)
                result = fdl("train", name, *compare.command_overrides(overrides, inputs), env=environment)
                assert result.returncode == 0, f"{name}'s golden command failed:\n{result.stderr}"
                (run,) = run_dirs(environment, name)
                (folder / "stdout.txt").write_text(result.stdout)
                done.write_text(str(run))
        known[name] = GoldenRun(
            Path(done.read_text()),
            inputs,
            compare.command_overrides(overrides, inputs),
            (folder / "stdout.txt").read_text(),
        )
        return known[name]

    return get


def copy_run(run: Path, folder: Path) -> Path:
    """A copy of ``run`` in ``folder``, for commands that write into a run (eval records, artifacts)."""
    return Path(shutil.copytree(run, folder / run.name))


def benchmark_module(name: str) -> Any:
    """benchmarks/<name>.py imported as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # a dataclass in it looks its module up there
    spec.loader.exec_module(module)
    return module


def fdl(
    *args: str, env: dict[str, str], timeout: float = 300, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "fdlcli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def fdl_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The command line's entry point in this process: its exit code and stderr. For commands that fail
    before any training (each subprocess costs seconds of interpreter start and torch import); the `env`
    fixture has set the same environment variables here as a subprocess gets."""
    code, _, err = fdl_call(argv, capsys)
    return code, err


def fdl_call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """The command line's entry point in this process: exit code, stdout and stderr. Also for commands
    that read a finished run and leave no state behind (eval, plot, play, compare, ...): the same code
    a subprocess runs, without its ~4 s of interpreter start and imports."""
    from fdlcli.cli import main

    capsys.readouterr()  # what the test printed before is not this command's output
    try:
        main(argv)
        code = 0
    except SystemExit as exited:
        code = exited.code if isinstance(exited.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_dirs(env: dict[str, str], experiment: str) -> list[Path]:
    root = Path(env["FDL_RUNS_DIR"]) / experiment
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name != "sweeps") if root.exists() else []


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


# records whose values are speeds, hence differ between identical runs (DQN's logging window)
TIMING_METRICS = ("train/steps_per_s", "train/steps_per_cpu_s")


def metric_records(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock times and speeds, for exact comparisons between runs."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in records if r["name"] not in TIMING_METRICS]


def without_modules(env: dict[str, str], folder: Path, *modules: str) -> dict[str, str]:
    """``env`` for an ``fdl`` process in which importing any of ``modules`` fails, as if the package
    were not installed: a stub that raises ImportError shadows it from the front of PYTHONPATH."""
    for module in modules:
        package = folder / module
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(
            f"raise ImportError('{module} is hidden by a test', name='{module}')\n"
        )
    return {**env, "PYTHONPATH": os.pathsep.join([str(folder), env["PYTHONPATH"]])}


def wait_for_record(run_root: Path, step: int, process: subprocess.Popen, known: list[Path]) -> Path:
    """The new run under ``run_root`` once it logged a record past ``step`` (the process still running)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        for run in (r for r in run_root.glob("*") if r not in known and (r / "metrics.jsonl").is_file()):
            records = (run / "metrics.jsonl").read_text().splitlines()
            if any(json.loads(line)["step"] > step for line in records if line.endswith("}")):
                return run
        time.sleep(0.05)
    raise AssertionError(f"the run ended or stalled before step {step}: {process.poll()}")


def latest_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["name"]


def assert_sigterm_resume_is_exact(
    env: dict[str, str], name: str, overrides: list[str], total_steps: int, stop_after: int
) -> None:
    """A run of ``name`` stopped by SIGTERM past step ``stop_after`` and resumed to ``total_steps`` logs
    exactly what an uninterrupted one does and ends with the same weights. The interrupted run is started
    without an end in sight and resumed with the reference's length, so the stop always falls before it."""
    import torch
    from safetensors.torch import load_file

    straight = fdl("train", name, *overrides, f"trainer.total_steps={total_steps}", env=env)
    assert straight.returncode == 0, straight.stderr
    (reference,) = run_dirs(env, name)
    process = subprocess.Popen(
        [sys.executable, "-m", "fdlcli", "train", name, *overrides, "trainer.total_steps=10000000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run = wait_for_record(reference.parent, stop_after, process, [reference])
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "resume with" in stderr, stderr
    assert int(latest_checkpoint(run).name.split("-")[1]) < total_steps, "stopped too late for this test"

    resumed = fdl("train", "--resume", str(run), f"trainer.total_steps={total_steps}", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert metric_records(run) == metric_records(reference)
    assert read_summary(run)["final"] == read_summary(reference)["final"]
    final, expected = (load_file(str(latest_checkpoint(r) / "model.safetensors")) for r in (run, reference))
    assert all(torch.equal(final[k], expected[k]) for k in expected)
