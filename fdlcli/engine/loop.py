"""The one training loop: every experiment's :class:`~fdlcli.engine.task.Task` trains here.

The loop owns the bookkeeping (see engine/task.py for the split of work): seeding, the run session,
device, precision and compile, data parallelism, the update step of tasks that hand back a loss, the
training-cost logging window, evaluation and checkpoint timing, the best checkpoint by
``trainer.monitor``/``monitor_mode``, SIGTERM and the NaN stop, the one resume path and the summary.

Exact resume: a checkpoint carries the weights, the optimizer, the torch RNG state, the loop's counters
and partial sums (:class:`LoopState`: the position inside the epoch, the logging window, the number of
metric records written), the task's own state and, beside the latest checkpoint only, the task's large
arrays. A resumed run therefore replays the same steps with the same random numbers and logs the same
values.

Data parallel (``trainer.devices=N`` or torchrun, see engine/distributed.py; tasks that declare
``"devices"``): every rank builds the same task and walks the same steps; a task shards each global
minibatch (``distributed.shard``) and DistributedDataParallel averages the gradients. Rank 0 alone
evaluates, logs and checkpoints; the logged cost and any stop request are summed across ranks every step,
so all ranks take the same decisions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from fdlcli.engine import distributed
from fdlcli.engine.checkpoint import CheckpointManager, CheckpointRef
from fdlcli.engine.devices import autocast, bf16_is_slow, configure_threads, resolve_device
from fdlcli.engine.optim import has_schedule, scheduled_lr, set_lr
from fdlcli.engine.seed import rng_state, seed_everything, set_rng_state
from fdlcli.engine.session import Session, run_session
from fdlcli.engine.task import StepOutput, Task
from fdlcli.errors import ConfigError
from fdlcli.runs import Run


@dataclass
class LoopState:
    """Counters and partial sums a checkpoint carries besides weights, optimizer, RNG and the task's state."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # next step of the current epoch
    epoch_cost_sum: float = 0.0
    epoch_batches: float = 0.0
    window_cost_sum: float = 0.0  # steps since the last train/cost record
    window_batches: float = 0.0
    metrics_lines: int = 0
    best_value: float | None = None
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # one record per evaluation

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> LoopState:
        known = {k: state[k] for k in cls.__dataclass_fields__ if k in state}
        return cls(**known)


def is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


class _Loop:
    """One training run of one task; :func:`train` is its entry point."""

    def __init__(self, task_class: type[Task], run: Run, session: Session) -> None:
        self.run, self.session = run, session
        self.cfg, self.trainer = run.config, run.config.trainer
        seed_everything(self.cfg.seed)
        self.task = task = task_class(self.cfg, session.device, run)
        task._log = lambda metrics, step: self.session.writer.log(
            metrics, self.state.step if step is None else step, self.record_epoch
        )
        task._message = session.message
        self.state = LoopState()
        self.log_epoch = 0
        task.setup()
        self.parallel = distributed.active()
        self.precision = self.trainer.precision if "precision" in task.supports else "32"
        if self.precision == "bf16" and bf16_is_slow(session.device):
            session.message(
                "warning: trainer.precision=bf16 on a CPU without AVX-512: no fast bf16 kernels here, so "
                "training runs several times slower than with trainer.precision=32"
            )
        self.scheduled = "schedule" in task.supports
        self.window = torch.zeros((), dtype=torch.float64, device=session.device)

    @property
    def record_epoch(self) -> int:
        """The epoch field of metric records: the loop's epoch, or the task's own count (episodes)."""
        own = self.task.record_epoch()
        return self.log_epoch if own is None else own

    # ---- checkpoints ---------------------------------------------------------------------------------

    def restore(self) -> None:
        task, checkpoints, writer = self.task, self.session.checkpoints, self.session.writer
        latest = checkpoints.latest() if self.run.resume else None
        if latest is not None:
            checkpoints.load_weights(task.model, latest, self.session.device)
            saved = checkpoints.load_state(latest)
            if task.optimizer is not None and "optimizer" in saved:
                task.optimizer.load_state_dict(saved["optimizer"])
            if "rng" in saved:
                set_rng_state(saved["rng"])
            self.state = LoopState.from_checkpoint(saved)
            task.load_state_dict(saved.get("task", {}))
            arrays = checkpoints.load_arrays(latest)
            if arrays:
                task.load_arrays(arrays)
        elif self.run.resume and (checkpoints.directory / "init" / "model.safetensors").exists():
            # killed before the first checkpoint: start over from the saved step-0 weights
            checkpoints.load_weights(task.model, checkpoints.resolve("init"), self.session.device)
        else:  # a fresh run, or one killed even before its step-0 weights were saved
            checkpoints.save_initial(task.model)
        if self.run.resume:
            writer.rewind(self.state.metrics_lines, self.state.step)
            if distributed.is_main():
                self.run.save_resume_overrides()
            self.session.restored = True
        self.session.seconds_before = self.state.train_seconds
        self.window.fill_(self.state.window_cost_sum)

    def save(self, reason: str) -> CheckpointRef:
        state, task, session = self.state, self.task, self.session
        session.check_finite(self.window.item(), state.step)  # never checkpoint a diverged model
        session.check_finite_model(task.model, state.step)
        state.metrics_lines = session.writer.lines
        state.window_cost_sum = self.window.item()  # a partial logging window resumes where it was
        state.train_seconds = session.train_seconds
        payload: dict[str, Any] = {**asdict(state), "task": task.state_dict(), "rng": rng_state()}
        if task.optimizer is not None:
            payload["optimizer"] = task.optimizer.state_dict()
        payload["reason"] = reason
        arrays = task.save_arrays() if distributed.is_main() else {}
        return session.checkpoints.save(task.model, payload, state.step, arrays=arrays or None)

    # ---- one step ------------------------------------------------------------------------------------

    def step(self, index: int, total_steps: int) -> StepOutput:
        task, state, trainer = self.task, self.state, self.trainer
        with autocast(self.session.device, self.precision):
            out = task.train_step(state.step, index)
        if out.loss is not None:
            optimizer = task.optimizer
            assert optimizer is not None, "a task that returns a loss needs self.optimizer"
            optimizer.zero_grad(set_to_none=True)
            (out.loss * out.scale if self.parallel else out.loss).backward()
            if trainer.grad_clip:
                nn.utils.clip_grad_norm_(task.model.parameters(), trainer.grad_clip)
            if self.scheduled:
                set_lr(optimizer, scheduled_lr(self.cfg.optim, state.step, total_steps))
            optimizer.step()
        state.step += out.advance
        cost = out.cost if out.cost is not None else (out.loss.detach() if out.loss is not None else None)
        if cost is not None:
            # float64 from the start: a Python float (a compiled kernel's summed loss) keeps its precision
            cost = torch.as_tensor(cost, dtype=torch.float64).to(self.window.device)
            if self.parallel:
                self._sync(cost * out.scale / distributed.world_size())
            else:
                self.window += cost  # stays on the device: no host sync per step
            state.window_batches += out.weight
        return out

    def _sync(self, contribution: torch.Tensor) -> None:
        """Data parallel: add the global minibatch cost to the window and share any stop request."""
        stop = self.session.stop
        synced = torch.stack([contribution, contribution.new_tensor(1.0 if stop.requested else 0.0)])
        distributed.sum_across_ranks(synced)
        self.window += synced[0]
        if synced[1].item() > 0 and not stop.requested:
            stop.requested = "a stop request on another rank"

    def log_window(self, epoch: int | None) -> None:
        state = self.state
        if not state.window_batches:
            return
        total = self.window.item()
        self.session.check_finite(total, state.step)
        cost = total / state.window_batches
        logged = {"train/cost": cost, **self.task.window_metrics(cost)}
        if self.scheduled and has_schedule(self.cfg.optim) and self.task.optimizer is not None:
            logged["train/lr"] = self.task.optimizer.param_groups[0]["lr"]
        self.session.writer.log(logged, state.step, self.record_epoch)
        state.epoch_cost_sum += total
        state.epoch_batches += state.window_batches
        self.window.zero_()
        state.window_batches = 0
        epochs = self.trainer.epochs if epoch is not None else None
        self.session.progress.update(state.step, cost, epoch, epochs)  # type: ignore[union-attr]

    # ---- evaluation ----------------------------------------------------------------------------------

    def take_epoch_cost(self) -> dict[str, float]:
        """The mean cost of the epoch just ended as a record (epoch-based tasks), and a fresh sum."""
        state = self.state
        metrics: dict[str, float] = {}
        if self.task.unit == "epochs" and state.epoch_batches:
            metrics["train/epoch_cost"] = state.epoch_cost_sum / state.epoch_batches
        state.epoch_cost_sum, state.epoch_batches = 0.0, 0.0
        return metrics

    def validate(self, label: str) -> bool:
        """Evaluate on "val", log, checkpoint, track the best; returns whether it improved."""
        state, task, session, trainer = self.state, self.task, self.session, self.trainer
        metrics = self.take_epoch_cost()
        val = self._evaluate("val") if distributed.is_main() else None
        val = distributed.broadcast_object(val)
        metrics.update(val)
        if metrics:
            session.writer.log(metrics, state.step, self.record_epoch)
        if self.trainer.histograms:  # every task's weights, at every evaluation
            session.writer.histograms(task.model.named_parameters(), state.step)
        where = {"epoch": state.epoch} if task.unit == "epochs" else {}
        state.history.append({**where, "step": state.step, **metrics})
        improved = False
        if val and trainer.monitor:  # trainer.monitor=null: nothing is monitored, no best checkpoint
            monitored = metrics.get(trainer.monitor)
            if monitored is None:
                raise ConfigError(
                    f"trainer.monitor={trainer.monitor!r} is not a logged metric; "
                    f"choose from: {', '.join(metrics)}"
                )
            improved = is_better(monitored, state.best_value, trainer.monitor_mode)
            if improved:
                state.best_value = monitored
        ref = self.save(label)
        if improved:
            session.checkpoints.mark_best(ref, trainer.monitor, state.best_value, self.record_epoch)  # type: ignore[arg-type]
        if distributed.is_main():
            self.run.write_summary(self.summary(status="running"))
        return improved

    def _evaluate(self, split: str) -> dict[str, float]:
        was_training = self.task.model.training
        self.task.model.eval()
        # evaluation runs at the training precision (bf16 halves a CPU's evaluation time, as it does the
        # training step's; Lightning's precision plugins do the same)
        with torch.no_grad(), autocast(self.session.device, self.precision):
            metrics = self.task.evaluate(split)
        self.task.model.train(was_training)
        return {(k if "/" in k else f"{split}/{k}"): float(v) for k, v in metrics.items()}

    def summary(
        self, status: str, final: dict[str, Any] | None = None, best_test: dict | None = None
    ) -> dict:
        state, trainer, task = self.state, self.trainer, self.task
        best: dict[str, Any] = {"metric": trainer.monitor, "value": state.best_value}
        if state.best_value is not None:
            record = next((h for h in state.history if h.get(trainer.monitor) == state.best_value), None)
            best.update(record or {})
        best.update(best_test or {})
        summary: dict[str, Any] = {"experiment": self.cfg.name, "status": status}
        if task.unit == "epochs":
            summary["epochs"] = state.epoch
        summary.update(
            {
                "steps": state.step,
                "train_seconds": round(self.session.train_seconds, 2),
                **task.summary_fields(),
                "final": final or (state.history[-1] if state.history else {}),
                "best": best,
                "history": state.history,
            }
        )
        return summary

    # ---- the run ---------------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        task, state, session, trainer = self.task, self.state, self.session, self.trainer
        self.restore()
        session.writer.open_tensorboard()  # before the first step, not inside a timed logging window
        if "compile" in task.supports and trainer.compile:
            task.compile()
        task.train_model = task.model
        if self.parallel:
            from torch.nn.parallel import DistributedDataParallel

            # dropout masks must differ between ranks (rank 0 keeps the checkpointed RNG stream)
            if distributed.rank():
                torch.manual_seed(self.cfg.seed + 1_000_003 * distributed.rank() + state.step)
            device = session.device
            device_ids = [device] if device.type == "cuda" else None
            task.train_model = DistributedDataParallel(task.model, device_ids=device_ids)
        note = task.describe()
        if note:
            session.message(note)
        total = task.total_steps()
        session.start_progress(total, state.step, unit=task.step_name, value_name=task.progress_value)
        task.model.train()
        if task.unit == "epochs":
            self._epochs(total)
        else:
            self._steps(total)
        return self._end()

    def announce(self, heading: str, shown: list[str], improved: bool) -> None:
        """The console line of an evaluation (``*``: a new best), then the task's own after-evaluation."""
        self.session.message("  ".join([heading, *shown]) + ("  *" if improved else ""))
        if distributed.is_main():
            self.task.after_evaluation(self.state.step, self.state.history[-1])

    def _epochs(self, total: int) -> None:
        state, trainer, task, session = self.state, self.trainer, self.task, self.session
        if state.epoch >= trainer.epochs:
            session.message(f"run already complete ({state.epoch}/{trainer.epochs} epochs); nothing to train")
        # a task may declare fractional epochs (cnn-cifar10-fast's 9.9): its last pass is a partial one
        for epoch in range(state.epoch, math.ceil(trainer.epochs)):
            self.log_epoch = epoch
            steps = task.start_epoch(epoch)
            task.model.train()
            for index in range(state.batch_in_epoch, steps):
                self.step(index, total)
                state.batch_in_epoch = index + 1
                last = index + 1 == steps
                if task.log_due(state.step) or last:
                    self.log_window(epoch)
                session.stop_if_requested(self.save)
                if trainer.checkpoint_every and state.step % trainer.checkpoint_every == 0 and not last:
                    self.save("periodic")
            # ---- end of epoch: validate, log, checkpoint, track the best model ----
            epoch_cost = state.epoch_cost_sum / max(1.0, state.epoch_batches)
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            self.log_epoch = state.epoch
            progress = f"{min(state.epoch, trainer.epochs):g}/{trainer.epochs:g}"
            heading = f"epoch {progress}  train cost {epoch_cost:.4f}"
            if state.epoch % trainer.val_every_epochs and state.epoch < trainer.epochs:
                # trainer.val_every_epochs: no evaluation this epoch (time-to-accuracy runs test only at
                # the end); the epoch's cost is logged and a checkpoint written as at any epoch end
                session.writer.log(self.take_epoch_cost(), state.step, self.record_epoch)
                self.save("epoch")
                session.message(heading)
                continue
            improved = self.validate("epoch")
            # test/ records: a task that trains on every example evaluates on the test set (cnn-cifar10-fast)
            held_out = ("val/", "test/")
            val = {k: v for k, v in task.headline(state.history[-1]).items() if k.startswith(held_out)}
            shown = [f"{k.replace('/', ' ', 1)} {v:.4f}" for k, v in val.items()]
            self.announce(heading, shown, improved)

    def _steps(self, total: int) -> None:
        state, trainer, task, session = self.state, self.trainer, self.task, self.session
        while state.step < total and not task.finished():
            before = state.step
            self.step(state.step, total)
            end = state.step >= total or task.finished()
            if task.log_due(state.step) or end:
                self.log_window(None)
            if task.evaluation_due(before, state.step) or end:
                improved = self.validate("evaluation")
                headline = task.headline(state.history[-1])
                shown = [f"{k} {v:.4g}" for k, v in headline.items() if k != "step"]
                self.announce(f"{task.step_name} {state.step}/{total}", shown, improved)
            elif (
                trainer.checkpoint_every
                and state.step // trainer.checkpoint_every > before // trainer.checkpoint_every
            ):
                self.save("periodic")  # crossed, not hit: a step may advance the counter by more than one
            # a stop only after the evaluation this step is due: a resumed run starts past the step that
            # crossed eval_every and would never make it (seen as a flaky drqn-cartpole resume test)
            session.stop_if_requested(self.save)

    def _end(self) -> dict[str, Any]:
        state, task, session = self.state, self.task, self.session
        if not distributed.is_main():
            return {}
        final = {**state.history[-1]} if state.history else {}
        best_test = None
        checkpoints = session.checkpoints
        # a task without a validation split evaluates on test (cnn-cifar10-fast's data.val_size=0): the
        # last evaluation already holds the final weights' test metrics, logged; no second test pass
        tested = final.get("step") == state.step and any(k.startswith("test/") for k in final)
        if "final" in task.test_checkpoints and not tested:
            final.update(self._evaluate("test"))
        if "best" in task.test_checkpoints and checkpoints.best_info() is not None:
            checkpoints.load_weights(task.model, checkpoints.resolve("best"), session.device)
            best_test = self._evaluate("test")
            if "final" not in task.test_checkpoints:  # the best model is the run's result
                final.update(best_test)
        test = {k: v for k, v in final.items() if k.startswith("test/")}
        if test and not (tested and best_test is None):
            session.writer.log(test, state.step, self.record_epoch)
        extra = task.finish(self.run.artifacts_dir)
        summary = self.summary("completed", final=final, best_test=best_test)
        summary.update(extra)
        self.run.write_summary(summary)
        done = task.done_message(summary) or self._default_done(final, best_test)
        session.message(f"{done}; run dir {self.run.path}")
        return summary

    def _default_done(self, final: dict[str, Any], best_test: dict[str, float] | None) -> str:
        # the test counterpart of the monitored metric (accuracy for classifiers, cost for autoencoders)
        if not self.trainer.monitor:
            return "done"
        shown = "test/" + self.trainer.monitor.split("/", 1)[-1]
        if shown not in final:
            return "done"
        text = f"done: test {shown[5:]} {final[shown]:.4f} (final model)"
        if best_test and shown in best_test:
            text += f", {best_test[shown]:.4f} (best by {self.trainer.monitor})"
        return text


def train(task_class: type[Task], run: Run) -> dict[str, Any]:
    """Train (or resume) ``run`` with its experiment's task; return its summary."""
    with run_session(run) as session:
        loop = _Loop(task_class, run, session)
        try:
            return loop.fit()
        finally:
            loop.task.close()


def resolve_checkpoint(run: Run, which: str) -> CheckpointRef:
    """Checkpoint ``which`` (best, last, init, step-N) of a run."""
    return CheckpointManager(run.checkpoint_dir, run.config.name).resolve(which)


def load_weights(
    run: Run, which: str | CheckpointRef, module: nn.Module, device: torch.device | str = "cpu"
) -> CheckpointRef:
    """Load a checkpoint of ``run`` into ``module`` (inference commands and analyses that build their
    model without a task: ``fdl tag``, ``fdl translate``, the autoencoder's code analysis)."""
    checkpoints = CheckpointManager(run.checkpoint_dir, run.config.name)
    ref = checkpoints.resolve(which) if isinstance(which, str) else which
    checkpoints.load_weights(module, ref, device)
    return ref


def load_task(task_class: type[Task], run: Run, which: str) -> tuple[Task, CheckpointRef]:
    """A task rebuilt from a finished run's config with the weights of checkpoint ``which`` (analyses,
    ``fdl eval``, ``fdl play``)."""
    cfg = run.config
    device = resolve_device(cfg.trainer.device)
    configure_threads(cfg.trainer.threads)
    checkpoints = CheckpointManager(run.checkpoint_dir, cfg.name)
    ref = checkpoints.resolve(which)
    seed_everything(cfg.seed)
    task = task_class(cfg, device, run)
    task.setup()
    checkpoints.load_weights(task.model, ref, device)
    task.model.eval()
    return task, ref


def evaluate_checkpoint(task_class: type[Task], run: Run, which: str, split: str) -> dict[str, float]:
    """Metrics of one split under a saved checkpoint (``fdl eval``), all recorded in the run; returns
    the task's headline ones (what the command prints)."""
    task, ref = load_task(task_class, run, which)
    with torch.no_grad(), autocast(task.device, run.config.trainer.precision):
        metrics = task.evaluate(split)
    metrics = {(k if "/" in k else f"{split}/{k}"): float(v) for k, v in metrics.items()}
    run.write_eval(which, ref.name, metrics, split, info=task.metrics_info() or None)
    task.show_evaluation(metrics, split, ref)
    return task.headline(metrics)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)
