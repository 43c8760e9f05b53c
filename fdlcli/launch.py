"""Where Click meets Hydra.

``@hydra.main`` owns ``sys.argv`` and the compose API has no run directory and no multirun, so fdl
drives Hydra's own ``run``/``multirun`` machinery (the same calls ``hydra_zen.launch`` makes) from
inside the Click command, with ``conf/`` as the config directory. Sweepers and launchers are therefore
Hydra's: ``hydra/launcher=joblib`` runs jobs in parallel, submitit/ray work once installed.

Before anything is launched, every job of the sweep is composed and validated with the compose API,
so a typo fails in a second with one line, and no run directory is created for it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fdlcli import config as config_module
from fdlcli import registry, runs
from fdlcli.errors import ConfigError, TrainingInterrupted

# Validating a sweep composes each job; past this many jobs only the first ones are checked up front
# (every job still validates its own config when it starts).
MAX_PREVALIDATED_JOBS = 256


@dataclass
class JobResult:
    number: int
    overrides: list[str]
    run_dir: str
    status: str
    summary: dict[str, Any]
    error: str | None = None


def _hydra_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"


def prevalidate(experiment: str, overrides: Sequence[str], multirun: bool) -> int:
    """Compose and validate every job a (sweep) command would run; return the number of jobs."""
    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    combos = config_module.expand_sweep(user) if multirun else [list(user)]
    if combos is None:  # a sweep an optimizing sweeper explores: validate what is fixed
        combos = [[o for o in user if "," not in o and "(" not in o]]
    if not multirun:
        config_module.expand_sweep(user)  # parse errors surface here too
        if any(_is_sweep(o) for o in user):
            raise ConfigError(
                f"{next(o for o in user if _is_sweep(o))!r} is a sweep; add -m to run one job per value"
            )
    for combo in combos[:MAX_PREVALIDATED_JOBS]:
        config_module.validate(config_module.compose(experiment, combo))
    return len(combos)


def _is_sweep(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([override])[0]
    return parsed.is_sweep_override()


def launch(experiment: str, overrides: Sequence[str], multirun: bool) -> list[JobResult]:
    """Run one job (or a sweep) of ``experiment`` through Hydra; return what each job produced."""
    from hydra.core.global_hydra import GlobalHydra

    registry.get(experiment)
    prevalidate(experiment, overrides, multirun)
    if multirun:
        target = runs.new_sweep_dir(experiment)
        placement = [f"hydra.sweep.dir={_hydra_quote(str(target))}", "hydra.sweep.subdir=${hydra.job.num}"]
    else:
        target = runs.new_run_dir(experiment)
        placement = [f"hydra.run.dir={_hydra_quote(str(target))}"]
    all_overrides = [f"experiment={experiment}", *overrides, *placement]
    try:
        with config_module.hydra_context():
            hydra = GlobalHydra.instance().hydra
            assert hydra is not None
            if multirun:
                returns = hydra.multirun(config_name="config", task_function=run_job, overrides=all_overrides)
                flat = [job for batch in returns for job in batch]
            else:
                _single_run_failures.clear()
                flat = [hydra.run(config_name="config", task_function=run_job, overrides=all_overrides)]
                if _single_run_failures:
                    raise _single_run_failures.pop()
    except BaseException:
        runs.remove_if_empty(target)
        raise
    results = []
    for number, job in enumerate(flat):
        value = job.return_value if job.status.name == "COMPLETED" else None
        results.append(
            JobResult(
                number=number,
                overrides=list(job.overrides or []),
                run_dir=str(
                    OmegaConf.select(job.hydra_cfg, "hydra.runtime.output_dir", default=None) or target
                ),
                status="failed" if value is None or value.get("error") else "completed",
                summary=(value or {}).get("summary", {}),
                error=(value or {}).get("error"),
            )
        )
    if multirun:
        runs.atomic_write_json(target / "sweep_summary.json", [r.__dict__ for r in results])
    return results


# A single run's exception, handed from the task function back to launch() (same process). Raising it
# through Hydra instead would make Hydra print its own "Error executing job" line before ours.
_single_run_failures: list[BaseException] = []


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Hydra's task function: one job = one run directory. Module-level so launchers can pickle it."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    run_dir = Path(hydra_cfg.runtime.output_dir)
    run: runs.Run | None = None
    try:
        run_config = config_module.validate(cfg)
        overrides = [
            o for o in hydra_cfg.overrides.task if not o.startswith(("hydra.run.dir", "hydra.sweep."))
        ]
        save_config(run_dir, run_config, overrides)
        parallel = _parallel_jobs(hydra_cfg) if sweeping else 1
        run = runs.Run(path=run_dir, config=run_config, overrides=overrides, parallel_jobs=parallel)
        with runs.locked(run_dir):
            return {"summary": registry.get(run_config.name).train(run)}
    except (TrainingInterrupted, KeyboardInterrupt):
        if sweeping:
            raise  # Ctrl-C stops the whole sweep
        _single_run_failures.append(sys.exc_info()[1])  # type: ignore[arg-type]
    except Exception as exc:
        if not sweeping:
            _single_run_failures.append(exc)
        # keep going: the sweep's table reports the failure and the command exits non-zero
        return {"summary": run.summary() if run else {}, "error": runs.describe_error(exc)}
    return {"summary": {}, "error": "interrupted"}


def save_config(run_dir: Path, run_config: Any, overrides: list[str]) -> None:
    runs.atomic_write_text(
        run_dir / runs.CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(run_config.to_dict()))
    )
    runs.atomic_write_text(run_dir / runs.OVERRIDES_FILE, OmegaConf.to_yaml(OmegaConf.create(overrides)))


def _parallel_jobs(hydra_cfg: Any) -> int:
    """How many jobs of this sweep run at once on this machine (sets each job's CPU thread share)."""
    launcher = OmegaConf.select(hydra_cfg, "launcher._target_", default="") or ""
    if "joblib" not in launcher.lower():
        return 1
    n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=-1) or -1
    from fdlcli.engine.devices import cpu_count

    cpus = cpu_count()
    return cpus if n_jobs < 0 else min(n_jobs, cpus)


def resume(run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Continue an interrupted run in its own directory (no Hydra needed: the config is saved)."""
    run_dir = runs.resolve_run_dir(run_dir)
    run_config = config_module.load_saved(run_dir / runs.CONFIG_FILE)
    if overrides:
        run_config = config_module.apply_overrides(run_config, overrides)
        save_config(run_dir, run_config, _saved_overrides(run_dir) + list(overrides))
    run = runs.Run(path=run_dir, config=run_config, resume=True, overrides=list(overrides))
    with runs.locked(run_dir):
        return registry.get(run_config.name).train(run)


def _saved_overrides(run_dir: Path) -> list[str]:
    path = run_dir / runs.OVERRIDES_FILE
    loaded = OmegaConf.load(path) if path.exists() else []
    return [str(o) for o in loaded] if loaded else []


def evaluate(run_dir: Path, checkpoint: str, split: str) -> dict[str, float]:
    run_dir = runs.resolve_run_dir(run_dir)
    run_config = config_module.load_saved(run_dir / runs.CONFIG_FILE)
    run = runs.Run(path=run_dir, config=run_config)
    return registry.get(run_config.name).evaluate(run, checkpoint, split)
