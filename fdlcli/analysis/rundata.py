"""A finished (or running) run directory read back as plain data: config, overrides, meta, summary, evals.

Reports and comparisons read runs through :func:`load_run`; nothing here imports torch or unpickles
anything (config.yaml is parsed as plain YAML data, JSON files as JSON).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fdlcli.analysis.sweeps import user_overrides
from fdlcli.catalog import read_json_object
from fdlcli.errors import RunDirError
from fdlcli.runs import CONFIG_FILE, META_FILE, OVERRIDES_FILE, SUMMARY_FILE


@dataclass
class RunData:
    path: Path
    config: dict[str, Any]  # the resolved config.yaml
    overrides: list[str]  # the user's command-line overrides (no experiment=, no hydra.*)
    meta: dict[str, Any]
    summary: dict[str, Any]

    @property
    def experiment(self) -> str:
        return str(self.config.get("name") or self.meta.get("experiment") or self.path.parent.name)

    @property
    def status(self) -> str:
        return str(self.summary.get("status") or self.meta.get("status") or "unknown")

    @property
    def best(self) -> tuple[str, float] | None:
        """The monitored metric and its best value (summary.json ``best``), when the run tracked one."""
        best = self.summary.get("best")
        if isinstance(best, dict) and isinstance(best.get("metric"), str) and is_number(best.get("value")):
            return best["metric"], float(best["value"])
        return None

    def higher_is_better(self, metric: str) -> bool:
        """The direction of ``metric``: trainer.monitor_mode when it is the monitored metric, else by name."""
        from fdlcli.analysis.curves import lower_is_better

        trainer = self.config.get("trainer") or {}
        if trainer.get("monitor") == metric and trainer.get("monitor_mode") in ("max", "min"):
            return trainer["monitor_mode"] == "max"
        return not lower_is_better(metric)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def load_run(path: Path) -> RunData:
    """Read a run directory; a missing or unreadable summary/meta reads as empty (a run still starting)."""
    path = Path(path)
    try:
        config = yaml.safe_load((path / CONFIG_FILE).read_text())
    except FileNotFoundError:
        raise RunDirError(f"{path} is not an fdl run directory (it has no {CONFIG_FILE})") from None
    except (OSError, yaml.YAMLError) as exc:
        raise RunDirError(f"cannot read {path / CONFIG_FILE}: {exc}") from None
    if not isinstance(config, dict):
        raise RunDirError(f"{path / CONFIG_FILE} is not a config mapping")
    try:
        saved = yaml.safe_load((path / OVERRIDES_FILE).read_text()) or []
    except (OSError, yaml.YAMLError):
        saved = []
    overrides = effective_overrides(user_overrides(str(o) for o in saved)) if isinstance(saved, list) else []
    meta, summary = read_json_object(path / META_FILE), read_json_object(path / SUMMARY_FILE)
    return RunData(path, config, overrides, meta, summary)


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 0.1}}`` -> ``{"optim.lr": 0.1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def effective_overrides(overrides: list[str]) -> list[str]:
    """The last override of each key, in the order the keys first appear: a run resumed with
    ``trainer.steps=30000`` and then ``trainer.steps=40000`` saved all three of its ``trainer.steps``, and
    ran with the last."""
    last = dict(zip(override_keys(overrides), overrides, strict=True))
    return list(last.values())


def override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys the overrides set: ``optim.lr=0.1`` -> optim.lr, ``optim=adam`` -> optim,
    ``+x=1`` / ``~x`` -> x."""
    return [o.lstrip("+~").split("=", 1)[0].strip() for o in overrides]


def differing_keys(configs: Iterable[dict[str, Any]], ignore: Iterable[str] = ()) -> list[str]:
    """The dotted config keys whose value is not the same in every config (in first-seen order)."""
    flats = [flatten(c) for c in configs]
    skip = set(ignore)
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    missing = object()
    return [k for k in keys if k not in skip and len({repr(f.get(k, missing)) for f in flats}) > 1]


def numeric_items(mapping: dict[str, Any], skip: Iterable[str] = ()) -> Iterator[tuple[str, float]]:
    """The finite numbers of a (nested) summary mapping, as dotted names."""
    skipped = set(skip)
    for key, value in flatten(mapping).items():
        if key not in skipped and is_number(value):
            yield key, float(value)
