"""CoNLL-2000 part-of-speech data as n-gram windows of word ids (chapter 7's tagger).

The mirror (``conll2000/{train,test}.parquet``, Hub ``eriktks/conll2000``) holds one sentence per row:
``tokens`` and ``pos_tags`` (a ClassLabel of 44 Penn Treebank tags). The book's preprocessing maps every
digit to ``#``; the window of a word is the word and the ``n - 1`` words before it in its sentence, with a
padding id (0) before the sentence start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from fdlcli.config import DataConfig
from fdlcli.data.hub import load_split
from fdlcli.errors import DataUnavailableError

PAD = "<pad>"
_DIGIT = re.compile(r"\d")
# Penn-Treebank-like tokens for free text: clitics split off ("do n't", "woman 's"), numbers kept whole,
# hyphenated words kept whole, every other punctuation mark its own token
_TOKEN = re.compile(
    r"(?:Mr|Mrs|Ms|Dr|Inc|Corp|Co|Ltd|Jr|St)\.|(?:[A-Z]\.)+(?=\s|$)|n't|'s|'re|'ve|'ll|'d|'m|\w+(?=n't)"
    r"|\d+(?:[.,:]\d+)*|\w+(?:-\w+)*|\.\.\.|--|[^\w\s]"
)


@dataclass
class ConllDataConfig(DataConfig):
    """``data.*`` of the tagger; val_size counts tokens cut from the head of the training split."""

    name: str = "conll2000"
    hub_id: str = "eriktks/conll2000"
    batch_size: int = 100
    val_size: int = 10000


@dataclass
class TaggedSentences:
    sentences: list[list[str]]  # normalized words
    tags: list[list[int]]


def normalize(word: str) -> str:
    """The book's preprocessing: every digit becomes '#'."""
    return _DIGIT.sub("#", word)


def tokenize(text: str) -> list[str]:
    """Split free text into Treebank-style tokens (for tagging text that is not CoNLL)."""
    return _TOKEN.findall(text)


def load_tagged(cfg: ConllDataConfig, split: str) -> tuple[TaggedSentences, list[str]]:
    """The sentences of one split (words normalized) and the tag names."""
    dataset = load_split(cfg.name, cfg.hub_id, split, cfg.dir)
    if "tokens" not in dataset.features or "pos_tags" not in dataset.features:
        raise DataUnavailableError(f"{cfg.name} ({split}) lacks the columns 'tokens' and 'pos_tags'")
    names = list(dataset.features["pos_tags"].feature.names)
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    sentences = [[normalize(w) for w in row] for row in table.column("tokens").to_pylist()]
    tags = table.column("pos_tags").to_pylist()
    return TaggedSentences(sentences, tags), names


def build_vocabulary(*splits: TaggedSentences) -> list[str]:
    """Every distinct word, in order of first appearance, after the padding entry (id 0)."""
    seen: dict[str, None] = {PAD: None}
    for split in splits:
        for sentence in split.sentences:
            seen.update(dict.fromkeys(sentence))
    return list(seen)


def ptb_without_conll_test(ptb_lines: list[str], test: TaggedSentences) -> list[str]:
    """PTB's language-model training text less its last part, which is CoNLL-2000's test set.

    Mikolov's PTB training text is WSJ sections 00-20 in order, one sentence a line, lower-cased, numbers
    as N and rare words as <unk>; CoNLL-2000 tests on section 20, so the last len(test) lines are exactly
    the test sentences in that form (checked on the mirror: 1,468 of the 2,012 match word for word after
    the same mapping, the rest differ only where PTB dropped or split punctuation). They must not reach a
    corpus for word vectors that the tagger is tested with. Fails if the first cut line is not the first
    test sentence, so another PTB copy cannot silently leak."""
    cut = len(ptb_lines) - len(test.sentences)
    first = [w.lower() for w in test.sentences[0] if re.fullmatch(r"[A-Za-z]+", w)][:2]
    if cut < 0 or ptb_lines[cut].split()[: len(first)] != first:
        raise DataUnavailableError("this PTB text does not end with the CoNLL-2000 test sentences")
    return ptb_lines[:cut]


def windows(sentences: list[list[int]], n: int, after: int = 0) -> torch.Tensor:
    """[tokens, n + after] word ids: column n-1 is the word itself, column n-1-k the word k places before it
    and column n-1+k the word k places after it (0 = padding outside the sentence). ``after=0`` is the
    book's window, the word and the n - 1 before it. Built with tensor ops over the flat corpus."""
    lengths = torch.tensor([len(s) for s in sentences], dtype=torch.int64)
    flat = torch.tensor([i for s in sentences for i in s], dtype=torch.int64)
    # the position of each token inside its sentence, and how many words follow it there
    starts = torch.cumsum(lengths, 0) - lengths
    position = torch.arange(len(flat)) - torch.repeat_interleave(starts, lengths)
    following = torch.repeat_interleave(lengths, lengths) - position - 1
    columns = []
    for back in range(n - 1, -1, -1):
        shifted = torch.roll(flat, back)
        columns.append(torch.where(position >= back, shifted, torch.zeros_like(shifted)))
    for ahead in range(1, after + 1):
        shifted = torch.roll(flat, -ahead)
        columns.append(torch.where(following >= ahead, shifted, torch.zeros_like(shifted)))
    return torch.stack(columns, dim=1)
