"""Chapter 7: sentiment analysis of IMDB reviews with an LSTM (``sentiment-lstm``).

Book (TF 1.x, tflearn's IMDB data): vocabulary of 30,000 words, reviews padded or cut to 500 tokens;
embedding 512 -> LSTM 512 with dropout 0.5 on its inputs and outputs -> the last output -> a batch-normalized
layer -> 2 classes; Adam lr 1e-3, batch 32. Book: about 86% test accuracy at the best point, then the model
overfits.

Padding costs (almost) nothing: training batches are length-bucketed (``data.bucket``: every group of that
many batches is sorted by review length before it is cut into batches, and the batches are then shuffled)
and each batch is cut to its longest review. The last output is the LSTM's output at each review's last
real token (``model.sequence=cut``; the LSTM is causal, so the padding after a review does not change it,
whereas a padded batch run without lengths would read the state after the padding).
``model.sequence=packed`` feeds ``pack_padded_sequence`` instead (no step on padding at all; meant for
CUDA, where cuDNN runs packed batches natively, not measured here; on this CPU PyTorch's packed LSTM
backward was ~20x slower than the cut one);
``full`` runs every batch over all ``max_len`` positions (the naive baseline of
``benchmarks/lstm_batching.py``, with ``data.bucket=0``). The batch-normalized layer is Linear(hidden, 2)
followed by BatchNorm1d(2), whose output is the logits of the softmax cross-entropy (no squashing
nonlinearity in between).

CPU default: ``model.embed=128 model.hidden=128`` (the book's 512/512 cost ~12x more per step here, 4.8 s
against 0.39 s in ``benchmarks/lstm_batching.py``; ``model=lstm-book`` restores it). Vocabulary and length
cap are the book's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fdlcli.data.imdb import ImdbDataConfig, encode, load_reviews, tokenize
from fdlcli.data.tensors import ArraySplits
from fdlcli.engine.devices import LSTM
from fdlcli.engine.supervised import ClassificationTask
from fdlcli.registry import ExperimentSpec, register
from fdlcli.runs import Run, atomic_write_text

VOCAB_FILE = "vocab.json"
LABELS = ("negative", "positive")


@dataclass
class SentimentConfig:
    embed: int = 128
    hidden: int = 128
    dropout: float = 0.5  # on the LSTM's inputs (the embeddings) and on its last output
    sequence: str = "cut"  # cut (to the batch's longest review) | packed | full (all max_len positions)

    def check(self) -> str | None:
        if self.embed < 1 or self.hidden < 1:
            return "model.embed and model.hidden must be positive"
        if not 0.0 <= self.dropout < 1.0:
            return f"model.dropout={self.dropout}: it must lie in [0, 1)"
        if self.sequence not in SEQUENCE_MODES:
            return f"model.sequence={self.sequence!r}; choose from: {', '.join(SEQUENCE_MODES)}"
        return None


SEQUENCE_MODES = ("cut", "packed", "full")


class SentimentLSTM(nn.Module):
    """ids [B, T] (0-padded at the end) -> logits [B, 2]."""

    def __init__(self, vocab: int, cfg: SentimentConfig) -> None:
        super().__init__()
        self.sequence = cfg.sequence
        self.embed = nn.Embedding(vocab, cfg.embed, padding_idx=0)
        self.drop = nn.Dropout(cfg.dropout)
        self.lstm = LSTM(cfg.embed, cfg.hidden, batch_first=True)
        self.out = nn.Linear(cfg.hidden, 2)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lengths = (ids != 0).sum(dim=1).clamp_min(1)  # an empty review reads one padding token
        if self.sequence != "full":
            ids = ids[:, : int(lengths.max())]  # one host sync per batch
        x = self.drop(self.embed(ids))
        if self.sequence == "packed":
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h_n, _) = self.lstm(packed)  # h_n: the output at each review's last real step
            last = h_n[-1]
        else:
            outputs, _ = self.lstm(x)
            last = outputs[torch.arange(len(ids), device=ids.device), lengths - 1]
        return self.norm(self.out(self.drop(last)))


class SentimentClassification(ClassificationTask):
    """(ids, labels) batches; cross-entropy and accuracy come from ClassificationTask."""

    def __init__(self, config: Any, device: Any = "cpu", run: Run | None = None) -> None:
        super().__init__(config, device, run)
        self._loaded: tuple[ArraySplits, list[str]] | None = None

    def _load(self) -> tuple[ArraySplits, list[str]]:
        if self._loaded is None:
            self._loaded = load_reviews(self.config.data)
        return self._loaded

    def build_model(self) -> nn.Module:
        # Only the last output gets a gradient, so the one flowing back through time decays into denormal
        # floats, which x86 CPUs handle ~10x slower (measured: 3.2 s vs 0.27 s per backward at 128x300).
        # Flushing them to zero changes nothing above 1e-38 (a process-wide switch; a no-op on GPUs).
        torch.set_flush_denormal(True)
        _, words = self._load()
        if self.run is not None:  # the vocabulary travels with the run, for `fdl sentiment`
            atomic_write_text(self.run.artifacts_dir / VOCAB_FILE, json.dumps(words))
        return SentimentLSTM(len(words), self.config.model)

    def load_data(self) -> ArraySplits:
        return self._load()[0]

    def epoch_order(self, order: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Length bucketing: sort each group of ``data.bucket`` batches by length, then shuffle batches."""
        group = self.config.data.bucket * batch_size
        if not group:
            return order
        lengths = (self._load()[0].train[0] != 0).sum(dim=1)
        key = torch.div(torch.arange(len(order)), group, rounding_mode="floor") * (lengths.max() + 1)
        order = order[torch.argsort(key + lengths[order], stable=True)]
        full = len(order) // batch_size * batch_size
        batches = order[:full].view(-1, batch_size)
        batches = batches[torch.randperm(len(batches), generator=generator)]
        return torch.cat([batches.flatten(), order[full:]])  # a last partial batch stays last


def load_classifier(run: Run, checkpoint: str = "best") -> tuple[SentimentLSTM, dict[str, int]]:
    """A trained model and its word index, from the run alone (no dataset needed)."""
    from fdlcli.engine.loop import load_weights
    from fdlcli.errors import RunDirError

    path = run.path / "artifacts" / VOCAB_FILE
    if not path.is_file():
        raise RunDirError(f"{run.path} has no artifacts/{VOCAB_FILE} (was it trained by sentiment-lstm?)")
    words = json.loads(path.read_text())
    model = SentimentLSTM(len(words), run.config.model)
    load_weights(run, checkpoint, model)
    return model.eval(), {w: i for i, w in enumerate(words)}


@torch.no_grad()
def classify(model: SentimentLSTM, index: dict[str, int], texts: list[str], max_len: int) -> torch.Tensor:
    """P(positive) of each text."""
    ids = encode([tokenize(t) for t in texts], index, max_len)
    return torch.softmax(model.eval()(ids), dim=1)[:, 1]


register(
    ExperimentSpec(
        name="sentiment-lstm",
        chapter=7,
        dataset="IMDB",
        book_result="about 86% test accuracy at the best epoch, then overfitting",
        description="embedding -> LSTM (length-bucketed) -> last output -> BN layer -> 2 classes, Adam",
        model_config=SentimentConfig,
        model_group="lstm",
        data_config=ImdbDataConfig,
        task=SentimentClassification,
    )
)
