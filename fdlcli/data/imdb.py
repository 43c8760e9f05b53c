"""IMDB movie reviews as padded tensors of word ids (chapter 7's sentiment LSTM).

The mirror (``imdb/{train,test}.parquet``, Hub ``stanfordnlp/imdb``) holds 25,000 labelled reviews per
split, stored as a block of negative reviews then a block of positive ones; both splits are permuted once
with a fixed seed (so the validation head and ``eval_limit`` slices hold both classes), then the first
``val_size`` training reviews become the validation set. Reviews are lower-cased, ``<br />`` tags
removed, and split into words (with inner apostrophes) and ``!``/``?``; the vocabulary is the
``vocab_size - 2`` most frequent words of the training reviews (validation excluded) after ``<pad>`` (0)
and ``<unk>`` (1). A review keeps its first ``max_len`` tokens (the book's ``pad_sequences``) and is padded
with 0 at the end, so its length is the number of non-zero ids: the model packs on that.

Tokenizing 50,000 reviews takes about 20 s (only the reviews that ``train_limit``/``eval_limit`` keep are
tokenized, and the vocabulary comes from those training reviews); the tensors are cached under
``$FDL_CACHE_DIR``, keyed by the source files and every setting above.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass

import torch
from safetensors.torch import load_file, save_file

from fdlcli.config import DataConfig
from fdlcli.data.hub import load_split, mirror_file, mirror_root
from fdlcli.data.tensors import ArraySplits, cache_dir
from fdlcli.errors import DataUnavailableError
from fdlcli.runs import atomic_write_bytes

PAD, UNK = "<pad>", "<unk>"
TOKENIZER_VERSION = 2  # part of the cache key: bump when tokenize() changes
SHUFFLE_SEED = 1234  # the fixed permutation of the class-sorted splits
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)*|[!?]")


@dataclass
class ImdbDataConfig(DataConfig):
    name: str = "imdb"
    hub_id: str = "stanfordnlp/imdb"
    batch_size: int = 32
    val_size: int = 2500  # reviews cut from the (permuted) training split
    vocab_size: int = 30000  # including <pad> and <unk>
    max_len: int = 500  # tokens kept per review (the first ones)
    bucket: int = 50  # batches per length-sorted group (0 = plain random batches)

    def check(self) -> str | None:
        if self.vocab_size < 3:
            return f"data.vocab_size={self.vocab_size}: it must be at least 3 (<pad>, <unk> and a word)"
        if self.bucket < 0:
            return f"data.bucket={self.bucket}: it must not be negative"
        if self.max_len < 1:
            return f"data.max_len={self.max_len}: it must be positive"
        return None


def tokenize(text: str) -> list[str]:
    return _WORD.findall(_BREAK.sub(" ", text.lower()))


def encode(tokens: list[list[str]], index: dict[str, int], max_len: int) -> torch.Tensor:
    """[reviews, max_len] int32 ids, the first max_len tokens of each, 0-padded at the end."""
    out = torch.zeros(len(tokens), max_len, dtype=torch.int32)
    for row, words in enumerate(tokens):
        ids = [index.get(w, 1) for w in words[:max_len]]
        if ids:
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int32)
    return out


def _reviews(cfg: ImdbDataConfig, split: str) -> tuple[list[str], torch.Tensor]:
    dataset = load_split(cfg.name, cfg.hub_id, split, cfg.dir)
    if "text" not in dataset.features or "label" not in dataset.features:
        raise DataUnavailableError(f"{cfg.name} ({split}) lacks the columns 'text' and 'label'")
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    texts = table.column("text").to_pylist()
    labels = torch.tensor(table.column("label").to_pylist(), dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SHUFFLE_SEED))
    return [texts[i] for i in order.tolist()], labels[order]


def _identity(cfg: ImdbDataConfig) -> str:
    root = mirror_root(cfg.dir)
    settings = (cfg.vocab_size, cfg.max_len, cfg.val_size, cfg.train_limit, cfg.eval_limit)
    parts = [f"v{TOKENIZER_VERSION}", *map(str, settings)]
    for split in ("train", "test"):
        if root is None:
            parts.append(f"hub:{cfg.hub_id}:{split}")
        else:
            source = mirror_file(root, cfg.name, split)
            stat = source.stat() if source.is_file() else None
            parts.append(f"{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}" if stat else str(source))
    return "|".join(parts)


def _build(cfg: ImdbDataConfig) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tokenize only the reviews the limits keep (a quick run does not pay for all 50,000)."""
    train_text, train_y = _reviews(cfg, "train")
    test_text, test_y = _reviews(cfg, "test")
    if cfg.val_size >= len(train_y):
        raise DataUnavailableError(f"data.val_size={cfg.val_size} leaves no training reviews")
    n_val, n_train = cfg.val_size, cfg.train_limit or len(train_y)
    n_eval = cfg.eval_limit or len(train_y) + len(test_y)
    val_text, val_y = train_text[:n_val][:n_eval], train_y[:n_val][:n_eval]
    train_text, train_y = train_text[n_val:][:n_train], train_y[n_val:][:n_train]
    test_text, test_y = test_text[:n_eval], test_y[:n_eval]
    train_tokens = [tokenize(t) for t in train_text]
    counts = Counter(w for words in train_tokens for w in words)
    words = [PAD, UNK] + [w for w, _ in counts.most_common(cfg.vocab_size - 2)]
    index = {w: i for i, w in enumerate(words)}
    tensors = {
        "train_x": encode(train_tokens, index, cfg.max_len),
        "train_y": train_y,
        "val_x": encode([tokenize(t) for t in val_text], index, cfg.max_len),
        "val_y": val_y,
        "test_x": encode([tokenize(t) for t in test_text], index, cfg.max_len),
        "test_y": test_y,
    }
    return tensors, words


def load_reviews(cfg: ImdbDataConfig) -> tuple[ArraySplits, list[str]]:
    """Train/validation/test (ids [N, max_len] int32, labels [N]) and the vocabulary (id -> word)."""
    identity = _identity(cfg)
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    cached = cache_dir() / f"imdb-{key}.safetensors"
    tensors, words = None, None
    if cached.is_file():
        try:
            tensors = load_file(str(cached))
            with open(cached.with_suffix(".vocab.json")) as handle:
                words = json.load(handle)
        except Exception:
            tensors = None  # a damaged cache file is rebuilt below
    if tensors is None or words is None:
        tensors, words = _build(cfg)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(cached.with_suffix(".vocab.json"), json.dumps(words).encode())
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            save_file(tensors, str(tmp), metadata={"source": identity})
            atomic_write_bytes(cached, tmp.read_bytes())
            tmp.unlink()
        except OSError:
            pass  # an unwritable cache only costs time
    train = (tensors["train_x"], tensors["train_y"])
    val = (tensors["val_x"], tensors["val_y"])
    test = (tensors["test_x"], tensors["test_y"])
    return ArraySplits(train, val, test), words
