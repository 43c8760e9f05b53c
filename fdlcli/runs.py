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
import hashlib
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

from fdlcli.errors import FdlError, RunDirError, RunLockedError

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


# The uncommitted changes a run records in code.diff; a larger diff is cut here (and says so in meta.json).
CODE_DIFF_FILE = "code.diff"
CODE_DIFF_LIMIT = 1_000_000
# What counts as the code of a run: the package and its config groups (not tests, docs, benchmarks).
_CODE_PATHS = ("fdlcli", "conf")  # beside each other in a checkout


def _git(repo: Path, *args: str) -> bytes | None:
    """Output of one git command; None when git is missing, fails or hangs.

    GIT_OPTIONAL_LOCKS=0: the jobs of a parallel sweep all ask at once, and git must not take the index
    lock to refresh its stat cache (a second job would then fail to get it).
    """
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            env=env,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _code_repository(package: Path | None = None) -> tuple[Path, str, list[str]] | None:
    """The git checkout fdl runs from (or the one holding ``package``): its root, HEAD commit and the
    code paths relative to the root; None outside a checkout (an installed wheel) or without git."""
    package = (package or Path(__file__).parent).resolve()
    head = _git(package, "rev-parse", "--show-toplevel", "HEAD")
    # a wheel installed in a virtual environment that lives inside some other repository is not
    # that repository's code: the package itself must be tracked there
    if not head or not _git(package, "ls-files", "--", "__init__.py"):
        return None
    toplevel, commit = head.decode().splitlines()[:2]
    source = package.parent  # the checkout's root (the repository may be a folder above it)
    paths = [os.path.relpath(source / p, toplevel) for p in _CODE_PATHS if (source / p).exists()]
    return Path(toplevel), commit, paths


def git_state(package: Path | None = None) -> tuple[dict[str, Any], bytes]:
    """The code this process runs (or the fdl ``package`` directory given): the commit of its source
    tree, whether the code differs from it, and the tracked changes (``git diff HEAD``, cut at
    CODE_DIFF_LIMIT bytes).

    ``dirty`` covers the package and ``conf/`` (tracked changes and untracked files), not tests or docs.
    Outside a git checkout (an installed wheel), or without git, commit and dirty are None.
    """
    unknown: dict[str, Any] = {"commit": None, "dirty": None}
    found = _code_repository(package)
    if found is None:
        return unknown, b""
    repo, commit, paths = found
    diff = _git(repo, "diff", "HEAD", "--no-ext-diff", "--no-color", "--", *paths)
    # (a checkout without a .gitignore still has Python's byte code beside the sources)
    untracked = _git(
        repo, "ls-files", "--others", "--exclude-standard", "--exclude=__pycache__", "--", *paths
    )
    if diff is None or untracked is None:
        return unknown, b""
    untracked_files = untracked.decode(errors="replace").splitlines()
    state: dict[str, Any] = {"commit": commit, "dirty": bool(diff or untracked_files)}
    if untracked_files:
        state["untracked"] = untracked_files[:100]
    if len(diff) > CODE_DIFF_LIMIT:
        diff = diff[:CODE_DIFF_LIMIT]
        state["diff_truncated"] = True
    if diff:
        state["diff_sha256"] = hashlib.sha256(diff).hexdigest()
    return state, diff


def commit_difference(commit_a: str, commit_b: str, *options: str) -> str | None:
    """``git diff [options] A B`` over the code paths, in the checkout fdl runs from; None when there
    is no checkout or it does not hold both commits."""
    found = _code_repository()
    if found is None:
        return None
    repo, _, paths = found
    output = _git(repo, "diff", "--no-ext-diff", "--no-color", *options, commit_a, commit_b, "--", *paths)
    return None if output is None else output.decode(errors="replace")


def record_code(run_dir: Path, name: str = CODE_DIFF_FILE, recorded: dict[str, Any] | None = None) -> dict:
    """:func:`git_state` for meta.json, the uncommitted changes saved as ``run_dir/name``; when they are
    the same as an earlier ``recorded`` state's (a resumed run), that state's file is named instead."""
    state, diff = git_state()
    if diff:
        earlier = recorded or {}
        if earlier.get("diff") and earlier.get("diff_sha256") == state["diff_sha256"]:
            state["diff"] = earlier["diff"]
        else:
            atomic_write_bytes(run_dir / name, diff)
            state["diff"] = name
    return state


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
    # `fdl train --resume RUN key=value`: overrides that change the saved config, written into config.yaml
    # and overrides.yaml by save_resume_overrides once the checkpoint has restored
    pending_overrides: list[str] = field(default_factory=list)

    def save_resume_overrides(self) -> None:
        """Write a resumed run's new overrides into its config.yaml and overrides.yaml. The loop calls
        this once the checkpoint has been restored, so that an override the checkpoint refuses (another
        model size) leaves the run's files as they were."""
        if self.resume and self.pending_overrides:
            save_config(self.path, self.config, saved_overrides(self.path) + self.pending_overrides)

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
        meta = self.read_meta()
        meta.update(fields)
        atomic_write_json(self.path / META_FILE, meta)

    def read_meta(self) -> dict[str, Any]:
        path = self.path / META_FILE
        return read_json(path) if path.exists() else {}

    def refuse_resume(self, meta_before: dict[str, Any], error: str | None) -> None:
        """A resume failed before its checkpoint loaded, so it trained nothing: meta.json goes back to
        what it was (status, end time), with the refused attempt kept on record with its error."""
        attempt = (self.read_meta().get("resumes") or [{}])[-1]
        attempt.update(refused=error, time_refused=now_iso())
        atomic_write_json(
            self.path / META_FILE, {**meta_before, "resumes": [*meta_before.get("resumes", []), attempt]}
        )

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
            raise RunLockedError(f"run {run_dir} is being trained by another process") from None
        yield
    finally:
        handle.close()


EVALS_FILE = "evals.jsonl"


def read_eval_records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's ``fdl eval`` records, oldest first: the ``eval-<which>[-<split>].json`` files and the
    lines of an ``evals.jsonl`` log if there is one. Each is the record as written plus ``source`` (where
    it was read) and ``which`` (``best``, ``last``, ``step-N``); unreadable ones are skipped."""
    records: list[dict[str, Any]] = []
    for path in sorted(run_dir.glob("eval-*.json")):
        with contextlib.suppress(OSError, ValueError):
            record = read_json(path)
            if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
                which = path.stem.removeprefix("eval-")
                if record.get("split"):
                    which = which.removesuffix(f"-{record['split']}")
                records.append({**record, "source": path.name, "which": which})
    with contextlib.suppress(OSError), open(run_dir / EVALS_FILE, errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and isinstance(record.get("metrics"), dict):
                    which = str(record.get("which") or record.get("checkpoint"))
                    records.append({**record, "source": f"{EVALS_FILE}:{number}", "which": which})
    return sorted(records, key=lambda record: str(record.get("time", "")))


def read_evals(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The metrics ``fdl eval`` recorded in a run, by checkpoint (the latest record of a metric wins)."""
    found: dict[str, dict[str, Any]] = {}
    for record in read_eval_records(run_dir):
        found.setdefault(record["which"], {}).update(record["metrics"])
    return found


def locate(path: str | Path) -> Path:
    """A run or sweep named by the user: a path, or an id relative to the runs root (as `fdl runs`
    shows them: ``mlp-mnist/2026-11-28_21-30-05_a1b2c3``). Returned as given when it is neither."""
    given = Path(path)
    if given.exists() or given.is_absolute():
        return given
    under_root = runs_root() / given
    return under_root if under_root.exists() else given


def resolve_run_dir(path: str | Path) -> Path:
    """A run directory given by the user (a path or a run id), checked to be one (not a sweep, not some
    other folder)."""
    run_dir = locate(path)
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


def save_config(run_dir: Path, run_config: Any, overrides: list[str]) -> None:
    """The resolved config (config.yaml) and the command-line overrides that made it (overrides.yaml)."""
    from omegaconf import OmegaConf  # here, not at the top: `fdl runs` and friends never need it

    atomic_write_text(run_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(run_config.to_dict())))
    atomic_write_text(run_dir / OVERRIDES_FILE, OmegaConf.to_yaml(OmegaConf.create(overrides)))


def saved_overrides(run_dir: Path) -> list[str]:
    """The overrides a run was started (and resumed) with, as overrides.yaml holds them."""
    from omegaconf import OmegaConf

    path = run_dir / OVERRIDES_FILE
    loaded = OmegaConf.load(path) if path.exists() else []
    return [str(o) for o in loaded] if loaded else []


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
        resumes = meta.setdefault("resumes", [])
        code = record_code(run.path, f"code.resume-{len(resumes) + 1}.diff", meta.get("git"))
        resumes.append({"command": sys.argv, "time": now_iso(), "overrides": overrides, "git": code})
        meta.update(status="running", device=device, end_time=None, pid=os.getpid())
    else:
        meta.update(
            experiment=run.config.name,
            command=sys.argv,
            cwd=os.getcwd(),
            overrides=overrides,
            git=record_code(run.path),
            versions=package_versions(),
            host=platform.node(),
            seed=run.config.seed,
            # how `fdl runs clean --keep-best` ranks runs without reading config.yaml
            monitor={"metric": run.config.trainer.monitor, "mode": run.config.trainer.monitor_mode},
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
