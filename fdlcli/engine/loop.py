"""The supervised training loop shared by the classification-style experiments.

An experiment family supplies a :class:`SupervisedTask` (model, data, loss, evaluation); :func:`fit`
does the rest: devices and precision, seeding, the whole-dataset-in-memory minibatch loop, logging,
atomic checkpoints, best-model tracking, graceful Ctrl-C/SIGTERM, NaN detection and exact resume.

Exact resume: the shuffling order of an epoch is a function of (seed, epoch); a checkpoint carries the
weights, optimizer state, torch RNG state (dropout), the position inside the epoch and the partial
sums of the running cost, and the number of metric records written so far. A resumed run therefore
replays the same minibatches with the same random numbers and logs the same values.

Data parallel (``trainer.devices=N`` or torchrun, see engine/distributed.py): every rank holds the
data and walks the same shuffled order; each global minibatch is split across the ranks and
DistributedDataParallel averages the gradients, weighted so that N ranks on batch B compute the
same update as one process on batch B (up to floating-point summation order). Rank 0 alone
evaluates, logs and checkpoints; the logged cost and any stop request are summed across ranks every
step, so all ranks take the same decisions.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.config import RunConfig
from fdlcli.data.tensors import Arrays, ArraySplits, minibatches
from fdlcli.engine import distributed
from fdlcli.engine.checkpoint import CheckpointManager, CheckpointRef
from fdlcli.engine.devices import autocast, configure_threads, resolve_device
from fdlcli.engine.optim import build_optimizer, has_schedule, scheduled_lr, set_lr
from fdlcli.engine.seed import epoch_generator, rng_state, seed_everything, set_rng_state
from fdlcli.engine.session import run_session
from fdlcli.errors import ConfigError
from fdlcli.registry import ExperimentSpec, register
from fdlcli.runs import Run


class SupervisedTask(ABC):
    """What an experiment family provides to :func:`fit`."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def load_data(self) -> ArraySplits:
        """All splits as tensors; called once, then moved to the training device."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Arrays) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: nn.Module, arrays: Arrays, batch_size: int) -> dict[str, float]:
        """Metrics of one split, without the split prefix (e.g. {"cost": .., "accuracy": ..})."""

    def epoch_order(self, order: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The training indices of an epoch, given a random permutation; consecutive ``batch_size`` slices
        are its minibatches. A task may regroup them (length bucketing), drawing only from ``generator``
        so that the order stays a function of (seed, epoch) and resume stays exact."""
        return order

    def after_epoch(self, model: nn.Module, epoch: int) -> str | None:
        """Optional text shown (and logged) after each epoch, e.g. the tagger's sample sentence."""
        return None


class ClassificationTask(SupervisedTask):
    """Cross-entropy training and cost/accuracy/error evaluation for (inputs, labels) arrays."""

    def loss(self, model: nn.Module, batch: Arrays) -> torch.Tensor:
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, arrays: Arrays, batch_size: int) -> dict[str, float]:
        was_training = model.training
        model.eval()
        cost = torch.zeros((), dtype=torch.float64, device=arrays[0].device)
        correct = torch.zeros((), dtype=torch.int64, device=arrays[0].device)
        for inputs, labels in minibatches(arrays, batch_size):
            logits = model(inputs).float()
            cost += F.cross_entropy(logits, labels, reduction="sum").double()
            correct += (logits.argmax(dim=1) == labels).sum()
        model.train(was_training)
        n = len(arrays[0])
        accuracy = correct.item() / n
        return {"cost": cost.item() / n, "accuracy": accuracy, "error": 1.0 - accuracy}


@dataclass
class TrainState:
    """Counters and partial sums a checkpoint carries besides weights, optimizer and RNG."""

    step: int = 0
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # next minibatch of the current epoch
    epoch_cost_sum: float = 0.0
    epoch_batches: int = 0
    window_cost_sum: float = 0.0  # minibatches since the last train/cost record
    window_batches: int = 0
    metrics_lines: int = 0
    best_value: float | None = None
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # per-epoch validation metrics

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any]) -> TrainState:
        known = {k: state[k] for k in cls.__dataclass_fields__ if k in state}
        return cls(**known)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if best is None:
        return True
    return value > best if mode == "max" else value < best


def fit(task: SupervisedTask, run: Run) -> dict[str, Any]:
    """Train (or resume) ``run`` to its configured number of epochs; return its summary."""
    cfg, trainer = run.config, run.config.trainer
    with run_session(run) as session:
        device, checkpoints, writer = session.device, session.checkpoints, session.writer
        seed_everything(cfg.seed)
        model = task.build_model()  # initialization draws from the freshly seeded global RNG
        data = task.load_data().to(device)
        model.to(device)
        optimizer = build_optimizer(cfg.optim, model.parameters(), scheduled=True)

        state = TrainState()
        if run.resume:
            latest = checkpoints.latest()
            if latest is not None:
                checkpoints.load_weights(model, latest, device)
                saved = checkpoints.load_state(latest)
                optimizer.load_state_dict(saved["optimizer"])
                set_rng_state(saved["rng"])
                state = TrainState.from_checkpoint(saved)
            elif (checkpoints.directory / "init" / "model.safetensors").exists():
                # killed before the first checkpoint: start over from the saved step-0 weights
                checkpoints.load_weights(model, checkpoints.resolve("init"), device)
            else:  # killed even before the step-0 weights were saved: the seeded model is that start
                checkpoints.save_initial(model)
            writer.rewind(state.metrics_lines, state.step)
        else:
            checkpoints.save_initial(model)
        session.seconds_before = state.train_seconds
        if trainer.compile:
            model.compile()  # in place: state-dict keys stay the same
        train_model: nn.Module = model
        parallel = distributed.active()
        if parallel:
            from torch.nn.parallel import DistributedDataParallel

            # dropout masks must differ between ranks (rank 0 keeps the checkpointed RNG stream)
            if distributed.rank():
                torch.manual_seed(cfg.seed + 1_000_003 * distributed.rank() + state.step)
            device_ids = [device] if device.type == "cuda" else None
            train_model = DistributedDataParallel(model, device_ids=device_ids)

        n_train = len(data.train[0])
        batch_size = cfg.data.batch_size
        steps_per_epoch = math.ceil(n_train / batch_size)
        total_steps = steps_per_epoch * trainer.epochs
        progress = session.start_progress(total_steps, state.step)
        window_sum = torch.tensor(state.window_cost_sum, dtype=torch.float64, device=device)

        def save(reason: str) -> CheckpointRef:
            session.check_finite(window_sum.item(), state.step)  # never checkpoint a diverged model
            session.check_finite_model(model, state.step)
            state.metrics_lines = writer.lines
            state.window_cost_sum = window_sum.item()  # a partial logging window resumes where it was
            state.train_seconds = session.train_seconds
            payload = {
                **asdict(state),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(),
                "reason": reason,
            }
            return checkpoints.save(model, payload, state.step)

        if state.epoch >= trainer.epochs:
            session.message(f"run already complete ({state.epoch}/{trainer.epochs} epochs); nothing to train")
        for epoch in range(state.epoch, trainer.epochs):
            generator = epoch_generator(cfg.seed, epoch)
            order = task.epoch_order(torch.randperm(n_train, generator=generator), batch_size, generator)
            order = order.to(device)
            model.train()
            for batch_index in range(state.batch_in_epoch, steps_per_epoch):
                indices = order[batch_index * batch_size : (batch_index + 1) * batch_size]
                local, weight = distributed.shard(indices)  # all of it in a single process
                batch = tuple(array[local] for array in data.train)
                with autocast(device, trainer.precision):
                    loss = task.loss(train_model, batch)
                optimizer.zero_grad(set_to_none=True)
                (loss * weight if parallel else loss).backward()
                if trainer.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)
                set_lr(optimizer, scheduled_lr(cfg.optim, state.step, total_steps))
                optimizer.step()
                state.step += 1
                state.batch_in_epoch = batch_index + 1
                if parallel:
                    share = loss.detach().double() * weight / distributed.world_size()
                    _sync_step(session, window_sum, share)
                else:
                    window_sum += loss.detach().double()  # stays on the device: no host sync per step
                state.window_batches += 1
                last_in_epoch = batch_index + 1 == steps_per_epoch
                if state.step % trainer.log_every == 0 or last_in_epoch:
                    window_total = window_sum.item()
                    session.check_finite(window_total, state.step)
                    window_cost = window_total / state.window_batches
                    logged = {"train/cost": window_cost}
                    if has_schedule(cfg.optim):
                        logged["train/lr"] = optimizer.param_groups[0]["lr"]
                    writer.log(logged, state.step, epoch)
                    state.epoch_cost_sum += window_total
                    state.epoch_batches += state.window_batches
                    window_sum.zero_()
                    state.window_batches = 0
                    progress.update(state.step, window_cost, epoch, trainer.epochs)
                session.stop_if_requested(save)
                if (
                    trainer.checkpoint_every
                    and state.step % trainer.checkpoint_every == 0
                    and not last_in_epoch
                ):
                    save("periodic")

            # ---- end of epoch: validate, log, checkpoint, track the best model ----
            epoch_cost = state.epoch_cost_sum / max(1, state.epoch_batches)
            state.epoch, state.batch_in_epoch = epoch + 1, 0
            state.epoch_cost_sum, state.epoch_batches = 0.0, 0
            val = task.evaluate(model, data.val, trainer.eval_batch_size) if distributed.is_main() else None
            val = distributed.broadcast_object(val)
            metrics = {"train/epoch_cost": epoch_cost, **{f"val/{k}": v for k, v in val.items()}}
            writer.log(metrics, state.step, state.epoch)
            if trainer.histograms:
                writer.histograms(model.named_parameters(), state.step)
            state.history.append({"epoch": state.epoch, "step": state.step, **metrics})
            monitored = metrics.get(trainer.monitor)
            if monitored is None:
                raise ConfigError(
                    f"trainer.monitor={trainer.monitor!r} is not a logged metric; "
                    f"choose from: {', '.join(metrics)}"
                )
            improved = _is_better(monitored, state.best_value, trainer.monitor_mode)
            if improved:
                state.best_value = monitored
            ref = save("epoch")
            if improved:
                checkpoints.mark_best(ref, trainer.monitor, monitored, state.epoch)
            if distributed.is_main():
                run.write_summary(_summary(run, state, final=None, best_test=None, status="running"))
            session.message(
                f"epoch {state.epoch}/{trainer.epochs}  train cost {epoch_cost:.4f}  "
                + "  ".join(f"val {k} {v:.4f}" for k, v in val.items())
                + ("  *" if improved else "")
            )
            note = task.after_epoch(model, state.epoch) if distributed.is_main() else None
            if note:
                session.message(note)

        # ---- end of training: test the final and the best model ----
        if not distributed.is_main():
            return {}
        final = {**state.history[-1]} if state.history else {}
        test = task.evaluate(model, data.test, trainer.eval_batch_size)
        final.update({f"test/{k}": v for k, v in test.items()})
        best_test = None
        if checkpoints.best_info() is not None:
            checkpoints.load_weights(model, checkpoints.resolve("best"), device)
            best = task.evaluate(model, data.test, trainer.eval_batch_size)
            best_test = {f"test/{k}": v for k, v in best.items()}
        state.train_seconds = session.train_seconds
        summary = _summary(run, state, final=final, best_test=best_test, status="completed")
        run.write_summary(summary)
        # the test counterpart of the monitored metric (accuracy for classifiers, cost for autoencoders)
        shown = "test/" + trainer.monitor.split("/", 1)[-1]
        shown = shown if shown in final else "test/accuracy"
        session.message(
            f"done: test {shown[5:]} {final.get(shown, float('nan')):.4f} (final model)"
            + (
                f", {best_test[shown]:.4f} (best by {trainer.monitor})"
                if best_test and shown in best_test
                else ""
            )
            + f"; run dir {run.path}"
        )
        return summary


def _sync_step(session: Any, window_sum: torch.Tensor, contribution: torch.Tensor) -> None:
    """Data parallel: add the global minibatch cost to the window and share any stop request."""
    requested = 1.0 if session.stop.requested else 0.0
    synced = torch.stack([contribution, contribution.new_tensor(requested)])
    distributed.sum_across_ranks(synced)
    window_sum += synced[0]
    if synced[1].item() > 0 and not session.stop.requested:
        session.stop.requested = "a stop request on another rank"


def _summary(
    run: Run, state: TrainState, final: dict[str, Any] | None, best_test: dict[str, float] | None, status: str
) -> dict[str, Any]:
    trainer = run.config.trainer
    best_epoch = None
    if state.best_value is not None:
        best_epoch = next((h for h in state.history if h.get(trainer.monitor) == state.best_value), None)
    summary: dict[str, Any] = {
        "experiment": run.config.name,
        "status": status,
        "epochs": state.epoch,
        "steps": state.step,
        "train_seconds": round(state.train_seconds, 2),
        "final": final or (state.history[-1] if state.history else {}),
        "best": {
            "metric": trainer.monitor,
            "value": state.best_value,
            **(best_epoch or {}),
            **(best_test or {}),
        },
        "history": state.history,
    }
    return summary


def register_supervised(task_class: type[SupervisedTask], **spec_fields: Any) -> ExperimentSpec:
    """Register an experiment trained by :func:`fit` with ``task_class``."""
    return register(
        ExperimentSpec(
            train=lambda run: fit(task_class(run.config), run),
            evaluate=lambda run, which, split: evaluate_checkpoint(task_class(run.config), run, which, split),
            task_class=task_class,
            **spec_fields,
        )
    )


def evaluate_checkpoint(task: SupervisedTask, run: Run, which: str, split: str) -> dict[str, float]:
    """Metrics of one split under a saved checkpoint (``fdl eval``)."""
    cfg = run.config
    device = resolve_device(cfg.trainer.device)
    configure_threads(cfg.trainer.threads)
    checkpoints = CheckpointManager(run.checkpoint_dir, cfg.name)
    ref = checkpoints.resolve(which)
    model = task.build_model().to(device)
    checkpoints.load_weights(model, ref, device)
    data = task.load_data().to(device)
    arrays = {"train": data.train, "val": data.val, "test": data.test}[split]
    metrics = {
        f"{split}/{k}": v for k, v in task.evaluate(model, arrays, cfg.trainer.eval_batch_size).items()
    }
    run.write_eval(which, ref.name, metrics, split)
    return metrics
