"""A training session: everything around a training loop that every experiment needs.

``with run_session(run) as session:`` resolves the device and threads, opens the run's log, writes
``meta.json`` (and its final status: completed, interrupted, diverged or failed), gives the loop a
metrics writer, a checkpoint manager, a console progress display and a stop flag set by Ctrl-C or
SIGTERM. Custom loops (reinforcement learning, word2vec, ...) use it as :func:`fdlcli.engine.loop.fit`
does, so every experiment behaves the same on interruption, divergence and resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from fdlcli.engine import distributed
from fdlcli.engine.checkpoint import CheckpointManager, CheckpointRef, ReadOnlyCheckpoints
from fdlcli.engine.devices import configure_threads, keep_freed_memory, resolve_device
from fdlcli.engine.seed import set_rng_state
from fdlcli.engine.signals import StopFlag, graceful_stop
from fdlcli.engine.tracking import ConsoleProgress, MetricsWriter, NullWriter, log, setup_run_logging
from fdlcli.errors import TrainingDiverged, TrainingInterrupted
from fdlcli.runs import Run, now_iso, start_meta


@dataclass
class Session:
    run: Run
    device: torch.device
    threads: int
    writer: MetricsWriter
    checkpoints: CheckpointManager
    stop: StopFlag
    progress: ConsoleProgress | None = None
    seconds_before: float = 0.0  # training time of earlier processes (a resumed run)
    started: float = field(default_factory=time.monotonic)
    restored: bool = False  # set by the loop once a resumed run's checkpoint has loaded

    @property
    def train_seconds(self) -> float:
        return self.seconds_before + time.monotonic() - self.started

    def start_progress(
        self, total_steps: int, done_steps: int, unit: str = "step", value_name: str = "cost"
    ) -> ConsoleProgress:
        self.progress = ConsoleProgress(
            total_steps,
            done_steps,
            self.run.config.trainer.print_every_s,
            quiet=not distributed.is_main(),
            unit=unit,
            value_name=value_name,
        )
        return self.progress

    def message(self, text: str) -> None:
        if not distributed.is_main():  # data-parallel: rank 0 speaks for all ranks
            return
        if self.progress is not None:
            self.progress.message(text)
        else:
            print(text, flush=True)
            log.info(text)

    def restore_or_start(
        self,
        model: torch.nn.Module,
        state: dict[str, Any],
        optimizer: torch.optim.Optimizer | None = None,
    ) -> dict[str, Any] | None:
        """Resume from the latest checkpoint, or start fresh, for loops that keep their counters in a dict.

        On resume: the weights, the optimizer and torch RNG state (when saved), and the saved value of
        every key of ``state`` (updated in place); on a fresh start (or a resumed run killed before its
        first checkpoint) the step-0 weights are saved. The metrics log is rewound to the checkpoint
        and the training time of earlier processes carried over. Returns the saved trainer state, if any.
        """
        latest = self.checkpoints.latest() if self.run.resume else None
        saved = None
        if latest is not None:
            self.checkpoints.load_weights(model, latest, self.device)
            saved = self.checkpoints.load_state(latest)
            if optimizer is not None:
                optimizer.load_state_dict(saved["optimizer"])
            if "rng" in saved:
                set_rng_state(saved["rng"])
            state.update({key: saved[key] for key in state if key in saved})
        else:
            self.checkpoints.save_initial(model)
        if self.run.resume:
            self.writer.rewind(state["metrics_lines"], state["step"])
        self.seconds_before = state["train_seconds"]
        return saved

    def stop_if_requested(self, save: Callable[[str], CheckpointRef]) -> None:
        """After a Ctrl-C or SIGTERM: checkpoint with ``save`` and stop with a resume hint."""
        if self.stop.requested:
            ref = save(f"stopped by {self.stop.requested}")
            raise TrainingInterrupted(
                f"stopped by {self.stop.requested} at step {ref.step}; checkpoint {ref.name} saved; "
                f"resume with: fdl train --resume {self.run.path}"
            )

    def check_finite(self, value: float, step: int, what: str = "the training cost") -> None:
        if value != value or value in (float("inf"), float("-inf")):
            latest = self.checkpoints.latest()
            raise TrainingDiverged(
                f"{what} became {value} near step {step}; training stopped and the last good "
                f"checkpoint is kept ({latest.name if latest else 'the step-0 weights'})"
            )

    def check_finite_model(self, model: torch.nn.Module, step: int) -> None:
        """Call before saving: a checkpoint must never hold NaN or infinite weights."""
        with torch.no_grad():
            finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        if not finite:
            self.check_finite(float("nan"), step, what="a model weight")


@contextmanager
def run_session(run: Run) -> Iterator[Session]:
    trainer = run.config.trainer
    device = resolve_device(trainer.device)
    if distributed.active() and device.type == "cuda":  # one GPU per rank
        device = torch.device("cuda", distributed.local_rank())
        torch.cuda.set_device(device)
    threads = configure_threads(trainer.threads, max(run.parallel_jobs, distributed.local_world_size()))
    keep_freed_memory()
    if not distributed.is_main():
        # the other data-parallel ranks read checkpoints (resume) but write nothing into the run
        readonly = ReadOnlyCheckpoints(run.checkpoint_dir, run.config.name)
        with graceful_stop() as stop:  # a stop request reaches rank 0 through fit's per-step all-reduce
            yield Session(run, device, threads, NullWriter(run.path), readonly, stop)
        return
    handler = setup_run_logging(run.path)
    meta_before = run.read_meta() if run.resume else {}
    start_meta(run, str(device))
    run.update_meta(threads=threads, world_size=distributed.world_size())
    log.info(
        "%s %s on %s (%d threads)", "resuming" if run.resume else "starting", run.config.name, device, threads
    )
    writer = MetricsWriter(run.path)
    checkpoints = CheckpointManager(run.checkpoint_dir, run.config.name, trainer.keep_checkpoints)
    status, error = "failed", None
    session: Session | None = None
    try:
        with graceful_stop() as stop:
            session = Session(run, device, threads, writer, checkpoints, stop)
            # where the run lives, before it trains (not only when it ends): to watch it, or to resume it
            where = "resuming run dir" if run.resume else "run dir"
            session.message(f"{where} {run.path}  (tensorboard --logdir {run.path.parent})")
            yield session
        status = "completed"
        writer.record_run_hparams()  # for TensorBoard's HParams view of a sweep's jobs
    except TrainingDiverged as exc:
        status, error = "diverged", str(exc)
        raise
    except TrainingInterrupted as exc:
        status, error = "interrupted", str(exc)
        raise
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted twice: stopped without a new checkpoint"
        raise
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        if session is not None and session.progress is not None:
            session.progress.close()
        writer.close()
        seconds = round(session.train_seconds, 2) if session is not None else 0.0
        if run.resume and status == "failed" and not (session is not None and session.restored):
            # a resume refused before its checkpoint loaded (an override that changes the model's
            # shape, a damaged checkpoint) trained nothing: the run keeps the status it had
            run.refuse_resume(meta_before, error)
        else:
            run.update_meta(status=status, end_time=now_iso(), error=error, train_seconds=seconds)
        log.info("status %s%s", status, f": {error}" if error else "")
        log.removeHandler(handler)
        handler.close()
