"""Run directories: unique creation, atomic files, metadata, and locating finished runs.

Layout of one run (``runs/<experiment>/<id>/``, or ``runs/<experiment>/sweeps/<id>/<job>/``)::

    config.yaml       resolved config, reloadable with `fdl eval` / `fdl train --resume`
    overrides.yaml    the command-line overrides that produced it
    meta.json         command line, git state, package versions, seed, device, times, exit status
    metrics.jsonl     one JSON record per logged value
    summary.json      final and best metrics
    train.log         plain log
    tb/               TensorBoard event files
    checkpoints/      init/, step-NNNNNNNN/ (model.safetensors + trainer.pt), latest.json, best.json
    artifacts/        figures and tables written by analysis commands
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import numbers
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdlcli.errors import FdlError, RunDirError

CONFIG_FILE = "config.yaml"
OVERRIDES_FILE = "overrides.yaml"
META_FILE = "meta.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOG_FILE = "train.log"
LOCK_FILE = ".lock"


_UMASK = os.umask(0)
os.umask(_UMASK)


def runs_root() -> Path:
    return Path(os.environ.get("FDL_RUNS_DIR") or "runs")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# Atomic files: write a temporary file beside the target, fsync, then os.replace (atomic on POSIX).


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Strict JSON. Python's json writes NaN and Infinity, which are not JSON: jq, JavaScript and most other
# readers refuse the file. Every JSON file fdl writes (metrics.jsonl, summary.json, meta.json, eval-*.json,
# checkpoint pointers) goes through to_json, which writes a non-finite number as null; read_metrics turns
# a null value back into NaN for the code that computes with it.


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite number (NaN, +-inf) replaced by None, in nested dicts and lists too;
    numpy and other numeric scalars become plain ints and floats."""
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, dict):
        return {key: finite_or_none(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(value) for value in obj]
    return obj


def to_json(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj``: non-finite numbers as null; anything else json cannot write as str."""
    return json.dumps(finite_or_none(obj), indent=indent, allow_nan=False, default=str)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    with open(path) as handle:
        return json.load(handle)


# --------------------------------------------------------------------------------------------------
# Unique directories. Seconds-resolution timestamps collide (Hydra #1607, #2925), so an id carries a
# random suffix and is claimed with an exclusive mkdir: two processes can never get the same one.


def _claim_unique_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    for _ in range(100):
        candidate = parent / f"{stamp}_{secrets.token_hex(3)}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RunDirError(f"could not create a unique run directory under {parent}")


def new_run_dir(experiment: str) -> Path:
    try:
        return _claim_unique_dir(runs_root() / experiment)
    except OSError as exc:
        raise RunDirError(f"cannot create a run directory under {runs_root()}: {exc.strerror}") from None


def new_sweep_dir(experiment: str) -> Path:
    try:
        return _claim_unique_dir(runs_root() / experiment / "sweeps")
    except OSError as exc:
        raise RunDirError(f"cannot create a sweep directory under {runs_root()}: {exc.strerror}") from None


# --------------------------------------------------------------------------------------------------
# Provenance.


def git_state() -> dict[str, Any]:
    """The commit and dirty flag of the fdl source tree, when it is a git checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("fdlcli", "torch", "numpy", "hydra-core", "omegaconf", "datasets", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


# --------------------------------------------------------------------------------------------------
# A run directory in use.


@dataclass
class Run:
    """A run directory together with its validated config."""

    path: Path
    config: Any  # fdlcli.config.RunConfig
    resume: bool = False
    overrides: list[str] = field(default_factory=list)
    parallel_jobs: int = 1  # jobs of the same sweep running beside this one (sets the CPU thread share)

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def artifacts_dir(self) -> Path:
        directory = self.path / "artifacts"
        directory.mkdir(exist_ok=True)
        return directory

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def update_meta(self, **fields: Any) -> None:
        path = self.path / META_FILE
        meta = read_json(path) if path.exists() else {}
        meta.update(fields)
        atomic_write_json(path, meta)

    def write_eval(
        self,
        which: str,
        checkpoint: str,
        metrics: dict[str, Any],
        split: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> Path:
        """Record an ``fdl eval`` result atomically as ``eval-<which>[-<split>].json``; return its path.
        ``info``: what else the metrics need to be read right (e.g. the sacreBLEU signature)."""
        record: dict[str, Any] = {"checkpoint": checkpoint, "time": now_iso(), "metrics": metrics}
        if split is not None:
            record["split"] = split
        record |= info or {}
        path = self.path / (f"eval-{which}-{split}.json" if split is not None else f"eval-{which}.json")
        atomic_write_json(path, record)
        return path

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.path / SUMMARY_FILE, summary)

    def summary(self) -> dict[str, Any]:
        path = self.path / SUMMARY_FILE
        return read_json(path) if path.exists() else {}


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on a run while training it, so two processes never write one run."""
    handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"run {run_dir} is being trained by another process") from None
        yield
    finally:
        handle.close()


def resolve_run_dir(path: str | Path) -> Path:
    """A run directory given by the user, checked to be one (not a sweep, not some other folder)."""
    run_dir = Path(path)
    if not run_dir.exists():
        raise RunDirError(f"no such run directory: {run_dir}")
    if not run_dir.is_dir():
        raise RunDirError(f"not a directory: {run_dir}")
    if not (run_dir / CONFIG_FILE).is_file():
        if (run_dir / "multirun.yaml").is_file():
            raise RunDirError(f"{run_dir} is a sweep; name one of its job directories")
        raise RunDirError(f"{run_dir} is not an fdl run directory (it has no {CONFIG_FILE})")
    return run_dir


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Records of metrics.jsonl; a torn last line (the process was killed mid-write) is skipped, and a
    null value (a non-finite number, see to_json) reads as NaN."""
    path = run_dir / METRICS_FILE
    records = []
    if path.exists():
        with open(path) as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "value" in record and record["value"] is None:
                    record["value"] = math.nan
                records.append(record)
    return records


def truncate_metrics(run_dir: Path, keep_lines: int) -> None:
    """Drop the records logged after the checkpoint a run resumes from (they will be logged again)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    with open(path, "rb") as handle:
        lines = handle.read().splitlines(keepends=True)[:keep_lines]
    atomic_write_bytes(path, b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))


def start_meta(run: Run, device: str) -> None:
    overrides = run.overrides
    meta_path = run.path / META_FILE
    meta = read_json(meta_path) if meta_path.exists() else {}
    if run.resume:
        meta.setdefault("resumes", []).append(
            {"command": sys.argv, "time": now_iso(), "overrides": overrides}
        )
        meta.update(status="running", device=device, end_time=None, pid=os.getpid())
    else:
        meta.update(
            experiment=run.config.name,
            command=sys.argv,
            cwd=os.getcwd(),
            overrides=overrides,
            git=git_state(),
            versions=package_versions(),
            host=platform.node(),
            seed=run.config.seed,
            device=device,
            start_time=now_iso(),
            end_time=None,
            status="running",
            pid=os.getpid(),
        )
    atomic_write_json(meta_path, meta)


def remove_if_empty(path: Path) -> None:
    """Remove a run directory that a failed start left without any content."""
    with contextlib.suppress(OSError):
        leftovers = [p for p in path.iterdir() if p.name not in {LOCK_FILE, ".hydra"}]
        if not leftovers:
            shutil.rmtree(path)


def describe_error(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, FdlError) else f"{type(exc).__name__}: {exc}"
