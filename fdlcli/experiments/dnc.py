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

Both are tasks of the engine's loop (fdlcli/engine/loop.py) in steps: ``trainer.steps`` minibatches,
an evaluation and a checkpoint every ``trainer.eval_every`` steps, the best checkpoint by
``trainer.monitor`` (val/error), bf16 autocast (``trainer.precision=bf16``) and ``trainer.compile`` (of
one DNC time step). A copy minibatch is drawn from an RNG seeded by (seed, step); the bAbI story order of
an epoch is a function of (seed, epoch), so a resumed run sees exactly the minibatches an uninterrupted
one would.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from fdlcli.config import DataConfig, TrainerConfig
from fdlcli.data.babi import Babi, BabiDataConfig, BabiSplit, load_babi
from fdlcli.engine.checkpoint import CheckpointRef
from fdlcli.engine.devices import available_memory
from fdlcli.engine.optim import build_optimizer
from fdlcli.engine.seed import epoch_generator
from fdlcli.engine.task import StepOutput, Task
from fdlcli.models.dnc import DNC, DNCConfig
from fdlcli.models.dnc_native import NativeUnavailable
from fdlcli.registry import ExperimentSpec, register

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
    length: int = 5  # vectors per sequence (the longest, with min_length)
    # 0: every sequence has `length` vectors; else each minibatch draws its length from min_length..length
    # and the validation / test series spread evenly over those lengths (the NTM paper's copy task)
    min_length: int = 0
    batch_size: int = 32
    eval_size: int = 1000  # series in the fixed evaluation set
    # lengths beyond training at which the test also counts the bit errors per series (generalization)
    test_lengths: list[int] = field(default_factory=list)
    length_eval_size: int = 100  # series per test length

    def check(self) -> str | None:
        if min(self.bits, self.sequences, self.length, self.batch_size, self.eval_size) <= 0:
            return "data.bits, sequences, length, batch_size and eval_size must be positive"
        if not 0 <= self.min_length <= self.length:
            return f"data.min_length={self.min_length} must be in [0, data.length={self.length}]"
        if any(n <= 0 for n in self.test_lengths) or (self.test_lengths and self.length_eval_size <= 0):
            return f"data.test_lengths={self.test_lengths} and data.length_eval_size must be positive"
        return None

    def lengths(self) -> list[int]:
        """The sequence lengths of training (and of the validation and test series)."""
        return list(range(self.min_length, self.length + 1)) if self.min_length else [self.length]


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


@dataclass
class CopyTrainerConfig(DNCTrainerConfig):
    # stop once val/bit_errors (wrong bits per series) is below this, as the NTM paper trains; 0 = never
    stop_bit_errors: float = 0.0

    def check(self) -> str | None:
        if self.stop_bit_errors < 0:
            return f"trainer.stop_bit_errors={self.stop_bit_errors} must be >= 0"
        return super().check()


# --------------------------------------------------------------------------------------------------
# The tasks: batches, loss and evaluation; the engine's loop does the rest.


class SequenceTask(Task):
    """``trainer.steps`` minibatches of sequences through a sequence model (a DNC, an NTM, an LSTM:
    ``forward(inputs, record)`` -> (logits, trace) and ``compile_step()``); evaluations every
    ``trainer.eval_every`` steps report ``error`` (the monitored metric picks the best checkpoint); the
    final model is tested at the end."""

    unit = "steps"
    supports = frozenset({"precision", "compile", "schedule", "checkpoint_every"})
    test_checkpoints = ("final",)
    model: Any

    @abstractmethod
    def build_model(self) -> torch.nn.Module: ...

    @abstractmethod
    def loss(self, step: int) -> torch.Tensor:
        """The training loss of minibatch ``step`` (a function of the seed and the step only)."""

    def load_data(self) -> None:
        """Data the task keeps (none for a task that generates its minibatches)."""

    def setup(self) -> None:
        # The allocation weighting's products of usages (and the gradients through them) reach denormal
        # floats, which x86 CPUs compute far slower; flushing them to zero changes nothing above 1e-38
        # (a process-wide switch, as in sentiment-lstm; benchmarks/dnc_step.py measures the DNC step with it).
        torch.set_flush_denormal(True)
        self.load_data()
        self.model = self.build_model().to(self.device)
        # fused: Adam's update in one pass over the parameters (dnc-babi's 683k: 0.47 ms a step instead of
        # 3.6, measured; 2% of a training step at the native kernel's speed)
        self.optimizer = build_optimizer(
            self.config.optim, self.model.parameters(), scheduled=True, fused=True
        )

    def compile(self) -> None:
        self.model.compile_step()

    def total_steps(self) -> int:
        return self.config.trainer.steps

    def train_step(self, step: int, index: int) -> StepOutput:
        return StepOutput(loss=self.loss(step))


def copy_series(
    cfg: CopyDataConfig, batch: int, generator: torch.Generator, length: int | None = None
) -> tuple[torch.Tensor, ...]:
    """(inputs [b, T, bits+1], targets [b, T, bits], mask [b, T]) of ``batch`` series: each sequence is
    ``length`` (default: ``cfg.length``) vectors, a delimiter step (the extra channel), then ``length``
    blank steps to recall on."""
    bits, n, seqs = cfg.bits, length or cfg.length, cfg.sequences
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
    """The copy task for any sequence model (``model_class(bits + 1, bits, config.model)``): the book's
    series of fixed-length sequences (``dnc-copy``) or the NTM paper's single sequences of random length
    (``data=copy-ntm``, with the bit errors per series at longer ``data.test_lengths``)."""

    model_class: ClassVar[type[torch.nn.Module]] = DNC

    @property
    def data(self) -> CopyDataConfig:
        return self.config.data

    def setup(self) -> None:
        super().setup()
        self.val_bit_errors = float("inf")  # the last validation's, for trainer.stop_bit_errors

    def build_model(self) -> torch.nn.Module:
        return self.model_class(self.data.bits + 1, self.data.bits, self.config.model)

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        lengths = self.data.lengths()
        span = f"{lengths[0]}-{lengths[-1]}" if len(lengths) > 1 else str(lengths[0])
        return f"{type(self.model).__name__}, {params:,} parameters; sequences of {span} vectors"

    def loss(self, step: int) -> torch.Tensor:
        generator = epoch_generator(self.config.seed, step)
        length = None
        if self.data.min_length:  # one length per minibatch: no padding, no masked steps
            length = int(torch.randint(self.data.min_length, self.data.length + 1, (1,), generator=generator))
        inputs, targets, mask = (
            t.to(self.device) for t in copy_series(self.data, self.data.batch_size, generator, length)
        )
        logits, _ = self.model(inputs)
        per_bit = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=2)
        return (per_bit * mask).sum() / mask.sum()  # bits of cross-entropy per recalled vector

    def eval_set(self, split: str) -> list[tuple[torch.Tensor, ...]]:
        """The fixed series of ``split``, one (inputs, targets, mask) group per length, ``eval_size`` in
        all spread evenly over the training lengths."""
        # fixed series, disjoint in seed space from the training stream (seed * 1_000_003 + step)
        offset = {"val": 1, "test": 2, "train": 3}[split]
        generator = torch.Generator().manual_seed(10**12 + 97 * self.config.seed + offset)
        lengths = self.data.lengths()
        share, extra = divmod(self.data.eval_size, len(lengths))
        counts = [share + (i < extra) for i in range(len(lengths))]
        return [
            copy_series(self.data, n, generator, length)
            for length, n in zip(lengths, counts, strict=True)
            if n
        ]

    def length_set(self, length: int) -> tuple[torch.Tensor, ...]:
        """``data.length_eval_size`` fixed test series of ``length`` vectors (generalization)."""
        generator = torch.Generator().manual_seed(10**12 + 97 * self.config.seed + 7919 * length + 4)
        return copy_series(self.data, self.data.length_eval_size, generator, length)

    def wrong_bits(self, series: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, float]:
        """Wrong recalled bits per series [b], and the summed cross-entropy over the recalled vectors."""
        inputs, targets, mask = series
        wrong_bits = torch.zeros(len(inputs))
        cost, chunk = 0.0, self.config.trainer.eval_batch_size
        for lo in range(0, len(inputs), chunk):
            x, y, m = (t[lo : lo + chunk].to(self.device) for t in (inputs, targets, mask))
            logits, _ = self.model(x)
            per_bit = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(dim=2)
            cost += float((per_bit * m).sum())
            wrong = ((logits > 0).float() != y).float().sum(dim=2) * m
            wrong_bits[lo : lo + chunk] = wrong.sum(dim=1).cpu()
        return wrong_bits, cost

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, float]:
        groups = self.eval_set(split)
        counted = [self.wrong_bits(series) for series in groups]
        wrong_bits = torch.cat([wrong for wrong, _ in counted])
        recalled = sum(float(mask.sum()) for _, _, mask in groups)
        metrics = {
            "cost": sum(cost for _, cost in counted) / recalled,
            "error": float(wrong_bits.sum()) / (recalled * self.data.bits),  # fraction of recalled bits wrong
            "series_error": float((wrong_bits > 0).float().mean()),  # series with any wrong bit
            "bit_errors": float(wrong_bits.mean()),  # wrong bits per series (the NTM paper's measure)
        }
        if split == "val":
            self.val_bit_errors = metrics["bit_errors"]
        if split == "test":
            for length in self.data.test_lengths:
                metrics[f"bit_errors_len{length}"] = float(self.wrong_bits(self.length_set(length))[0].mean())
        return metrics

    def finished(self) -> bool:
        stop = self.config.trainer.stop_bit_errors
        return bool(stop) and self.val_bit_errors < stop

    def state_dict(self) -> dict[str, Any]:
        return {"val_bit_errors": self.val_bit_errors} if self.config.trainer.stop_bit_errors else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.val_bit_errors = float(state.get("val_bit_errors", float("inf")))

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        return {k: v for k, v in metrics.items() if "_len" not in k}  # show_evaluation has those

    def show_evaluation(self, metrics: dict[str, float], split: str, checkpoint: CheckpointRef) -> None:
        lengths = [n for n in self.data.test_lengths if f"{split}/bit_errors_len{n}" in metrics]
        if not lengths:
            return
        from rich.table import Table

        from fdlcli.terminal import make_console

        table = Table(title=f"bit errors per series by length ({checkpoint.name}, step {checkpoint.step})")
        table.add_column("length", justify="right")
        table.add_column("bit errors per series", justify="right")
        for n in lengths:
            table.add_row(str(n), f"{metrics[f'{split}/bit_errors_len{n}']:.3f}")
        make_console(stderr=True).print(table)

    def finish(self, artifacts: Path) -> dict[str, Any]:
        self.plot_memory(artifacts)
        return {}

    def plot_memory(self, artifacts: Path) -> None:
        """The memory at work on one test series after training (the book's figure 8-9)."""
        from fdlcli.analysis.dnc_plots import plot_weightings

        inputs, targets, _ = self.eval_set("test")[0]
        with torch.no_grad():
            logits, trace = self.model(inputs[:1].to(self.device), record=True)
        assert trace is not None
        plot_weightings(
            inputs[0], targets[0], torch.sigmoid(logits[0]).cpu(), {k: v[0].cpu() for k, v in trace.items()},
            self.data.length, artifacts / "weightings.png",
        )  # fmt: skip


class BabiTask(SequenceTask):
    supports = SequenceTask.supports | {"data_limits"}  # data.train_limit/eval_limit: stories per task

    def load_data(self) -> None:
        self.babi: Babi = load_babi(self.config.data)
        self.batch_size = self.config.data.batch_size
        self.batches_per_epoch = math.ceil(len(self.babi.train) / self.batch_size)
        self._epoch: tuple[int, list[torch.Tensor]] | None = None

    def setup(self) -> None:
        super().setup()
        self.check_memory()

    def check_memory(self) -> None:
        """Warn before training when the longest stories' minibatch would keep more for its backward than
        the machine has: that minibatch comes within an epoch, and the kernel's OOM killer stops a run
        without a word (at the paper's memory, 256 x 64, it needs ~15 GB: docs/chapter8.md)."""
        available = available_memory()
        if available is None or self.device.type != "cpu":
            return
        longest = int(self.babi.train.lengths.max())
        try:
            need = self.model.training_memory_bytes(longest, self.batch_size)
        except NativeUnavailable:
            return
        if need > available:
            gb, model = 2**30, self.config.model
            self.message(
                f"warning: a minibatch of the longest stories ({self.batch_size} x {longest} tokens) keeps "
                f"~{need / gb:.0f} GB for its backward at memory {model.memory_slots} x {model.word_size}, "
                f"and this machine has {available / gb:.0f} GB available: the run may be killed for "
                "memory; lower data.batch_size or model.memory_slots"
            )

    def describe(self) -> str:
        variant = self.config.data.variant
        other = [f"qa{t} {s}" for t, s in self.babi.sources.items() if s != variant]
        return (
            f"bAbI tasks {self.babi.tasks}: {len(self.babi.train):,} training stories, lexicon "
            f"{len(self.babi.lexicon)} words; files {variant}"
            + (f" except {', '.join(other)}" if other else "")
        )

    def build_model(self) -> torch.nn.Module:
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

    def loss(self, step: int) -> torch.Tensor:
        """Cross-entropy at the answer steps, from token ids (the DNC looks its input projection up) and
        the logits of those steps alone."""
        epoch, index = divmod(step, self.batches_per_epoch)
        tokens, targets, _ = self.babi.train.batch(self.epoch_batches(epoch)[index])
        at = targets >= 0
        logits, _ = self.model(tokens.to(self.device), at=at)
        return F.cross_entropy(logits, targets[at].to(self.device))

    @torch.no_grad()
    def task_errors(self, split: BabiSplit) -> tuple[dict[int, float], float]:
        """Per-task question error and the cost per answer word; stories go by length (little padding)."""
        wrong = torch.zeros(len(split.question_task), dtype=torch.int64)
        cost, answers = 0.0, 0
        order = split.lengths.argsort()
        for stories in order.split(self.config.trainer.eval_batch_size):
            tokens, targets, questions = split.batch(stories)
            at = targets >= 0
            logits = self.model(tokens.to(self.device), at=at)[0].cpu()
            cost += float(F.cross_entropy(logits, targets[at], reduction="sum"))
            answers += int(at.sum())
            wrong.index_add_(0, questions[at], (logits.argmax(dim=1) != targets[at]).long())
        errors = {}
        for task in self.babi.tasks:
            of_task = split.question_task == task
            errors[task] = float((wrong[of_task] > 0).float().mean()) if of_task.any() else float("nan")
        return errors, cost / max(1, answers)

    def evaluate(self, split: str) -> dict[str, float]:
        errors, cost = self.task_errors(getattr(self.babi, split))
        failed = sum(e > PASS_ERROR for e in errors.values())
        return {
            "cost": cost,
            "error": sum(errors.values()) / len(errors),  # mean over tasks, as the paper reports
            "failed_tasks": float(failed),
            **{f"error_task{t}": e for t, e in errors.items()},
        }

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        return {
            k: v for k, v in metrics.items() if "error_task" not in k
        }  # show_evaluation's table has those

    def show_evaluation(self, metrics: dict[str, float], split: str, checkpoint: CheckpointRef) -> None:
        print_task_table(metrics, split, self.babi.tasks, checkpoint.name, checkpoint.step)


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


def _spec(name: str, task: type[SequenceTask], **fields: Any) -> ExperimentSpec:
    return register(
        ExperimentSpec(
            name=name,
            chapter=8,
            model_config=DNCConfig,
            model_group="dnc",
            task=task,
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
    trainer_config=CopyTrainerConfig,
)
_spec(
    "dnc-babi",
    BabiTask,
    dataset="bAbI v1.2 en-10k (20 tasks jointly)",
    book_result="~500k iterations: good on most tasks, bad on path finding; DNC paper mean error 16.7%",
    description="DNC, LSTM controller, joint training on the 20 bAbI tasks, loss at answer steps",
    data_config=BabiDataConfig,
    trainer_config=DNCTrainerConfig,
)
