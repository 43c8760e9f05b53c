"""Side-by-side runs (`fdl compare`) and the difference between two runs (`fdl diff`).

A run's config is its config.yaml flattened to dotted keys (``optim.lr``; lists stay values); its
metrics are named ``METRIC@SOURCE``: ``@final`` and ``@best`` from summary.json (the monitored metric
and the test metrics of the final and the best model), ``@eval-<checkpoint>`` from what ``fdl eval``
recorded.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fdlcli import catalog, runs
from fdlcli.analysis.curves import expand_run_dirs, lower_is_better
from fdlcli.analysis.rundata import flatten
from fdlcli.errors import UsageError

MISSING = object()  # a key one run has and another has not


def load_config(run_dir: Path) -> dict[str, Any]:
    """config.yaml as plain data (safe loader: a saved config is never code)."""
    path = run_dir / runs.CONFIG_FILE
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        loaded = yaml.load(path.read_text(), Loader=loader) or {}
        return flatten(loaded) if isinstance(loaded, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


@dataclass
class RunView:
    record: catalog.RunRecord
    config: dict[str, Any]
    metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.record.id


def run_metrics(record: catalog.RunRecord) -> dict[str, float | None]:
    """The monitored metric (final, best), test metrics (final, best model) and recorded evaluations."""
    summary = record.summary
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    best = summary.get("best") if isinstance(summary.get("best"), dict) else {}
    metrics: dict[str, float | None] = {}
    if record.metric:
        metrics[f"{record.metric}@final"] = record.final
        metrics[f"{record.metric}@best"] = record.best
    for name in sorted({*final, *best}):
        if name.startswith("test/"):
            for source, values in (("final", final), ("best", best)):
                if isinstance(values.get(name), int | float):
                    metrics[f"{name}@{source}"] = float(values[name])
    for which, values in sorted(runs.read_evals(record.path).items()):
        for name, value in values.items():
            if isinstance(value, int | float):
                metrics[f"{name}@eval-{which}"] = float(value)
    return metrics


def load_runs(paths: tuple[str | Path, ...]) -> list[RunView]:
    """The runs named (ids or paths; a sweep stands for its jobs), without duplicates."""
    views, seen = [], set()
    for run_dir in expand_run_dirs(Path(p) for p in paths):
        key = run_dir.resolve()
        if key in seen:
            continue
        seen.add(key)
        record = catalog.read_record(run_dir)
        views.append(RunView(record, load_config(run_dir), run_metrics(record)))
    return views


# --------------------------------------------------------------------------------------------------
# fdl compare


@dataclass
class Comparison:
    runs: list[RunView]
    keys: list[str]  # config keys shown
    metrics: list[str]  # metric columns shown

    def rows(self) -> list[dict[str, Any]]:
        """One dict per run: id, experiment, status, config keys, metrics (None where a run has none)."""
        table = []
        for view in self.runs:
            row: dict[str, Any] = {
                "id": view.id,
                "experiment": view.record.experiment,
                "status": view.record.status,
            }
            row.update({key: view.config.get(key) for key in self.keys})
            row.update({name: view.metrics.get(name) for name in self.metrics})
            table.append(row)
        return table


def _differs(views: list[RunView], key: str) -> bool:
    values = [json.dumps(view.config.get(key, MISSING), sort_keys=True, default=repr) for view in views]
    return len(set(values)) > 1


def compare(views: list[RunView], only_changed: bool = True, sort: str | None = None) -> Comparison:
    keys: list[str] = []
    for view in views:
        keys += [key for key in view.config if key not in keys]
    if only_changed:
        keys = [key for key in keys if _differs(views, key)]
    metrics: list[str] = []
    for view in views:
        metrics += [name for name in view.metrics if name not in metrics]
    if sort is not None:
        views = sort_runs(views, sort, metrics, keys)
    return Comparison(views, keys, metrics)


def sort_runs(views: list[RunView], sort: str, metrics: list[str], keys: list[str]) -> list[RunView]:
    """Best first by a metric column (``test/accuracy@best``, or a bare name for its first column),
    or ascending by a config key; runs without a value go last."""
    column = sort if sort in metrics else next((m for m in metrics if m.split("@")[0] == sort), None)
    if column is not None:
        name = column.split("@")[0]
        monitored = [v.record for v in views if v.record.metric == name]
        higher = monitored[0].higher_is_better if monitored else not lower_is_better(name)

        def metric_key(view: RunView) -> tuple[bool, float]:
            value = view.metrics.get(column)
            if value is None or not math.isfinite(value):
                return (True, 0.0)
            return (False, -value if higher else value)

        return sorted(views, key=metric_key)
    all_keys = {key for view in views for key in view.config}
    if sort in all_keys:

        def config_key(view: RunView) -> tuple[bool, str, Any]:
            value = view.config.get(sort)
            return (value is None, type(value).__name__, value if isinstance(value, int | float | str) else 0)

        return sorted(views, key=config_key)
    choices = ", ".join(metrics) or "none recorded"
    raise UsageError(f"cannot sort by {sort!r}: not a metric of these runs ({choices}) nor a config key")


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# --------------------------------------------------------------------------------------------------
# fdl diff


@dataclass
class ConfigDiff:
    added: dict[str, Any]  # in B only
    removed: dict[str, Any]  # in A only
    changed: dict[str, tuple[Any, Any]]

    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff_mappings(a: dict[str, Any], b: dict[str, Any]) -> ConfigDiff:
    return ConfigDiff(
        added={k: b[k] for k in b if k not in a},
        removed={k: a[k] for k in a if k not in b},
        changed={k: (a[k], b[k]) for k in a if k in b and a[k] != b[k]},
    )


def environment(record: catalog.RunRecord) -> dict[str, Any]:
    """What a run ran on, as flat keys: package versions, device, threads, processes."""
    meta = record.meta
    found = {f"versions.{k}": v for k, v in (meta.get("versions") or {}).items()}
    found.update({key: meta[key] for key in ("device", "threads", "world_size") if key in meta})
    return found


_FILE_HEADER = re.compile(r"^diff --git a/(\S+) b/", re.MULTILINE)


def patch_by_file(patch: str) -> dict[str, str]:
    """A ``git diff`` output split into each file's part."""
    starts = [(m.start(), m.group(1)) for m in _FILE_HEADER.finditer(patch)]
    return {
        name: patch[start : starts[i + 1][0] if i + 1 < len(starts) else len(patch)]
        for i, (start, name) in enumerate(starts)
    }


@dataclass
class CodeDiff:
    """How the code two runs ran differs: their commits and their uncommitted changes (code.diff)."""

    known: bool
    commit_a: str | None = None
    commit_b: str | None = None
    patch_a: str = ""
    patch_b: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def same_commit(self) -> bool:
        return self.commit_a == self.commit_b

    @property
    def changed_files(self) -> list[str]:
        """Files whose uncommitted changes differ between the runs."""
        a, b = patch_by_file(self.patch_a), patch_by_file(self.patch_b)
        return sorted(name for name in {*a, *b} if a.get(name) != b.get(name))

    def commit_stat(self) -> str | None:
        if self.same_commit or not self.commit_a or not self.commit_b:
            return None
        return runs.commit_difference(self.commit_a, self.commit_b, "--stat")

    def commit_patch(self) -> str | None:
        if self.same_commit or not self.commit_a or not self.commit_b:
            return None
        return runs.commit_difference(self.commit_a, self.commit_b)

    def patch_of_patches(self) -> str:
        """The uncommitted changes of A against those of B, as a unified diff of the two code.diff files."""
        return "".join(
            difflib.unified_diff(
                self.patch_a.splitlines(keepends=True),
                self.patch_b.splitlines(keepends=True),
                "A/code.diff",
                "B/code.diff",
            )
        )

    def to_json(self) -> dict[str, Any]:
        if not self.known:
            return {"known": False, "notes": self.notes}
        return {
            "known": True,
            "commit_a": self.commit_a,
            "commit_b": self.commit_b,
            "same_commit": self.same_commit,
            "same_uncommitted_changes": self.patch_a == self.patch_b,
            "files_with_different_uncommitted_changes": self.changed_files,
            "notes": self.notes,
        }


def _read_patch(record: catalog.RunRecord, git: dict[str, Any]) -> str:
    name = git.get("diff")
    if not name:
        return ""
    try:
        return (record.path / Path(name).name).read_text(errors="replace")
    except OSError:
        return ""


def code_difference(a: catalog.RunRecord, b: catalog.RunRecord) -> CodeDiff:
    git_a, git_b = a.meta.get("git") or {}, b.meta.get("git") or {}
    if not git_a.get("commit") or not git_b.get("commit"):
        unknown = [r.id for r, g in ((a, git_a), (b, git_b)) if not g.get("commit")]
        return CodeDiff(
            known=False,
            notes=[
                f"no record of the code of {', '.join(unknown)} (not run from a git checkout, or by an "
                "older fdl)"
            ],
        )
    found = CodeDiff(True, git_a["commit"], git_b["commit"], _read_patch(a, git_a), _read_patch(b, git_b))
    for label, git in (("A", git_a), ("B", git_b)):
        if git.get("dirty") and not git.get("diff_sha256") and not git.get("untracked"):
            found.notes.append(f"{label} ran uncommitted changes that were not recorded (an older fdl)")
        if git.get("diff_truncated"):
            found.notes.append(f"{label}'s code.diff was cut at {runs.CODE_DIFF_LIMIT} bytes")
        if git.get("untracked"):
            found.notes.append(f"{label} had untracked files: {' '.join(git['untracked'])}")
    for label, record, git in (("A", a, git_a), ("B", b, git_b)):
        for resume in record.meta.get("resumes") or []:
            code = resume.get("git") or {}
            if code and (code.get("commit"), code.get("diff_sha256")) != (
                git.get("commit"),
                git.get("diff_sha256"),
            ):
                found.notes.append(f"{label} was resumed on {resume.get('time')} under other code")
    return found
