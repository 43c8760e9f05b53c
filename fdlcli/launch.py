"""Where Click meets Hydra.

``@hydra.main`` owns ``sys.argv`` and the compose API has no run directory and no multirun, so fdl
drives Hydra's own ``run``/``multirun`` machinery (the same calls ``hydra_zen.launch`` makes) from
inside the Click command, with ``conf/`` as the config directory. Sweepers and launchers are therefore
Hydra's: ``hydra/launcher=joblib`` runs jobs in parallel, submitit/ray work once installed.

Before anything is launched, every job of the sweep is composed and validated with the compose API,
so a typo fails in a second with one line, and no run directory is created for it.

Scale-out (docs/scaling.md): a single run with ``trainer.devices=N`` (or under torchrun) is trained
data-parallel, rank 0 claiming the run directory for all ranks; a sweep directory can be resumed
(finished jobs are skipped, interrupted ones continue from their checkpoints, numbering is kept);
``fail_fast`` stops a sweep at its first failing job.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fdlcli import config as config_module
from fdlcli import registry, runs
from fdlcli.engine import distributed
from fdlcli.errors import ConfigError, FdlError, RunDirError, RunLockedError, TrainingInterrupted

# Validating a sweep composes each job; past this many jobs only the first ones are checked up front
# (every job still validates its own config when it starts).
MAX_PREVALIDATED_JOBS = 256

# Marker files in a sweep directory: the sweep stops at its first failure, and which job failed.
FAIL_FAST_FILE = ".fail_fast"
STOPPED_FILE = ".stopped"
# ... and a resumed sweep reruns its failed jobs (`fdl train --resume SWEEP --retry-failed`).
RETRY_FAILED_FILE = ".retry_failed"
# A failed sweep job's error and traceback, in its own directory.
ERROR_FILE = "error.txt"
# Where a failed job's files go when it is retried: <job>/attempts/<n>/.
ATTEMPTS_DIR = "attempts"
# The GPUs a local parallel sweep shares out, one per job (set by the CLI process, read by the jobs).
SWEEP_GPUS_ENV = "FDL_SWEEP_GPUS"
# The number of jobs of the sweep being launched (submitit's local executor starts them all at once).
SWEEP_JOBS_ENV = "FDL_SWEEP_JOBS"


@dataclass
class JobResult:
    number: int
    overrides: list[str]
    run_dir: str
    status: str
    summary: dict[str, Any]
    error: str | None = None
    previous: bool = False  # finished in an earlier launch of the same sweep (a resumed sweep)


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
        run_config = config_module.validate(config_module.compose(experiment, combo))
        if multirun and run_config.trainer.devices > 1:
            raise ConfigError(
                "trainer.devices>1 trains one run data-parallel; sweep jobs run one process each "
                "(use a parallel launcher instead, see docs/scaling.md)"
            )
    return len(combos)


def _requested_devices(experiment: str, overrides: Sequence[str]) -> int:
    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    return config_module.validate(config_module.compose(experiment, user)).trainer.devices


def _is_sweep(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([override])[0]
    return parsed.is_sweep_override()


def launch(
    experiment: str, overrides: Sequence[str], multirun: bool, fail_fast: bool = False
) -> list[JobResult]:
    """Run one job (or a sweep) of ``experiment`` through Hydra; return what each job produced."""
    registry.get(experiment)
    jobs = prevalidate(experiment, overrides, multirun)
    if not multirun:
        if distributed.env_world_size() > 1:  # a rank under torchrun (or started by launch_local)
            return _launch_rank(experiment, overrides)
        devices = _requested_devices(experiment, overrides)
        if devices > 1:
            distributed.launch_local(devices, ["train", experiment, *overrides])
            return []
        return _launch_hydra(experiment, overrides, False, runs.new_run_dir(experiment))
    if distributed.env_world_size() > 1:
        raise ConfigError("a sweep (-m) does not run under torchrun; launch its jobs with a Hydra launcher")
    os.environ[SWEEP_JOBS_ENV] = str(jobs)
    target = runs.new_sweep_dir(experiment)
    if fail_fast:
        runs.atomic_write_text(target / FAIL_FAST_FILE, "")
    _share_gpus()
    return _launch_hydra(experiment, overrides, True, target)


def _launch_rank(experiment: str, overrides: Sequence[str]) -> list[JobResult]:
    """One rank of a data-parallel run: rank 0 claims the run directory and sends it to the others."""
    distributed.init_from_env()
    try:
        claimed: tuple[str | None, str | None] = (None, None)
        if distributed.is_main():
            try:
                claimed = (str(runs.new_run_dir(experiment)), None)
            except FdlError as exc:
                claimed = (None, str(exc))
        path, error = distributed.broadcast_object(claimed)
        if path is None:
            raise RunDirError(error or "rank 0 could not create the run directory")
        return _launch_hydra(experiment, overrides, False, Path(path))
    finally:
        distributed.shutdown()


def _launch_hydra(experiment: str, overrides: Sequence[str], multirun: bool, target: Path) -> list[JobResult]:
    if multirun:
        placement = _sweep_placement(target)
    else:
        placement = [f"hydra.run.dir={_hydra_quote(str(target))}"]
        if not distributed.is_main():
            placement.append("hydra.output_subdir=null")  # rank 0 writes .hydra/ for everyone
    all_overrides = [f"experiment={experiment}", *overrides, *placement]
    return _run_hydra(all_overrides, multirun, target)


def _sweep_placement(target: Path) -> list[str]:
    # hydra.mode is left unset by Hydra's multirun() when called directly; the jobs read it to know
    # they are part of a sweep (thread share, fail-fast, resuming, Ctrl-C stopping the whole sweep)
    return [
        f"hydra.sweep.dir={_hydra_quote(str(target))}",
        "hydra.sweep.subdir=${hydra.job.num}",
        "hydra.mode=MULTIRUN",
    ]


def _run_hydra(all_overrides: list[str], multirun: bool, target: Path) -> list[JobResult]:
    from hydra.core.global_hydra import GlobalHydra

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
        if distributed.is_main():
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
                previous=bool((value or {}).get("previous")),
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
    sweep_dir = run_dir.parent
    run: runs.Run | None = None
    main = distributed.is_main()
    try:
        if sweeping and (sweep_dir / STOPPED_FILE).exists():
            return {"summary": {}, "error": f"not run: {(sweep_dir / STOPPED_FILE).read_text().strip()}"}
        run_config = config_module.validate(cfg)
        overrides = [
            o for o in hydra_cfg.overrides.task if not o.startswith(("hydra.run.dir", "hydra.sweep."))
        ]
        resume = retry = False
        if sweeping and (run_dir / runs.CONFIG_FILE).is_file():  # a job of a sweep launched before
            earlier = runs.Run(path=run_dir, config=run_config).summary()
            if earlier.get("status") == "completed":
                return {"summary": earlier, "previous": True}
            failure = _recorded_failure(run_dir)
            if failure is not None and not (sweep_dir / RETRY_FAILED_FILE).exists():
                return {"summary": earlier, "error": failure, "previous": True}
            retry = failure is not None  # rerun from scratch, the failed attempt set aside
            resume = not retry and _has_initial_checkpoint(run_dir)
            if not resume and not retry:  # killed before its first checkpoint: start it again
                runs.truncate_metrics(run_dir, 0)
        if main:
            runs.save_config(run_dir, run_config, overrides)
        parallel = _parallel_jobs(hydra_cfg) if sweeping else 1
        if sweeping and parallel > 1:
            _pin_gpu(int(hydra_cfg.job.num))
        run = runs.Run(
            path=run_dir, config=run_config, overrides=overrides, parallel_jobs=parallel, resume=resume
        )
        with runs.locked(run_dir) if main else contextlib.nullcontext():
            if retry:
                _set_aside_failed_attempt(run_dir)
            return {"summary": registry.get(run_config.name).train(run)}
    except (TrainingInterrupted, KeyboardInterrupt):
        if sweeping:  # Ctrl-C stops the whole sweep: the jobs not started yet will not run
            with contextlib.suppress(OSError):
                why = f"the sweep was interrupted during job {hydra_cfg.job.num}"
                runs.atomic_write_text(sweep_dir / STOPPED_FILE, why)
            raise
        _single_run_failures.append(sys.exc_info()[1])  # type: ignore[arg-type]
    except Exception as exc:
        if not sweeping:
            _single_run_failures.append(exc)
        else:
            if not isinstance(exc, RunLockedError):  # a job another process trains is not ours to mark
                _record_failure(run_dir, int(hydra_cfg.job.num), exc)
            if (sweep_dir / FAIL_FAST_FILE).exists():  # the jobs not started yet will not run
                with contextlib.suppress(OSError):
                    why = f"the sweep stopped (fail-fast) after job {hydra_cfg.job.num} failed"
                    runs.atomic_write_text(sweep_dir / STOPPED_FILE, why)
        # keep going: the sweep's table reports the failure and the command exits non-zero
        return {"summary": run.summary() if run else {}, "error": runs.describe_error(exc)}
    return {"summary": {}, "error": "interrupted"}


def _recorded_failure(run_dir: Path) -> str | None:
    """The error of a job that failed (or diverged) in an earlier launch of its sweep, else None."""
    meta_path = run_dir / runs.META_FILE
    with contextlib.suppress(OSError, ValueError):
        meta = runs.read_json(meta_path)
        if meta.get("status") in ("failed", "diverged"):
            return str(meta.get("error") or meta["status"])
    return None


def _record_failure(run_dir: Path, number: int, exc: BaseException) -> None:
    """A failed sweep job says so at once and in its own directory: meta.json (status and error, where
    the training session did not record them yet) and error.txt (with the traceback)."""
    import traceback

    error = runs.describe_error(exc)
    print(f"job {number} failed: {error.splitlines()[0] if error else type(exc).__name__}", file=sys.stderr)
    with contextlib.suppress(OSError, ValueError):
        meta_path = run_dir / runs.META_FILE
        meta = runs.read_json(meta_path) if meta_path.exists() else {}
        if meta.get("status") not in ("failed", "diverged"):  # failed before its session started
            meta.update(status="failed", error=error, end_time=runs.now_iso())
            runs.atomic_write_json(meta_path, meta)
        details = "".join(traceback.format_exception(exc))
        runs.atomic_write_text(run_dir / ERROR_FILE, f"{error}\n\n{details}")


def _set_aside_failed_attempt(run_dir: Path) -> None:
    """Before a failed job runs again from scratch: move what the failed attempt wrote into
    ``attempts/<n>/`` and start the new meta.json with the list of earlier attempts."""
    meta = runs.read_json(run_dir / runs.META_FILE)
    attempts = run_dir / ATTEMPTS_DIR
    number = 1 + max((int(p.name) for p in attempts.glob("*") if p.name.isdigit()), default=0)
    target = attempts / str(number)
    target.mkdir(parents=True)
    keep = {runs.CONFIG_FILE, runs.OVERRIDES_FILE, runs.LOCK_FILE, ".hydra", ATTEMPTS_DIR, runs.META_FILE}
    for entry in sorted(run_dir.iterdir()):
        if entry.name not in keep:
            os.rename(entry, target / entry.name)
    os.rename(run_dir / runs.META_FILE, target / runs.META_FILE)  # last: until here it says "failed"
    earlier = meta.get("attempts") or []
    record = {key: meta.get(key) for key in ("status", "error", "start_time", "end_time")}
    runs.atomic_write_json(
        run_dir / runs.META_FILE, {"attempts": [*earlier, {"dir": f"{ATTEMPTS_DIR}/{number}", **record}]}
    )


def _has_initial_checkpoint(run_dir: Path) -> bool:
    checkpoints = run_dir / "checkpoints"
    return (checkpoints / "init").is_dir() or (checkpoints / "latest.json").is_file()


def _parallel_jobs(hydra_cfg: Any) -> int:
    """How many jobs of this sweep run at once on this machine (sets each job's CPU thread share).

    joblib and submitit_local run jobs side by side on this machine; SLURM (submitit_slurm) gives each
    job its own allocation, whose CPUs the job sees through its affinity mask.
    """
    launcher = (OmegaConf.select(hydra_cfg, "launcher._target_", default="") or "").lower()
    from fdlcli.engine.devices import cpu_count

    cpus = cpu_count()
    if "joblib" in launcher:
        n_jobs = OmegaConf.select(hydra_cfg, "launcher.n_jobs", default=-1) or -1
        return cpus if n_jobs < 0 else min(n_jobs, cpus)
    if "submitit" in launcher and "local" in launcher:
        return max(1, min(int(os.environ.get(SWEEP_JOBS_ENV) or cpus), cpus))
    return 1


def _share_gpus() -> None:
    """Tell the jobs of a local sweep which GPUs there are (the CLI process may count them safely)."""
    if SWEEP_GPUS_ENV in os.environ:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = [g.strip() for g in visible.split(",") if g.strip()]
    else:
        import torch

        gpus = [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if gpus:
        os.environ[SWEEP_GPUS_ENV] = ",".join(gpus)


def _pin_gpu(job_number: int) -> None:
    """One GPU per job in a local parallel sweep: job k sees GPU k mod #GPUs as its only GPU.

    CUDA reads CUDA_VISIBLE_DEVICES once, when the process first uses it, so a worker process that
    already ran a job keeps the GPU it was given then (still one GPU per concurrently running job).
    """
    gpus = [g for g in os.environ.get(SWEEP_GPUS_ENV, "").split(",") if g]
    if not gpus:
        return
    import torch

    if not torch.cuda.is_initialized():
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[job_number % len(gpus)]


def resume_sweep(sweep_dir: Path, fail_fast: bool = False, retry_failed: bool = False) -> list[JobResult]:
    """Launch an interrupted sweep again in its own directory with its own overrides and launcher.

    Hydra numbers the jobs the same way again; each job finds its directory: a completed job is
    reported as it was, an interrupted one resumes from its checkpoint, one never started starts now,
    a failed one is reported as it was or, with ``retry_failed``, runs again from scratch (its failed
    attempt moved into ``attempts/<n>/``). ``fail_fast`` applies to this launch only (a sweep that
    stopped at a failure resumes keeping going).
    """
    if not (sweep_dir / "multirun.yaml").is_file():
        raise RunDirError(f"{sweep_dir} is not a sweep directory (it has no multirun.yaml)")
    saved = OmegaConf.to_container(OmegaConf.load(sweep_dir / "multirun.yaml"), resolve=False)
    recorded = saved.get("hydra", {}).get("overrides", {}) if isinstance(saved, dict) else {}
    task = [str(o) for o in recorded.get("task") or []]
    hydra_overrides = [
        str(o)
        for o in recorded.get("hydra") or []
        if not str(o).startswith(("hydra.sweep.dir", "hydra.sweep.subdir", "hydra.mode"))
    ]
    experiment = next((o.split("=", 1)[1] for o in task if o.startswith("experiment=")), None)
    if experiment is None:
        raise RunDirError(f"{sweep_dir}/multirun.yaml names no experiment")
    user = [o for o in task if not o.startswith("experiment=")]
    os.environ[SWEEP_JOBS_ENV] = str(prevalidate(experiment, user, multirun=True))
    for marker in (
        STOPPED_FILE,
        FAIL_FAST_FILE,
        RETRY_FAILED_FILE,
    ):  # the jobs an earlier stop skipped run now
        with contextlib.suppress(FileNotFoundError):
            (sweep_dir / marker).unlink()
    if fail_fast:
        runs.atomic_write_text(sweep_dir / FAIL_FAST_FILE, "")
    if retry_failed:
        runs.atomic_write_text(sweep_dir / RETRY_FAILED_FILE, "")
    _share_gpus()
    placement = _sweep_placement(sweep_dir)
    all_overrides = [f"experiment={experiment}", *user, *hydra_overrides, *placement]
    return _run_hydra(all_overrides, True, sweep_dir)


def resume(run_dir: Path, overrides: Sequence[str]) -> dict[str, Any]:
    """Continue an interrupted run in its own directory (no Hydra needed: the config is saved)."""
    opened = config_module.open_run(run_dir)
    run_dir, run_config = opened.path, opened.config
    if overrides:
        run_config = config_module.apply_overrides(run_config, overrides)
    if distributed.env_world_size() == 1 and run_config.trainer.devices > 1:
        distributed.launch_local(run_config.trainer.devices, ["train", "--resume", str(run_dir), *overrides])
        return runs.Run(path=run_dir, config=run_config).summary()
    return _resume_rank(run_dir, run_config, overrides)


def _resume_rank(run_dir: Path, run_config: Any, overrides: Sequence[str]) -> dict[str, Any]:
    distributed.init_from_env()
    main = distributed.is_main()
    try:
        # the overrides reach config.yaml only once the checkpoint has been restored (Loop.restore)
        run = runs.Run(
            path=run_dir,
            config=run_config,
            resume=True,
            overrides=list(overrides),
            pending_overrides=list(overrides),
        )
        with runs.locked(run_dir) if main else contextlib.nullcontext():
            return registry.get(run_config.name).train(run)
    finally:
        distributed.shutdown()


def evaluate(run_dir: Path, checkpoint: str, split: str) -> dict[str, float]:
    run = config_module.open_run(run_dir)
    return registry.get(run.config.name).evaluate(run, checkpoint, split)
