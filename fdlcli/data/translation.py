"""Parallel text for translation: tokenization, capped vocabularies, padded id tensors, book buckets.

A dataset has the Hugging Face translation schema: a ``translation`` column of ``{"en": ..., "fr": ...}``
dicts (the Multi30k en-fr mirror ``multi30k-en-fr``, or a Hub dataset such as ``IWSLT/iwslt2017`` with
config ``iwslt2017-en-fr`` for connected users). Tokens are lowercased words and single punctuation
marks; French elisions keep their apostrophe (``l'homme`` -> ``l'``, ``homme``). Each vocabulary keeps
the ``vocab_size`` most frequent training words after the four special tokens PAD, GO, EOS and UNK, as
the book's ``data_utils`` did. Sentences are stored as padded int64 tensors (padding at the end; the
source optionally reversed, as in the book) with their lengths, so a batch is one index operation.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fdlcli.config import DataConfig
from fdlcli.data.hub import load_split, mirror_root
from fdlcli.errors import DataUnavailableError, RunDirError
from fdlcli.runs import atomic_write_text

PAD, GO, EOS, UNK = "<pad>", "<go>", "<eos>", "<unk>"
SPECIALS = (PAD, GO, EOS, UNK)
PAD_ID, GO_ID, EOS_ID, UNK_ID = range(4)

# a word with an elided apostrophe (French l', d', qu'), a word (hyphens inside), or one other symbol
_TOKEN = re.compile(r"\w+'(?=\w)|\w+(?:-\w+)*|[^\w\s]")


@dataclass
class TranslationDataConfig(DataConfig):
    """The ``data.*`` keys of translation experiments, on top of the common ones."""

    name: str = "multi30k-en-fr"
    hub_id: str = ""  # "" = mirror only
    hub_config: str | None = None  # the Hub dataset's configuration, e.g. iwslt2017-en-fr
    source: str = "en"
    target: str = "fr"
    train_split: str = "train"
    val_split: str = "validation"
    test_split: str = "test"
    source_vocab: int = 6000  # words kept besides the four special tokens
    target_vocab: int = 6000
    reverse_source: bool = True  # the book feeds the source backwards
    # (source, target) length limits of the book's buckets; longer pairs are left out of training
    buckets: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 15], [20, 25], [40, 50]])

    def check(self) -> str | None:
        if min(self.source_vocab, self.target_vocab) <= 0:
            return "data.source_vocab and data.target_vocab must be positive"
        if not self.buckets or any(len(b) != 2 or min(b) <= 0 for b in self.buckets):
            return f"data.buckets={self.buckets}: give a list of positive (source, target) length pairs"
        if self.source == self.target:
            return f"data.source and data.target are both {self.source!r}"
        return None

    @property
    def max_source(self) -> int:
        return max(b[0] for b in self.buckets)

    @property
    def max_target(self) -> int:  # target tokens, EOS included
        return max(b[1] for b in self.buckets)


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def detokenize(tokens: list[str], language: str = "fr") -> str:
    """Text as it is written in ``language`` from our lowercased tokens, by the Moses detokenizer
    (sacremoses): no space before ``,`` or ``.`` or after an elision (``l'homme``, ``qu'il``), and in
    French a space before ``; : ! ?`` and inside ``« »``, as the references are written. Hyphenated
    compounds are single tokens already (a lone ``-`` is a dash between words and keeps its spaces). The
    vocabulary is lowercase: the first word of each sentence is capitalized (names are not)."""
    words: list[str] = []
    sentence_start = True
    for token in tokens:
        if sentence_start and token[:1].isalpha():
            token = token[0].upper() + token[1:]
        if token[:1].isalnum() or token == UNK:
            sentence_start = False
        elif token in (".", "!", "?"):
            sentence_start = True
        # an elision token (l', qu', don') belongs to the next word, in any language
        if words and words[-1][-1:] == "'" and words[-1][:-1].isalnum() and token[:1].isalnum():
            words[-1] += token
        else:
            words.append(token)
    return _moses_detokenizer(language).detokenize(words)


@functools.cache
def _moses_detokenizer(language: str) -> Any:
    from sacremoses import MosesDetokenizer

    return MosesDetokenizer(lang=language)


@dataclass
class Vocab:
    words: list[str]  # id -> word; the four specials first

    def __post_init__(self) -> None:
        self.index = {word: i for i, word in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, sentences: list[list[str]], size: int) -> Vocab:
        counts = Counter(token for sentence in sentences for token in sentence)
        # most_common breaks ties by first appearance, so the vocabulary is a function of the data
        return cls([*SPECIALS, *[w for w, _ in counts.most_common() if w not in SPECIALS][:size]])

    def encode(self, tokens: list[str]) -> list[int]:
        return [self.index.get(token, UNK_ID) for token in tokens]

    def decode(self, ids: list[int]) -> list[str]:
        return [self.words[i] for i in ids if i not in (PAD_ID, GO_ID, EOS_ID)]


@dataclass
class Encoded:
    """Sentences as one padded tensor [N, max_len] and their lengths [N] (CPU, for batch trimming)."""

    ids: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.lengths)


def encode_source(vocab: Vocab, sentences: list[list[str]], max_len: int, reverse: bool) -> Encoded:
    ids = torch.full((len(sentences), max_len), PAD_ID, dtype=torch.int64)
    lengths = torch.zeros(len(sentences), dtype=torch.int64)
    for row, tokens in enumerate(sentences):
        encoded = vocab.encode(tokens[:max_len])
        if reverse:
            encoded.reverse()
        ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.int64)
        lengths[row] = len(encoded)
    return Encoded(ids, lengths)


def encode_target(vocab: Vocab, sentences: list[list[str]], max_len: int) -> Encoded:
    """Target ids followed by EOS (the decoder's input is GO + the same ids, shifted)."""
    ids = torch.full((len(sentences), max_len), PAD_ID, dtype=torch.int64)
    lengths = torch.zeros(len(sentences), dtype=torch.int64)
    for row, tokens in enumerate(sentences):
        encoded = [*vocab.encode(tokens[: max_len - 1]), EOS_ID]
        ids[row, : len(encoded)] = torch.tensor(encoded, dtype=torch.int64)
        lengths[row] = len(encoded)
    return Encoded(ids, lengths)


def load_pairs(cfg: TranslationDataConfig, split: str) -> tuple[list[str], list[str]]:
    """Raw (source, target) sentences of one split."""
    if not cfg.hub_id and mirror_root(cfg.dir) is None:
        raise DataUnavailableError(
            f"{cfg.name} is read from a local mirror only: set FDL_DATA_DIR (or data.dir), "
            "or choose a Hub dataset such as data=iwslt2017-en-fr"
        )
    dataset = load_split(cfg.name, cfg.hub_id, split, cfg.dir, config_name=cfg.hub_config)
    if "translation" not in dataset.features:
        raise DataUnavailableError(f"{cfg.name} ({split}) has no 'translation' column")
    rows = (dataset.data.table if hasattr(dataset.data, "table") else dataset.data).column("translation")
    pairs = rows.to_pylist()
    try:
        return [p[cfg.source] for p in pairs], [p[cfg.target] for p in pairs]
    except (KeyError, TypeError):
        languages = sorted(pairs[0]) if pairs and isinstance(pairs[0], dict) else []
        raise DataUnavailableError(
            f"{cfg.name} has no {cfg.source}->{cfg.target} pairs (languages: {', '.join(languages)})"
        ) from None


@dataclass
class ParallelSplit:
    source: Encoded
    target: Encoded
    references: list[str]  # tokenized reference text (full words, no UNK), for the tokenized BLEU
    texts: list[str]  # the references as the dataset writes them (cased, detokenized), for sacreBLEU
    language: str  # of the targets, for detokenizing translations


@dataclass
class ParallelData:
    source_vocab: Vocab
    target_vocab: Vocab
    train: ParallelSplit
    val: ParallelSplit
    test: ParallelSplit
    dropped: int  # training pairs longer than the largest bucket


def _split(cfg: TranslationDataConfig, split: str, src: Vocab, tgt: Vocab, limit: int) -> ParallelSplit:
    sources, targets = load_pairs(cfg, split)
    if limit:
        sources, targets = sources[:limit], targets[:limit]
    source_tokens, target_tokens = [tokenize(s) for s in sources], [tokenize(t) for t in targets]
    return ParallelSplit(
        encode_source(src, source_tokens, cfg.max_source, cfg.reverse_source),
        encode_target(tgt, target_tokens, cfg.max_target),
        [" ".join(tokens) for tokens in target_tokens],
        targets,
        cfg.target,
    )


def load_parallel(cfg: TranslationDataConfig, vocabs: tuple[Vocab, Vocab] | None = None) -> ParallelData:
    """All three splits; the vocabularies come from the training split unless given (a saved run's)."""
    sources, targets = load_pairs(cfg, cfg.train_split)
    if cfg.train_limit:
        sources, targets = sources[: cfg.train_limit], targets[: cfg.train_limit]
    source_tokens, target_tokens = [tokenize(s) for s in sources], [tokenize(t) for t in targets]
    if vocabs is None:
        vocabs = Vocab.build(source_tokens, cfg.source_vocab), Vocab.build(target_tokens, cfg.target_vocab)
    src, tgt = vocabs
    keep = [
        i
        for i, (s, t) in enumerate(zip(source_tokens, target_tokens, strict=True))
        if 0 < len(s) <= cfg.max_source and len(t) < cfg.max_target
    ]
    if not keep:
        raise DataUnavailableError(f"no training pair of {cfg.name} fits the buckets {cfg.buckets}")
    source_tokens = [source_tokens[i] for i in keep]
    target_tokens = [target_tokens[i] for i in keep]
    train = ParallelSplit(
        encode_source(src, source_tokens, cfg.max_source, cfg.reverse_source),
        encode_target(tgt, target_tokens, cfg.max_target),
        [" ".join(tokens) for tokens in target_tokens],
        [targets[i] for i in keep],
        cfg.target,
    )
    return ParallelData(
        src,
        tgt,
        train,
        _split(cfg, cfg.val_split, src, tgt, cfg.eval_limit),
        _split(cfg, cfg.test_split, src, tgt, cfg.eval_limit),
        dropped=len(sources) - len(keep),
    )


def bucket_batches(
    source_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    buckets: list[list[int]],
    batch_size: int,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """One epoch of minibatches: each pair goes to the smallest bucket it fits; pairs are shuffled within
    their bucket, cut into batches, and the batches of all buckets shuffled together."""
    fits = torch.full_like(source_lengths, len(buckets))
    for number in reversed(range(len(buckets))):
        s, t = buckets[number]
        fits[(source_lengths <= s) & (target_lengths <= t)] = number
    batches: list[torch.Tensor] = []
    for number in range(len(buckets)):
        members = torch.nonzero(fits == number).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        batches += list(members.split(batch_size)) if len(members) else []
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


# ---- vocabularies saved in the run (JSON: `fdl translate` needs no dataset) ----------------------

VOCAB_FILE = "vocab.json"


def save_vocabs(run_dir: Path, source: Vocab, target: Vocab) -> None:
    atomic_write_text(run_dir / VOCAB_FILE, json.dumps({"source": source.words, "target": target.words}))


def load_vocabs(run_dir: Path) -> tuple[Vocab, Vocab]:
    path = run_dir / VOCAB_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        source, target = saved["source"], saved["target"]
        valid = all(isinstance(w, str) for w in [*source, *target])
    except FileNotFoundError:
        raise RunDirError(
            f"{run_dir} has no {VOCAB_FILE} (was it trained by a translation experiment?)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"cannot read {path}: {exc}") from None
    if not valid or source[:4] != list(SPECIALS) or target[:4] != list(SPECIALS):
        raise RunDirError(f"{path} does not hold fdl vocabularies")
    return Vocab(source), Vocab(target)
