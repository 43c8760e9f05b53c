"""Chapter 8: the Differentiable Neural Computer on the copy task (``dnc-copy``) and on bAbI (``dnc-babi``).

``dnc-copy`` is the book's visualization variant: a series of 4 sequences of 5 random binary vectors;
each sequence is followed by a delimiter and 5 blank steps during which the DNC must reproduce it. With
only 10 memory slots for 20 vectors, a feed-forward controller and one read head, the DNC has to free
what it has read and reuse it; ``artifacts/weightings.png`` (the book's figure 8-9) shows how, after
training, from the write and read weightings, the gates and the usage over one series.

``dnc-babi`` trains one model jointly on the 20 bAbI tasks (fdlcli/data/babi.py: the book's
preprocessing, a loss only at the answer steps). The book's (companion's) model: LSTM controller of 256
units, memory 256 x 64, 4 read heads, RMSProp lr 1e-4 momentum 0.9, about 500,000 iterations. ``fdl eval``
prints the per-task test error beside the DNC paper's mean errors (Graves et al. 2016, Extended Data
Table 1, mean of 20 runs) with pass/fail at 5%.

Both train for ``trainer.steps`` minibatches in one custom loop with the usual session: checkpoints every
``trainer.eval_every`` steps (and on Ctrl-C/SIGTERM), the best one by validation error, exact resume.
A copy minibatch is drawn from an RNG seeded by (seed, step); the bAbI story order of an epoch is a
function of (seed, epoch), so a resumed run sees exactly the minibatches an uninterrupted one would.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.config import DataConfig, RunConfig, TrainerConfig
from fdlcli.data.babi import Babi, BabiDataConfig, BabiSplit, load_babi
from fdlcli.engine.checkpoint import CheckpointManager
from fdlcli.engine.devices import configure_threads, resolve_device
from fdlcli.engine.optim import build_optimizer
from fdlcli.engine.seed import epoch_generator, rng_state, seed_everything
from fdlcli.engine.session import run_session
from fdlcli.models.dnc import DNC, DNCConfig
from fdlcli.registry import ExperimentSpec, register
from fdlcli.runs import Run

# DNC paper (Graves et al. 2016), Extended Data Table 1: mean test error (%) of 20 runs, bAbI en-10k
PAPER_MEAN_ERROR = {
    1: 9.0, 2: 39.2, 3: 39.6, 4: 0.4, 5: 1.5, 6: 6.9, 7: 9.8, 8: 5.5, 9: 7.7, 10: 9.6,
    11: 3.3, 12: 5.0, 13: 3.1, 14: 11.0, 15: 27.2, 16: 53.6, 17: 32.4, 18: 4.2, 19: 64.6, 20: 0.0,
}  # fmt: skip
PAPER_MEAN = 16.7  # mean over tasks (+- 7.6); 11.2 +- 5.4 failed tasks
TASK_NAMES = {
    1: "single supporting fact", 2: "two supporting facts", 3: "three supporting facts",
    4: "two argument relations", 5: "three argument relations", 6: "yes/no questions", 7: "counting",
    8: "lists/sets", 9: "simple negation", 10: "indefinite knowledge", 11: "basic coreference",
    12: "conjunction", 13: "compound coreference", 14: "time reasoning", 15: "basic deduction",
    16: "basic induction", 17: "positional reasoning", 18: "size reasoning", 19: "path finding",
    20: "agents motivations",
}  # fmt: skip
PASS_ERROR = 0.05  # a task fails if more than 5% of its test questions are answered wrong


@dataclass
class CopyDataConfig(DataConfig):
    name: str = "copy"  # generated on the fly: the copy task has no dataset
    hub_id: str = ""
    bits: int = 6  # width of each binary vector
    sequences: int = 4  # sequences per series
    length: int = 5  # vectors per sequence
    batch_size: int = 32
    eval_size: int = 1000  # series in the fixed evaluation set


@dataclass
class DNCTrainerConfig(TrainerConfig):
    steps: int = 10000  # minibatches to train (the unit of this loop; trainer.epochs is not used)
    eval_every: int = 500  # steps between validation, checkpoint and a progress line
    monitor: str = "val/error"
    monitor_mode: str = "min"
    histograms: bool = False

    def check(self) -> str | None:
        if self.steps <= 0 or self.eval_every <= 0:
            return f"trainer.steps={self.steps} and trainer.eval_every={self.eval_every} must be positive"
        return None


# --------------------------------------------------------------------------------------------------
# The two tasks: batches, loss and evaluation.


class SequenceTask(ABC):
    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.config, self.device = config, device

    @abstractmethod
    def build_model(self) -> DNC: ...

    @abstractmethod
    def loss(self, model: DNC, step: int) -> torch.Tensor:
        """The training loss of minibatch ``step`` (a function of the seed and the step only)."""

    @abstractmethod
    def evaluate(self, model: DNC, split: str) -> dict[str, float]:
        """Metrics of a split, without its prefix; must include ``error``."""

    def finish(self, model: DNC, run: Run) -> None:  # noqa: B027 (optional hook)
        """Figures at the end of training (none by default)."""


def copy_series(cfg: CopyDataConfig, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(inputs [b, T, bits+1], targets [b, T, bits], mask [b, T]) of ``batch`` series: each sequence is
    ``length`` vectors, a delimiter step (the extra channel), then ``length`` blank steps to recall on."""
    bits, n, seqs = cfg.bits, cfg.length, cfg.sequences
    vectors = torch.randint(0, 2, (batch, seqs, n, bits), generator=generator).float()
    segment = 2 * n + 1
    inputs = torch.zeros(batch, seqs, segment, bits + 1)
    targets = torch.zeros(batch, seqs, segment, bits)
    mask = torch.zeros(batch, seqs, segment)
    inputs[:, :, :n, :bits] = vectors
    inputs[:, :, n, bits] = 1.0  # the delimiter: "now write it back"
    targets[:, :, n + 1 :] = vectors
    mask[:, :, n + 1 :] = 1.0
    steps = seqs * segment
    return inputs.view(batch, steps, -1), targets.view(batch, steps, -1), mask.view(batch, steps)


class CopyTask(SequenceTask):
    @property
    def data(self) -> CopyDataConfig:
        return self.config.data

    def build_model(self) -> DNC:
        return DNC(self.data.bits + 1, self.data.bits, self.config.model)

    def loss(self, model: DNC, step: int) -> torch.Tensor:
        generator = epoch_generator(self.config.seed, step)
        inputs, targets, mask = (
            t.to(self.device) for t in copy_series(self.data, self.data.batch_size, generator)
        )
        logits, _ = model(inputs)
        per_bit = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=2)
        return (per_bit * mask).sum() / mask.sum()  # bits of cross-entropy per recalled vector

    def eval_set(self, split: str) -> tuple[torch.Tensor, ...]:
        # fixed series, disjoint in seed space from the training stream (seed * 1_000_003 + step)
        offset = {"val": 1, "test": 2, "train": 3}[split]
        generator = torch.Generator().manual_seed(10**12 + 97 * self.config.seed + offset)
        return copy_series(self.data, self.data.eval_size, generator)

    @torch.no_grad()
    def evaluate(self, model: DNC, split: str) -> dict[str, float]:
        inputs, targets, mask = self.eval_set(split)
        wrong_bits = torch.zeros(len(inputs))
        cost = 0.0
        for lo in range(0, len(inputs), 250):
            x, y, m = (t[lo : lo + 250].to(self.device) for t in (inputs, targets, mask))
            logits, _ = model(x)
            per_bit = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(dim=2)
            cost += float((per_bit * m).sum())
            wrong = ((logits > 0).float() != y).float().sum(dim=2) * m
            wrong_bits[lo : lo + 250] = wrong.sum(dim=1).cpu()
        total_bits = float(mask.sum()) * self.data.bits
        return {
            "cost": cost / float(mask.sum()),
            "error": float(wrong_bits.sum()) / total_bits,  # fraction of recalled bits wrong
            "series_error": float((wrong_bits > 0).float().mean()),  # series with any wrong bit
        }

    def finish(self, model: DNC, run: Run) -> None:
        from fdlcli.analysis.dnc_plots import plot_weightings

        inputs, targets, _ = self.eval_set("test")
        with torch.no_grad():
            logits, trace = model(inputs[:1].to(self.device), record=True)
        assert trace is not None
        plot_weightings(
            inputs[0], targets[0], torch.sigmoid(logits[0]).cpu(), {k: v[0].cpu() for k, v in trace.items()},
            self.data.length, run.artifacts_dir / "weightings.png",
        )  # fmt: skip


class BabiTask(SequenceTask):
    def __init__(self, config: RunConfig, device: torch.device) -> None:
        super().__init__(config, device)
        self.babi: Babi = load_babi(config.data)
        self.batch_size = config.data.batch_size
        self.batches_per_epoch = math.ceil(len(self.babi.train) / self.batch_size)
        self._epoch: tuple[int, list[torch.Tensor]] | None = None

    def build_model(self) -> DNC:
        size = len(self.babi.lexicon)
        return DNC(size, size, self.config.model)

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """An epoch's minibatches of story indices: shuffled, then grouped by length within pools of
        50 minibatches (little padding, tasks still mixed), and the minibatches shuffled again."""
        if self._epoch is None or self._epoch[0] != epoch:
            generator = epoch_generator(self.config.seed, epoch)
            order = torch.randperm(len(self.babi.train), generator=generator)
            pool = 50 * self.batch_size
            batches: list[torch.Tensor] = []
            for chunk in order.split(pool):
                by_length = chunk[self.babi.train.lengths[chunk].argsort(stable=True)]
                batches.extend(by_length.split(self.batch_size))
            shuffle = torch.randperm(len(batches), generator=generator).tolist()
            self._epoch = (epoch, [batches[i] for i in shuffle])
        return self._epoch[1]

    def one_hot(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.one_hot(tokens.to(self.device), len(self.babi.lexicon)).float()

    def loss(self, model: DNC, step: int) -> torch.Tensor:
        epoch, index = divmod(step, self.batches_per_epoch)
        tokens, targets, _ = self.babi.train.batch(self.epoch_batches(epoch)[index])
        logits, _ = model(self.one_hot(tokens))
        return F.cross_entropy(logits.flatten(0, 1), targets.to(self.device).flatten(), ignore_index=-1)

    @torch.no_grad()
    def task_errors(self, model: DNC, split: BabiSplit) -> tuple[dict[int, float], float]:
        """Per-task question error and the cost per answer word; stories go by length (little padding)."""
        wrong = torch.zeros(len(split.question_task), dtype=torch.int64)
        cost, answers = 0.0, 0
        order = split.lengths.argsort()
        for stories in order.split(self.config.trainer.eval_batch_size):
            tokens, targets, questions = split.batch(stories)
            logits = model(self.one_hot(tokens))[0].cpu()
            at = targets >= 0
            cost += float(F.cross_entropy(logits[at], targets[at], reduction="sum"))
            answers += int(at.sum())
            wrong.index_add_(0, questions[at], (logits[at].argmax(dim=1) != targets[at]).long())
        errors = {}
        for task in self.babi.tasks:
            of_task = split.question_task == task
            errors[task] = float((wrong[of_task] > 0).float().mean()) if of_task.any() else float("nan")
        return errors, cost / max(1, answers)

    def evaluate(self, model: DNC, split: str) -> dict[str, float]:
        errors, cost = self.task_errors(model, getattr(self.babi, split))
        failed = sum(e > PASS_ERROR for e in errors.values())
        return {
            "cost": cost,
            "error": sum(errors.values()) / len(errors),  # mean over tasks, as the paper reports
            "failed_tasks": float(failed),
            **{f"error_task{t}": e for t, e in errors.items()},
        }


# --------------------------------------------------------------------------------------------------
# The training loop shared by both.


def train(run: Run, task_class: type[SequenceTask]) -> dict[str, Any]:
    cfg, trainer = run.config, run.config.trainer
    with run_session(run) as session:
        checkpoints, writer = session.checkpoints, session.writer
        seed_everything(cfg.seed)
        task = task_class(cfg, session.device)
        model = task.build_model().to(session.device)
        optimizer = build_optimizer(cfg.optim, model.parameters())
        state: dict[str, Any] = {
            "step": 0,
            "metrics_lines": 0,
            "train_seconds": 0.0,
            "best": None,
            "history": [],
            "window_sum": 0.0,  # a logging window cut by an interruption resumes where it was
            "window_steps": 0,
        }
        session.restore_or_start(model, state, optimizer)
        if isinstance(task, BabiTask):
            other = [f"qa{t} {s}" for t, s in task.babi.sources.items() if s != cfg.data.variant]
            session.message(
                f"bAbI tasks {task.babi.tasks}: {len(task.babi.train):,} training stories, lexicon "
                f"{len(task.babi.lexicon)} words; files {cfg.data.variant}"
                + (f" except {', '.join(other)}" if other else "")
            )
        progress = session.start_progress(trainer.steps, state["step"])
        window = torch.tensor(state["window_sum"], dtype=torch.float64)

        def save(reason: str) -> Any:
            session.check_finite_model(model, state["step"])
            state["window_sum"] = window.item()
            state["metrics_lines"] = writer.lines
            state["train_seconds"] = session.train_seconds
            payload = {**state, "optimizer": optimizer.state_dict(), "rng": rng_state(), "reason": reason}
            return checkpoints.save(model, payload, state["step"])

        model.train()
        while state["step"] < trainer.steps:
            loss = task.loss(model, state["step"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if trainer.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), trainer.grad_clip)
            optimizer.step()
            state["step"] += 1
            window += loss.detach().double().cpu()
            state["window_steps"] += 1
            step = state["step"]
            if step % trainer.log_every == 0 or step == trainer.steps:
                cost = window.item() / state["window_steps"]
                session.check_finite(cost, step)
                writer.log({"train/cost": cost}, step, 0)
                progress.update(step, cost)
                window.zero_()
                state["window_steps"] = 0
            session.stop_if_requested(save)
            if step % trainer.eval_every == 0 or step == trainer.steps:
                model.eval()
                val = {f"val/{k}": v for k, v in task.evaluate(model, "val").items()}
                model.train()
                writer.log(val, step, 0)
                state["history"].append({"step": step, **val})
                value = val[trainer.monitor]
                improved = state["best"] is None or (
                    value < state["best"] if trainer.monitor_mode == "min" else value > state["best"]
                )
                if improved:
                    state["best"] = value
                ref = save("eval")
                if improved:
                    checkpoints.mark_best(ref, trainer.monitor, value, 0)
                session.message(
                    f"step {step}/{trainer.steps}  val cost {val['val/cost']:.4f}  "
                    f"val error {val['val/error']:.4f}"
                    + (f"  failed tasks {val['val/failed_tasks']:.0f}" if "val/failed_tasks" in val else "")
                    + ("  *" if improved else "")
                )
        model.eval()
        test = {f"test/{k}": v for k, v in task.evaluate(model, "test").items()}
        task.finish(model, run)
        summary = {
            "experiment": cfg.name,
            "status": "completed",
            "steps": state["step"],
            "train_seconds": round(session.train_seconds, 2),
            "device": str(session.device),
            "final": {**(state["history"][-1] if state["history"] else {}), **test},
            "best": {"metric": trainer.monitor, "value": state["best"]},
            "history": state["history"],
        }
        run.write_summary(summary)
        session.message(f"done: test error {test['test/error']:.4f} (final model); run dir {run.path}")
        return summary


def evaluate(run: Run, which: str, split: str, task_class: type[SequenceTask]) -> dict[str, float]:
    """``fdl eval``: metrics of a checkpoint; for bAbI also the per-task table beside the paper's."""
    cfg = run.config
    device = resolve_device(cfg.trainer.device)
    configure_threads(cfg.trainer.threads)
    task = task_class(cfg, device)
    model = task.build_model().to(device)
    checkpoints = CheckpointManager(run.checkpoint_dir, cfg.name)
    ref = checkpoints.resolve(which)
    checkpoints.load_weights(model, ref, device)
    model.eval()
    metrics = {f"{split}/{k}": v for k, v in task.evaluate(model, split).items()}
    run.write_eval(which, ref.name, metrics, split)
    if isinstance(task, BabiTask):
        print_task_table(metrics, split, task.babi.tasks, ref.name, ref.step)
        return {k: v for k, v in metrics.items() if "error_task" not in k}  # the table shows those
    return metrics


def print_task_table(metrics: dict[str, float], split: str, tasks: list[int], name: str, step: int) -> None:
    """The per-task error table on stderr (stdout stays clean for ``fdl eval --json``)."""
    from rich.table import Table

    from fdlcli.terminal import make_console

    table = Table(title=f"bAbI {split} error per task ({name}, step {step}) beside the DNC paper's mean")
    for column in ("task", "ours %", "DNC paper mean %", "ours"):
        table.add_column(column, justify="right" if "%" in column else "left")
    for t in tasks:
        error = metrics[f"{split}/error_task{t}"]
        verdict = "pass" if error <= PASS_ERROR else "FAIL"
        table.add_row(f"{t}: {TASK_NAMES[t]}", f"{100 * error:.1f}", f"{PAPER_MEAN_ERROR[t]:.1f}", verdict)
    paper = sum(PAPER_MEAN_ERROR[t] for t in tasks) / len(tasks)
    table.add_row("mean", f"{100 * metrics[f'{split}/error']:.1f}", f"{paper:.1f}", "")
    table.add_row(
        "failed (> 5%)", f"{metrics[f'{split}/failed_tasks']:.0f}", "11.2" if len(tasks) == 20 else "", ""
    )
    make_console(stderr=True).print(table)


def _spec(name: str, task_class: type[SequenceTask], **fields: Any) -> ExperimentSpec:
    return register(
        ExperimentSpec(
            name=name,
            chapter=8,
            model_config=DNCConfig,
            trainer_config=DNCTrainerConfig,
            train=lambda run: train(run, task_class),
            evaluate=lambda run, which, split: evaluate(run, which, split, task_class),
            **fields,
        )
    )


_spec(
    "dnc-copy",
    CopyTask,
    dataset="generated binary sequences",
    book_result="copies 4 sequences of 5 vectors through 10 slots, freeing and reusing memory (figure 8-9)",
    description="DNC copy task, feed-forward controller, 10 memory slots, 1 read head",
    data_config=CopyDataConfig,
)
_spec(
    "dnc-babi",
    BabiTask,
    dataset="bAbI v1.2 en-10k (20 tasks jointly)",
    book_result="~500k iterations: good on most tasks, bad on path finding; DNC paper mean error 16.7%",
    description="DNC, LSTM controller, joint training on the 20 bAbI tasks, loss at answer steps",
    data_config=BabiDataConfig,
)
