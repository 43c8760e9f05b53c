"""Epochs of minibatches over whole-dataset tensors: the task shape of the classification-style experiments.

An experiment family supplies the model, the data as tensors, the loss and the metrics of a split; the
order of each epoch is a function of (seed, epoch) (``epoch_generator``), so a resumed run replays the same
minibatches. The data live on the training device and minibatches are index gathers: no per-sample Python.
Data parallel: each rank takes its share of every global minibatch (``distributed.shard``).
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.data.tensors import Arrays, ArraySplits, minibatches
from fdlcli.engine import distributed
from fdlcli.engine.optim import build_optimizer
from fdlcli.engine.seed import epoch_generator
from fdlcli.engine.task import FEATURES, StepOutput, Task


class SupervisedTask(Task):
    """What a supervised experiment family provides; :class:`Task`'s methods are built from these."""

    unit = "epochs"
    supports = frozenset(FEATURES)
    test_checkpoints = ("final", "best")

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def load_data(self) -> ArraySplits:
        """All splits as tensors; called once, then moved to the training device."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Arrays) -> torch.Tensor: ...

    @abstractmethod
    def metrics(self, model: nn.Module, arrays: Arrays, batch_size: int) -> dict[str, float]:
        """Metrics of one split's arrays, without the split prefix (e.g. {"cost": .., "accuracy": ..})."""

    def epoch_order(self, order: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """The training indices of an epoch, given a random permutation; consecutive ``batch_size`` slices
        are its minibatches. A task may regroup them (length bucketing), drawing only from ``generator``
        so that the order stays a function of (seed, epoch) and resume stays exact."""
        return order

    def after_epoch(self, model: nn.Module, epoch: int) -> str | None:
        """Optional text shown (and logged) after each epoch, e.g. the tagger's sample sentence."""
        return None

    # ---- the Task protocol ---------------------------------------------------------------------------

    def setup(self) -> None:
        self.model = self.build_model()  # initialization draws from the freshly seeded global RNG
        self.data = self.load_data().to(self.device)
        self.model.to(self.device)
        self.optimizer = build_optimizer(self.config.optim, self.model.parameters(), scheduled=True)
        self.batch_size = self.config.data.batch_size
        self.n_train = len(self.data.train[0])
        self.order = torch.empty(0, dtype=torch.int64)

    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    def total_steps(self) -> int:
        return self.steps_per_epoch() * self.config.trainer.epochs

    def start_epoch(self, epoch: int) -> int:
        generator = epoch_generator(self.config.seed, epoch)
        order = torch.randperm(self.n_train, generator=generator)
        self.order = self.epoch_order(order, self.batch_size, generator).to(self.device)
        return self.steps_per_epoch()

    def train_step(self, step: int, index: int) -> StepOutput:
        indices = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        local, weight = distributed.shard(indices)  # all of it in a single process
        batch = tuple(array[local] for array in self.data.train)
        model = self.train_model if self.train_model is not None else self.model
        return StepOutput(loss=self.loss(model, batch), scale=weight)

    def evaluate(self, split: str) -> dict[str, float]:
        arrays = {"train": self.data.train, "val": self.data.val, "test": self.data.test}[split]
        return self.metrics(self.model, arrays, self.config.trainer.eval_batch_size)

    def after_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        note = self.after_epoch(self.model, int(metrics.get("epoch", 0)))
        if note:
            self.message(note)


class ClassificationTask(SupervisedTask):
    """Cross-entropy training and cost/accuracy/error evaluation for (inputs, labels) arrays."""

    def loss(self, model: nn.Module, batch: Arrays) -> torch.Tensor:
        inputs, labels = batch
        return F.cross_entropy(model(inputs), labels)

    @torch.no_grad()
    def metrics(self, model: nn.Module, arrays: Arrays, batch_size: int) -> dict[str, float]:
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
