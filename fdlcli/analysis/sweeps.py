"""Sweep aggregation: jobs that differ only by their seed form one configuration, with mean and std.

Used by the end-of-sweep table (``fdl train -m``) and ``fdl summary SWEEP_DIR [--csv FILE]``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fdlcli import runs
from fdlcli.errors import RunDirError

# (column, where it lives in summary.json)
METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("best val", ("best", "value")),
    ("test acc (final)", ("final", "test/accuracy")),
    ("test acc (best)", ("best", "test/accuracy")),
    ("time s", ("train_seconds",)),
)
_SEED = re.compile(r"^\+*seed=")


@dataclass
class Job:
    number: int
    overrides: list[str]  # the user's overrides (no experiment=, no hydra.*)
    status: str
    summary: dict[str, Any]

    @property
    def seed_free(self) -> str:
        return " ".join(without_seed(self.overrides)) or "(defaults)"

    @property
    def seed(self) -> str:
        return next((o.split("=", 1)[1] for o in self.overrides if _SEED.match(o)), "0")


@dataclass
class Group:
    config: str
    jobs: list[Job] = field(default_factory=list)

    def values(self, path: tuple[str, ...]) -> list[float]:
        found = []
        for job in self.jobs:
            if job.status != "completed":
                continue
            value: Any = job.summary
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if isinstance(value, int | float) and math.isfinite(value):
                found.append(float(value))
        return found


def user_overrides(overrides: Iterable[str]) -> list[str]:
    return [o for o in overrides if not o.startswith(("experiment=", "hydra"))]


def without_seed(overrides: Iterable[str]) -> list[str]:
    """The overrides other than ``seed=N`` (``+seed=N``): what makes a configuration, seeds aside."""
    return [o for o in overrides if not _SEED.match(o)]


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1); no std for a single value."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def group_by_seed(jobs: Iterable[Job]) -> list[Group]:
    groups: dict[str, Group] = {}
    for job in sorted(jobs, key=lambda j: j.number):
        groups.setdefault(job.seed_free, Group(job.seed_free)).jobs.append(job)
    return list(groups.values())


def load_sweep(sweep_dir: Path) -> list[Job]:
    """The jobs of a sweep directory, read from each job's overrides.yaml and summary.json."""
    if not sweep_dir.is_dir():
        raise RunDirError(f"no such sweep directory: {sweep_dir}")
    if not (sweep_dir / "multirun.yaml").is_file():
        raise RunDirError(f"{sweep_dir} is not a sweep directory (it has no multirun.yaml)")
    from omegaconf import OmegaConf

    jobs = []
    for job_dir in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=_number):
        path = job_dir / runs.OVERRIDES_FILE
        overrides = [str(o) for o in (OmegaConf.load(path) or [])] if path.is_file() else []
        summary = {}
        if (job_dir / runs.SUMMARY_FILE).is_file():
            summary = runs.read_json(job_dir / runs.SUMMARY_FILE)
        status = summary.get("status") or "not finished"
        jobs.append(Job(_number(job_dir), user_overrides(overrides), status, summary))
    return jobs


def _number(path: Path) -> int:
    return int(path.name)


def rows(groups: list[Group]) -> list[dict[str, Any]]:
    """One row per configuration: config, n, seeds, then mean and std of every metric."""
    table = []
    for group in groups:
        row: dict[str, Any] = {
            "config": group.config,
            "n": sum(job.status == "completed" for job in group.jobs),
            "jobs": len(group.jobs),
            "seeds": " ".join(job.seed for job in group.jobs),
        }
        for name, path in METRICS:
            mean, std = mean_std(group.values(path))
            row[f"{name} mean"], row[f"{name} std"] = mean, std
        table.append(row)
    return table


def write_csv(table: list[dict[str, Any]], path: Path) -> None:
    lines: list[dict[str, Any]] = [{k: "" if v is None else v for k, v in row.items()} for row in table]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]) if table else ["config"])
        writer.writeheader()
        writer.writerows(lines)


def rich_table(table: list[dict[str, Any]], title: str) -> Any:
    from rich.table import Table

    out = Table(title=title)
    out.add_column("configuration")
    out.add_column("n", justify="right")
    out.add_column("seeds")
    for name, _ in METRICS:
        out.add_column(f"{name} (mean ± std)", justify="right")
    for row in table:
        cells = []
        for name, _ in METRICS:
            mean, std = row[f"{name} mean"], row[f"{name} std"]
            digits = 1 if name == "time s" else 4
            text = "-" if mean is None else f"{mean:.{digits}f}"
            if std is not None:
                text += f" ± {std:.{digits}f}"
            cells.append(text)
        out.add_row(row["config"], f"{row['n']}/{row['jobs']}", row["seeds"], *cells)
    return out
