"""The runs under the runs root, as records for browsing (`fdl runs`), comparing and cleaning up.

A record reads a run's meta.json and summary.json only (never metrics.jsonl, checkpoints or the YAML
files), so listing thousands of runs takes about a second. Runs live at fixed depths (fdlcli/runs.py):
``ROOT/EXPERIMENT/ID/`` and ``ROOT/EXPERIMENT/sweeps/SWEEP/JOB/``; a run's id is its path relative to
the root, which every command that takes a run accepts (:func:`fdlcli.runs.locate`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import json
import math
import os
import platform
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fdlcli import runs
from fdlcli.errors import RunDirError, UsageError

SWEEPS_DIR = "sweeps"
# A run whose meta.json still says "running" but whose process is gone (killed, out of memory, a
# reboot): it can be resumed with `fdl train --resume`.
DEAD = "dead"
NOT_STARTED = "not started"  # a directory with a config but no meta.json: killed while starting
STATUSES = ("running", "completed", "interrupted", "diverged", "failed", DEAD, NOT_STARTED)
FAILED_STATUSES = ("failed", "diverged")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object, or {} for a missing or unreadable file (a listing never fails on one bad run)."""
    try:
        with open(path) as handle:
            loaded = json.load(handle)
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def timestamp(value: Any) -> float | None:
    """Seconds since the epoch of an ISO time string (meta.json's times); None for anything else."""
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --------------------------------------------------------------------------------------------------
# Is the process of a "running" run still there?


def _boot_time() -> float | None:
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/stat") as handle:
        return float(next(line for line in handle if line.startswith("btime")).split()[1])
    return None


_BOOT_TIME = _boot_time()
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), where /proc tells."""
    if _BOOT_TIME is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()  # the command name may hold spaces
        return _BOOT_TIME + int(fields[19]) / _CLOCK_TICKS
    return None


def process_alive(meta: dict[str, Any]) -> bool | None:
    """Whether the process that wrote a "running" meta.json still runs; None when it cannot be told
    (the run was started on another host, or meta.json names no process)."""
    pid, host = meta.get("pid"), meta.get("host")
    if not isinstance(pid, int) or host != platform.node():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return None
    # a live pid may belong to another process now: the trainer started before it wrote meta.json
    started = _process_start(pid)
    last_start = timestamp((meta.get("resumes") or [{}])[-1].get("time") or meta.get("start_time"))
    return not (started is not None and last_start is not None and started > last_start + 2)


# --------------------------------------------------------------------------------------------------
# Records.


@dataclass
class RunRecord:
    path: Path
    id: str  # the path relative to the runs root
    experiment: str
    sweep: str | None  # the sweep's id, for a job of a sweep
    meta: dict[str, Any]
    status: str

    @functools.cached_property
    def summary(self) -> dict[str, Any]:
        """summary.json, read when first needed (a listing sorts and filters on meta.json alone)."""
        return read_json_object(self.path / runs.SUMMARY_FILE)

    @property
    def recorded_status(self) -> str | None:
        return self.meta.get("status")

    @property
    def start(self) -> float | None:
        return timestamp(self.meta.get("start_time"))

    @property
    def sort_time(self) -> float:
        start = self.start
        if start is None:
            with contextlib.suppress(OSError):
                start = self.path.stat().st_mtime
        return start or 0.0

    @property
    def duration(self) -> float | None:
        """Seconds of training: the time recorded at the end (over every resume), the time since the
        last (re)start while running, the training time of the last epoch summary otherwise."""
        if self.status == "running":
            resumes = self.meta.get("resumes") or []
            since = timestamp(resumes[-1].get("time")) if resumes else self.start
            return time.time() - since if since is not None else None
        recorded = _number(self.meta.get("train_seconds"))
        if recorded is not None and self.recorded_status != "running":
            return recorded
        return _number(self.summary.get("train_seconds"))

    @property
    def overrides(self) -> list[str]:
        """The command-line overrides of the run and of each of its resumes (``trainer.epochs=N``)."""
        from fdlcli.analysis.sweeps import user_overrides

        given = [str(o) for o in self.meta.get("overrides") or []]
        for resume in self.meta.get("resumes") or []:
            given += [str(o) for o in resume.get("overrides") or []]
        return user_overrides(given)

    @property
    def metric(self) -> str | None:
        best = self.summary.get("best")
        if isinstance(best, dict) and isinstance(best.get("metric"), str):
            return best["metric"]
        monitor = self.meta.get("monitor")
        return monitor.get("metric") if isinstance(monitor, dict) else None

    @property
    def best(self) -> float | None:
        best = self.summary.get("best")
        return _number(best.get("value")) if isinstance(best, dict) else None

    @property
    def final(self) -> float | None:
        final = self.summary.get("final")
        metric = self.metric
        return _number(final.get(metric)) if isinstance(final, dict) and metric else None

    @property
    def higher_is_better(self) -> bool:
        """The direction of the monitored metric: the run's trainer.monitor_mode when it monitored that
        metric (recorded in meta.json), else from its name (costs and losses fall, accuracies rise)."""
        from fdlcli.analysis.curves import lower_is_better

        monitor = self.meta.get("monitor")
        if isinstance(monitor, dict) and monitor.get("metric") == self.metric and monitor.get("mode"):
            return monitor["mode"] == "max"
        return not lower_is_better(self.metric or "")

    def to_json(self) -> dict[str, Any]:
        git = self.meta.get("git") if isinstance(self.meta.get("git"), dict) else {}
        return json_safe(
            {
                "id": self.id,
                "path": str(self.path),
                "experiment": self.experiment,
                "sweep": self.sweep,
                "status": self.status,
                "recorded_status": self.recorded_status,
                "start_time": self.meta.get("start_time"),
                "end_time": self.meta.get("end_time"),
                "duration_s": self.duration,
                "overrides": self.overrides,
                "metric": self.metric,
                "final": self.final,
                "best": self.best,
                "epochs": self.summary.get("epochs"),
                "error": self.meta.get("error"),
                "host": self.meta.get("host"),
                "pid": self.meta.get("pid"),
                "git_commit": git.get("commit"),
                "git_dirty": git.get("dirty"),
            }
        )


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as null, so that it prints as strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def read_record(path: Path, root: Path | None = None) -> RunRecord:
    """The record of one run directory (its place under the root gives the experiment and sweep)."""
    root = runs_root_for(path) if root is None else root
    try:
        relative = path.resolve().relative_to(root.resolve())
        parts = relative.parts
    except ValueError:  # a run outside the runs root: its path is its id
        relative, parts = path, ()
    meta = read_json_object(path / runs.META_FILE)
    experiment = meta.get("experiment") or (parts[0] if parts else path.parent.name)
    sweep = str(Path(*parts[:3])) if len(parts) == 4 and parts[1] == SWEEPS_DIR else None
    recorded = meta.get("status")
    if not meta:
        status = NOT_STARTED
    elif recorded == "running" and process_alive(meta) is False:
        status = DEAD
    else:
        status = str(recorded or "unknown")
    return RunRecord(path, str(relative), str(experiment), sweep, meta, status)


def runs_root_for(path: Path) -> Path:
    """The runs root holding ``path``: the configured one, else the folder two levels up (four for a
    sweep job), so ids stay meaningful for runs kept elsewhere."""
    root = runs.runs_root()
    with contextlib.suppress(ValueError, OSError):
        path.resolve().relative_to(root.resolve())
        return root
    parent = path.resolve().parent
    return parent.parent.parent.parent if parent.parent.name == SWEEPS_DIR else parent.parent


def _subdirs(path: Path) -> Iterator[os.DirEntry]:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                # dot folders: .hydra, and runs being deleted (.<id>.deleting)
                if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
                    yield entry
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as exc:
        raise RunDirError(f"cannot read {path}: {exc.strerror or exc}") from None


def _is_run(path: str) -> bool:
    return os.path.exists(os.path.join(path, runs.META_FILE)) or os.path.exists(
        os.path.join(path, runs.CONFIG_FILE)
    )


def run_paths(root: Path, experiment: str | None = None) -> Iterator[Path]:
    """Every run directory under ``root``, sweep jobs included (only the fixed depths are looked at)."""
    for experiment_dir in _subdirs(root):
        if experiment is not None and experiment_dir.name != experiment:
            continue
        for entry in _subdirs(Path(experiment_dir.path)):
            if entry.name == SWEEPS_DIR:
                for sweep in _subdirs(Path(entry.path)):
                    yield from (Path(job.path) for job in _subdirs(Path(sweep.path)) if _is_run(job.path))
            elif _is_run(entry.path):
                yield Path(entry.path)


def experiments_with_runs(root: Path) -> list[str]:
    return sorted(entry.name for entry in _subdirs(root))


def known_experiments() -> list[str]:
    """The experiments fdl can train, from conf/experiment/ (without importing the experiment modules)."""
    from fdlcli.config import conf_dir

    return sorted(path.stem for path in (conf_dir() / "experiment").glob("*.yaml"))


def load(experiment: str | None = None, status: str | None = None) -> list[RunRecord]:
    """The runs under the runs root (of one experiment, with one status), newest first."""
    root = runs.runs_root()
    if experiment is not None and not (root / experiment).is_dir() and experiment not in known_experiments():
        raise UsageError(
            f"unknown experiment {experiment!r}; with runs under {root}: "
            f"{', '.join(experiments_with_runs(root)) or 'none'}"
        )
    if status is not None and status not in STATUSES:
        raise UsageError(f"unknown status {status!r}; choose from: {', '.join(STATUSES)}")
    records = [read_record(path, root) for path in run_paths(root, experiment)]
    if status is not None:
        records = [record for record in records if record.status == status]
    return sorted(records, key=lambda record: (record.sort_time, record.id), reverse=True)


# --------------------------------------------------------------------------------------------------
# Formatting.


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def format_start(record: RunRecord) -> str:
    start = record.start
    if start is None:
        return "-"
    return dt.datetime.fromtimestamp(start).strftime("%Y-%m-%d %H:%M")


def format_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """``30m``, ``12h``, ``7d``, ``2w`` (or ``90s``) in seconds."""
    match = _DURATION.match(text)
    if not match:
        raise UsageError(f"bad duration {text!r}: a number and a unit (s, m, h, d or w), such as 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


# --------------------------------------------------------------------------------------------------
# Cleaning up.


def directory_size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def _maybe_alive(record: RunRecord) -> bool:
    """A run that may still be training: never deleted (on another host its process cannot be seen)."""
    return record.recorded_status == "running" and process_alive(record.meta) is not False


def select_for_cleaning(
    records: list[RunRecord], failed: bool, older_than: float | None, keep_best: int | None
) -> tuple[list[RunRecord], list[RunRecord]]:
    """The runs that every given criterion selects, and the running ones spared although selected.

    ``failed``: failed or diverged runs; ``older_than``: started more than that many seconds ago;
    ``keep_best``: all but the best N of each experiment by its monitored metric (runs without a
    value rank last).
    """
    if not failed and older_than is None and keep_best is None:
        raise UsageError("say what to delete: --failed, --older-than DURATION and/or --keep-best N")
    if keep_best is not None and keep_best < 0:
        raise UsageError(f"--keep-best needs a count of 0 or more, not {keep_best}")
    selected = list(records)
    if failed:
        selected = [r for r in selected if r.status in FAILED_STATUSES]
    if older_than is not None:
        cutoff = time.time() - older_than
        selected = [r for r in selected if r.sort_time < cutoff]
    if keep_best is not None:
        kept = {record.id for record in best_runs(records, keep_best)}
        selected = [r for r in selected if r.id not in kept]
    spared = [r for r in selected if _maybe_alive(r)]
    return [r for r in selected if not _maybe_alive(r)], spared


def best_runs(records: Iterable[RunRecord], count: int) -> list[RunRecord]:
    """The ``count`` best runs of each experiment (and monitored metric) by that metric's best value."""
    groups: dict[tuple[str, str | None], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.experiment, record.metric), []).append(record)
    kept = []
    for group in groups.values():
        ranked = sorted(
            (r for r in group if r.best is not None and math.isfinite(r.best)),
            key=lambda r: r.best if r.higher_is_better else -r.best,  # type: ignore[operator]
            reverse=True,
        )
        kept += ranked[:count]
    return kept


def delete_run(record: RunRecord) -> bool:
    """Delete a run directory; False when a process holds its lock (it is being trained after all).

    The directory is first renamed to a dot name, which listings skip, so a deletion that stops
    half-way never leaves something that looks like a run.
    """
    path = record.path
    doomed = path.with_name(f".{path.name}.deleting")
    try:
        with open(path / runs.LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            os.rename(path, doomed)
    except OSError as exc:
        raise RunDirError(f"cannot delete {path}: {exc.strerror or exc}") from None
    shutil.rmtree(doomed, ignore_errors=True)
    _remove_empty_sweep(path.parent, record)
    return True


def _remove_empty_sweep(sweep_dir: Path, record: RunRecord) -> None:
    """Once the last job of a sweep is deleted, the sweep's own files (multirun.yaml, the folders of
    jobs that never ran, ...) go too."""
    if record.sweep is None or any(_is_run(entry.path) for entry in _subdirs(sweep_dir)):
        return
    shutil.rmtree(sweep_dir, ignore_errors=True)
