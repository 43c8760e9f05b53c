"""Text corpora as one tensor of word ids, with a vocabulary sorted by frequency.

A corpus comes from a Hub dataset (or its local mirror: ``<dir>/<name>/<split>.parquet``) with one text
column, such as the PTB mirror (``ptb``, Hub ``ptb_text_only``, column ``sentence``) or text8 (Hub
``afmck/text8``), or from any plain-text file. Tokens are whitespace-separated words; the vocabulary
keeps the ``vocab_size`` most frequent ones (ties broken by first appearance) and maps the rest to
``<unk>``, as TensorFlow's word2vec tutorial did with ``UNK``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from fdlcli.config import DataConfig
from fdlcli.data.hub import load_split
from fdlcli.errors import DataUnavailableError

UNK = "<unk>"


@dataclass
class TextDataConfig(DataConfig):
    """The data keys of text experiments (``data.*``), on top of the common ones."""

    name: str = "ptb"
    hub_id: str = "ptb_text_only"
    split: str = "train"
    text_column: str = "sentence"  # the string column; a dataset with a single string column needs none
    file: str | None = None  # a plain-text file instead of a dataset (whitespace-tokenized)
    lowercase: bool = True  # the analogy and WordSim files are matched case-insensitively anyway
    vocab_size: int = 10000

    def check(self) -> str | None:
        if self.eval_limit:  # data_limits is declared for train_limit, which cuts the corpus
            return f"data.eval_limit={self.eval_limit}: a text corpus has no evaluation split to limit"
        return None


@dataclass
class Corpus:
    ids: torch.Tensor  # int64 [n_tokens]
    words: list[str]  # id -> word, most frequent first
    counts: torch.Tensor  # int64 [vocab] occurrences of each id in ids
    line_lengths: torch.Tensor  # int64 [lines]: words per line of the source, summing to len(ids)

    @property
    def sentence_ids(self) -> torch.Tensor:
        """int64 [n_tokens]: the source line of each word (PTB: one sentence a line)."""
        return torch.repeat_interleave(torch.arange(len(self.line_lengths)), self.line_lengths)

    @property
    def index(self) -> dict[str, int]:
        return {word: i for i, word in enumerate(self.words)}


def _lines(cfg: TextDataConfig) -> list[str]:
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise DataUnavailableError(f"data.file={cfg.file!r}: no such file")
        try:
            return path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            raise DataUnavailableError(f"cannot read {path}: {exc}") from None
    dataset = load_split(cfg.name, cfg.hub_id, cfg.split, cfg.dir)
    columns = [
        name for name, feature in dataset.features.items() if getattr(feature, "dtype", "") == "string"
    ]
    column = cfg.text_column if cfg.text_column in dataset.features else None
    if column is None and len(columns) == 1:
        column = columns[0]
    if column is None:
        raise DataUnavailableError(
            f"{cfg.name} has no text column {cfg.text_column!r}; set data.text_column to one of: "
            f"{', '.join(columns) or 'none'}"
        )
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    return table.column(column).to_pylist()


def load_corpus(cfg: TextDataConfig) -> Corpus:
    """Tokenize, count, keep the ``vocab_size`` most frequent words, and map the corpus to ids."""
    tokens: list[str] = []
    lengths: list[int] = []
    for line in _lines(cfg):
        words = (line.lower() if cfg.lowercase else line).split()
        tokens.extend(words)
        lengths.append(len(words))
    line_lengths = torch.tensor(lengths, dtype=torch.int64)
    if cfg.train_limit and cfg.train_limit < len(tokens):
        tokens = tokens[: cfg.train_limit]
        # the line that the cut falls in keeps only its first words
        ends = line_lengths.cumsum(0)
        last = int(torch.searchsorted(ends, cfg.train_limit))
        line_lengths = line_lengths[: last + 1].clone()
        line_lengths[last] -= int(ends[last]) - cfg.train_limit
    if len(tokens) < 2:
        raise DataUnavailableError("the corpus holds fewer than two words")
    counts = Counter(tokens)
    words = [word for word, _ in counts.most_common(cfg.vocab_size)]
    if len(counts) > cfg.vocab_size and UNK not in words:
        words[-1] = UNK  # the rarest kept word makes room for the unknown-word token
    index = {word: i for i, word in enumerate(words)}
    unk = index.get(UNK, -1)
    ids = torch.tensor([index.get(token, unk) for token in tokens], dtype=torch.int64)
    id_counts = torch.bincount(ids, minlength=len(words))
    # <unk> may now be more frequent than the words above it: re-sort so that id order is frequency order
    order = torch.argsort(id_counts, descending=True, stable=True)
    remap = torch.empty_like(order)
    remap[order] = torch.arange(len(order))
    return Corpus(
        ids=remap[ids],
        words=[words[i] for i in order.tolist()],
        counts=id_counts[order],
        line_lengths=line_lengths,
    )
