"""Chapter 7: the feed-forward part-of-speech tagger on CoNLL-2000 (``pos-tagger``).

Book (TF 1.x): a "neural n-gram" tagger. A word is tagged from the embeddings of itself and the n - 1
words before it (n = 3), concatenated -> 512 -> 256 -> 44 tags, batch normalization in the hidden layers,
Adam lr 1e-3, batch 100. The embeddings are the 300-d Google News word2vec vectors, fixed; words missing
from them get a random uniform(-0.25, 0.25) vector, and digits are mapped to '#' first. After every epoch
it tags "The woman, after grabbing her umbrella, went to the bank to deposit her cash." Book: over 96%
accuracy within 100 epochs.

Embeddings (``model.embeddings``): the path of any word2vec-format file, text or binary, optionally
gzipped: the export of an fdl skipgram run (``runs/skipgram/RUN/artifacts/embeddings.txt``) or the Google
News vectors. A word is looked up as written, then (``model.lowercase_fallback``) lower-cased; a word found
in neither form gets its own uniform(-0.25, 0.25) vector drawn from a generator seeded by
(``model.unknown_seed``, CRC-32 of the word), so the same word always gets the same vector: in training,
in ``fdl eval`` and in ``fdl tag``. ``model.embeddings=null`` starts from such random vectors for every
word (``model.dim`` of them) and learns them. ``model.freeze`` (default: fixed with a file, learned without)
overrides either way: ``model.freeze=false`` fine-tunes the vectors of a file.

Beyond the book, all off by default: ``model.after`` adds the words after the tagged one to its window (a
centered window), ``model.dropout`` drops out window vectors in training, and ``model.embed_lr`` gives
fine-tuned vectors a fraction of the learning rate (see WindowTagger).

The table holds every word of the training and test splits (the test words' vectors come from the file or
the seeded draw, never from test labels) and is saved with the weights, so a run tags text without the
embeddings file; its word list goes to ``artifacts/vocab.json``.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fdlcli.data.conll import (
    ConllDataConfig,
    TaggedSentences,
    build_vocabulary,
    load_tagged,
    normalize,
    tokenize,
    windows,
)
from fdlcli.data.tensors import ArraySplits
from fdlcli.data.word2vec_format import FORMATS, read_word2vec
from fdlcli.engine.supervised import ClassificationTask
from fdlcli.errors import DataUnavailableError
from fdlcli.registry import ExperimentSpec, register
from fdlcli.runs import Run, atomic_write_text

BOOK_SENTENCE = "The woman, after grabbing her umbrella, went to the bank to deposit her cash."
VOCAB_FILE = "vocab.json"


@dataclass
class PosConfig:
    window: int = 3  # n: the word and the n - 1 words before it
    embeddings: str | None = None  # word2vec-format file (text/binary, .gz ok); null = random, learned
    embeddings_format: str = "auto"  # auto (binary for *.bin[.gz]) | text | binary
    dim: int = 300  # embedding size when model.embeddings is null (else the file's)
    freeze: bool | None = None  # fixed embeddings; null: fixed with a file (the book), learned without
    lowercase_fallback: bool = True  # a word missing as written is looked up lower-cased
    unknown_seed: int = 0  # seeds the uniform(-0.25, 0.25) vectors of words missing from the file
    hidden: list[int] = field(default_factory=lambda: [512, 256])
    # beyond the book (its recipe: after=0, dropout=0, embed_lr=1)
    after: int = 0  # words after the tagged one that the window also sees (the book: none)
    dropout: float = 0.0  # dropout on the concatenated window vectors, in training
    embed_lr: float = 1.0  # fine-tuning only: the vectors' learning rate as a fraction of optim.lr

    def check(self) -> str | None:
        if self.window < 1 or self.after < 0:
            return f"model.window={self.window}, model.after={self.after}: need window >= 1 and after >= 0"
        if not 0 <= self.dropout < 1:
            return f"model.dropout={self.dropout}: it must be in [0, 1)"
        if self.embed_lr <= 0:
            return f"model.embed_lr={self.embed_lr}: it must be positive (freeze=true fixes the vectors)"
        if self.embeddings_format not in FORMATS:
            return f"model.embeddings_format={self.embeddings_format!r}; choose from: {', '.join(FORMATS)}"
        if self.dim < 1 or any(h < 1 for h in self.hidden):
            return "model.dim and every model.hidden width must be positive"
        if self.embeddings is None and self.freeze:
            return "model.embeddings=null needs model.freeze=false (fixed random vectors learn nothing)"
        return None

    @property
    def frozen(self) -> bool:
        return self.freeze if self.freeze is not None else self.embeddings is not None


def unknown_vector(word: str, dim: int, seed: int) -> np.ndarray:
    """The fixed uniform(-0.25, 0.25) vector of a word missing from the embeddings file."""
    rng = np.random.default_rng([seed, zlib.crc32(word.encode("utf-8"))])
    return rng.uniform(-0.25, 0.25, dim).astype(np.float32)


def embedding_table(words: list[str], cfg: PosConfig) -> tuple[torch.Tensor, int]:
    """Vectors of ``words`` (row 0, the padding, is zero) and how many came from the file."""
    if cfg.embeddings is None:
        found: dict[str, np.ndarray] = {}
        dim = cfg.dim
    else:
        wanted = set(words) | ({w.lower() for w in words} if cfg.lowercase_fallback else set())
        found, dim = read_word2vec(cfg.embeddings, wanted, cfg.embeddings_format)
    rows, hits = [np.zeros(dim, np.float32)], 0
    for word in words[1:]:
        vector = found.get(word)
        if vector is None and cfg.lowercase_fallback:
            vector = found.get(word.lower())
        hits += vector is not None
        rows.append(vector if vector is not None else unknown_vector(word, dim, cfg.unknown_seed))
    return torch.from_numpy(np.stack(rows)), hits


class WindowTagger(nn.Module):
    """Embeddings of the window, concatenated -> [Linear -> BatchNorm -> ReLU] per hidden layer -> tags.

    Fine-tuned with ``embed_lr`` != 1, the vectors are the fixed table plus ``embed_lr`` times a learned
    offset that starts at zero: Adam's steps do not scale with the gradient, so this is how the vectors
    get ``embed_lr`` times the learning rate of the rest, and ``optim.weight_decay`` pulls them back
    towards the pretrained ones rather than towards zero."""

    def __init__(self, table: torch.Tensor, tags: int, cfg: PosConfig) -> None:
        super().__init__()
        offset = not cfg.frozen and cfg.embed_lr != 1.0
        self.embed = nn.Embedding.from_pretrained(table, freeze=cfg.frozen or offset, padding_idx=0)
        zeros = torch.zeros_like(table)
        self.offset = nn.Embedding.from_pretrained(zeros, freeze=False, padding_idx=0) if offset else None
        self.embed_lr = cfg.embed_lr
        self.dropout = nn.Dropout(cfg.dropout)
        layers: list[nn.Module] = []
        width = (cfg.window + cfg.after) * table.shape[1]
        for hidden in cfg.hidden:
            layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, tags))
        self.net = nn.Sequential(*layers)

    def table(self) -> torch.Tensor:
        """The word vectors in use (the fixed table plus the scaled offset when there is one)."""
        if self.offset is None:
            return self.embed.weight
        return self.embed.weight + self.embed_lr * self.offset.weight

    def head(self, vectors: torch.Tensor) -> torch.Tensor:
        """[tokens, window, dim] vectors -> tag logits."""
        return self.net(self.dropout(vectors.flatten(1)))

    def forward(self, window_ids: torch.Tensor) -> torch.Tensor:
        vectors = self.embed(window_ids)
        if self.offset is not None:
            vectors = vectors + self.embed_lr * self.offset(window_ids)
        return self.head(vectors)


@torch.no_grad()
def tag_sentences(
    model: WindowTagger,
    vocab: dict[str, int],
    tag_names: list[str],
    sentences: list[list[str]],
    cfg: PosConfig,
) -> list[list[tuple[str, str]]]:
    """(word, tag) pairs of tokenized sentences. Words outside the run's table get their seeded vector."""
    was_training = model.training
    model.eval()
    table = model.table()
    extra: dict[str, int] = {}
    extra_rows: list[np.ndarray] = []
    ids: list[list[int]] = []
    for sentence in sentences:
        row = []
        for word in map(normalize, sentence):
            index = vocab.get(word)
            if index is None:
                if word not in extra:
                    extra[word] = len(table) + len(extra)
                    extra_rows.append(unknown_vector(word, table.shape[1], cfg.unknown_seed))
                index = extra[word]
            row.append(index)
        ids.append(row)
    if extra_rows:
        added = torch.from_numpy(np.stack(extra_rows)).to(table)
        table = torch.cat([table, added])
    x = windows(ids, cfg.window, cfg.after).to(table.device)
    logits = model.head(nn.functional.embedding(x, table))
    predicted = logits.argmax(dim=1).tolist()
    model.train(was_training)
    out, start = [], 0
    for sentence in sentences:
        chunk = predicted[start : start + len(sentence)]
        out.append([(w, tag_names[t]) for w, t in zip(sentence, chunk, strict=True)])
        start += len(sentence)
    return out


def format_tagged(pairs: list[tuple[str, str]]) -> str:
    return " ".join(f"{word}/{tag}" for word, tag in pairs)


class PosTagging(ClassificationTask):
    """Windows of word ids -> tag ids; cross-entropy and accuracy come from ClassificationTask."""

    def __init__(self, config: Any, device: Any = "cpu", run: Run | None = None) -> None:
        super().__init__(config, device, run)
        self._prepared: tuple[TaggedSentences, TaggedSentences, list[str], list[str]] | None = None

    def _prepare(self) -> tuple[TaggedSentences, TaggedSentences, list[str], list[str]]:
        if self._prepared is None:
            train, tag_names = load_tagged(self.config.data, "train")
            test, _ = load_tagged(self.config.data, "test")
            self._prepared = (train, test, build_vocabulary(train, test), tag_names)
        return self._prepared

    def build_model(self) -> nn.Module:
        _, _, words, tag_names = self._prepare()
        table, hits = embedding_table(words, self.config.model)
        self.tag_names = tag_names
        if self.run is not None:  # training: record the table's words and its coverage for `fdl tag`
            meta = {"words": words, "tags": tag_names, "from_file": hits}
            atomic_write_text(self.run.artifacts_dir / VOCAB_FILE, json.dumps(meta))
            self.message(f"embeddings: {hits:,} of {len(words) - 1:,} words from the file, the rest seeded")
        return WindowTagger(table, len(tag_names), self.config.model)

    def load_data(self) -> ArraySplits:
        train, test, words, _ = self._prepare()
        index = {w: i for i, w in enumerate(words)}
        n, after = self.config.model.window, self.config.model.after

        def arrays(split: TaggedSentences) -> tuple[torch.Tensor, torch.Tensor]:
            x = windows([[index[w] for w in s] for s in split.sentences], n, after)
            y = torch.tensor([t for tags in split.tags for t in tags], dtype=torch.int64)
            return x, y

        (train_x, train_y), (test_x, test_y) = arrays(train), arrays(test)
        data = self.config.data
        if data.val_size >= len(train_y):
            raise DataUnavailableError(f"data.val_size={data.val_size} leaves no training tokens")
        val = (train_x[: data.val_size], train_y[: data.val_size])
        train_part = (train_x[data.val_size :], train_y[data.val_size :])
        if data.train_limit:
            train_part = tuple(a[: data.train_limit] for a in train_part)
        test_part = (test_x, test_y)
        if data.eval_limit:
            val = tuple(a[: data.eval_limit] for a in val)
            test_part = tuple(a[: data.eval_limit] for a in test_part)
        return ArraySplits(train_part, val, test_part)

    def after_epoch(self, model: nn.Module, epoch: int) -> str | None:
        _, _, words, tag_names = self._prepare()
        vocab = {w: i for i, w in enumerate(words)}
        (tagged,) = tag_sentences(model, vocab, tag_names, [tokenize(BOOK_SENTENCE)], self.config.model)
        line = format_tagged(tagged)
        if self.run is not None:
            with open(self.run.artifacts_dir / "tagged.txt", "a") as handle:
                handle.write(f"epoch {epoch}: {line}\n")
        return f"  {line}"


def load_tagger(run: Run, checkpoint: str = "best") -> tuple[WindowTagger, dict[str, int], list[str]]:
    """A trained tagger, its word index and tag names, from the run alone (no data, no embeddings file)."""
    from fdlcli.engine.loop import load_weights, resolve_checkpoint
    from fdlcli.errors import RunDirError

    path = run.path / "artifacts" / VOCAB_FILE
    if not path.is_file():
        raise RunDirError(f"{run.path} has no artifacts/{VOCAB_FILE} (was it trained by pos-tagger?)")
    meta = json.loads(path.read_text())
    ref = resolve_checkpoint(run, checkpoint)
    try:  # the table's width is in the checkpoint itself
        from safetensors import safe_open

        with safe_open(str(ref.path / "model.safetensors"), "pt") as handle:
            dim = handle.get_slice("embed.weight").get_shape()[1]
    except Exception as exc:  # a damaged file: load_weights below would say the same
        raise RunDirError(f"cannot read the embedding table of {ref.path}: {exc}") from None
    model = WindowTagger(torch.zeros(len(meta["words"]), dim), len(meta["tags"]), run.config.model)
    load_weights(run, ref, model)
    return model, {w: i for i, w in enumerate(meta["words"])}, meta["tags"]


register(
    ExperimentSpec(
        name="pos-tagger",
        chapter=7,
        dataset="CoNLL-2000",
        book_result="over 96% accuracy (100 epochs, Google News vectors)",
        description="feed-forward n-gram tagger over fixed word2vec embeddings, BN, Adam",
        model_config=PosConfig,
        model_group="pos",
        data_config=ConllDataConfig,
        task=PosTagging,
    )
)
