"""The 20 bAbI question-answering tasks (v1.2), preprocessed as in the book's chapter 8.

Sources, in order: the local mirror ``<data dir>/babi/<variant>/qaN_<name>_<split>.txt.gz`` (the raw
files of ``tasks_1-20_v1-2``), else the Hugging Face Hub dataset ``facebook/babi_qa`` (config
``<variant>-qaN``), whose stories are turned back into the raw line format. The offline mirror lacks the
10k training file of task 3 (it exceeds GitHub's size limit); that task then falls back to its 1k file
(the first 1,000 questions of the 10k file) and :func:`load_babi` says so.

Preprocessing (the book's): lowercase, drop the line numbers and every punctuation mark but '?' and '.',
which become tokens; each story (from line 1 to the next line 1) with all its questions is one
sequence, and each answer word is replaced by a '-' the network must fill in (path-finding answers such
as "s,e" give two). Words are one-hot over the 159-word lexicon of all tasks; the loss and the error
count only the '-' steps. A question is answered correctly when all its answer words are.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fdlcli.config import DataConfig
from fdlcli.data.hub import mirror_root
from fdlcli.errors import ConfigError, DataUnavailableError

ANSWER = "-"
TOKEN = re.compile(r"[a-z]+|[?.]")
TASKS = tuple(range(1, 21))


@dataclass
class BabiDataConfig(DataConfig):
    name: str = "babi"
    hub_id: str = "facebook/babi_qa"
    variant: str = "en-10k"  # en-10k (the book's) | en (1,000 questions per task)
    tasks: list[int] = field(default_factory=lambda: list(TASKS))  # e.g. data.tasks=[1,2,20]
    batch_size: int = 16
    val_size: int = 50  # stories per task held out of training for validation (the tail of each file)
    train_limit: int = 0  # stories per task kept for training (0: all)
    eval_limit: int = 0  # stories per task kept for validation and test (0: all)

    def check(self) -> str | None:
        if self.variant not in ("en-10k", "en"):
            return f"data.variant={self.variant!r}; choose from: en-10k, en"
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            return f"data.tasks={list(self.tasks)}: task numbers run from 1 to 20, e.g. data.tasks=[1,2,20]"
        return None


def task_list(tasks: list[int]) -> list[int]:
    if not tasks or any(t not in TASKS for t in tasks):
        raise ConfigError(
            f"data.tasks={list(tasks)}: choose task numbers from 1 to 20, e.g. data.tasks=[1,2,20]"
        )
    return sorted(set(tasks))


def _mirror_lines(folder: Path, task: int, split: str) -> list[str] | None:
    files = sorted(folder.glob(f"qa{task}_*_{split}.txt.gz"))
    if not files:
        return None
    with gzip.open(files[0], "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


def _hub_lines(hub_id: str, variant: str, task: int, split: str) -> list[str]:
    import datasets

    datasets.disable_progress_bars()
    try:
        stories = datasets.load_dataset(hub_id, f"{variant}-qa{task}", split=split)
    except Exception as exc:
        raise DataUnavailableError(
            f"cannot load {hub_id!r} ({variant}-qa{task}, {split}) from the Hugging Face Hub "
            f"({type(exc).__name__}); set FDL_DATA_DIR to a mirror holding babi/{variant}/"
        ) from None
    lines = []
    for row in stories:
        story = row["story"]
        for number, kind, text, answer in zip(
            story["id"], story["type"], story["text"], story["answer"], strict=True
        ):
            lines.append(f"{number} {text}" + (f"\t{answer}\t" if kind == 1 else ""))
    return lines


def raw_lines(cfg: BabiDataConfig, task: int, split: str) -> tuple[list[str], str]:
    """The raw lines of one task's split and where they came from."""
    root = mirror_root(cfg.dir)
    if root is None:
        return _hub_lines(cfg.hub_id, cfg.variant, task, split), f"hub {cfg.hub_id}"
    folder = root / cfg.name / cfg.variant
    if not folder.is_dir():
        raise DataUnavailableError(f"the data mirror {root} has no {cfg.name}/{cfg.variant}/ folder")
    lines = _mirror_lines(folder, task, split)
    if lines is not None:
        return lines, f"{cfg.variant}"
    small = _mirror_lines(root / cfg.name / "en", task, split) if cfg.variant != "en" else None
    if small is None:
        raise DataUnavailableError(f"the data mirror has no qa{task} {split} file in {folder}")
    return small, "en (1k: the 10k file is missing from the mirror)"


@dataclass
class Story:
    tokens: list[str]  # with '-' at the answer steps
    answers: list[str]  # one word per '-', in order
    question: list[int]  # the question (within the story) of each '-'


def parse_stories(lines: list[str]) -> list[Story]:
    stories: list[Story] = []
    for line in lines:
        if not line.strip():
            continue
        number, _, text = line.partition(" ")
        if number == "1" or not stories:
            stories.append(Story([], [], []))
        story = stories[-1]
        question, tab, rest = text.partition("\t")
        story.tokens.extend(TOKEN.findall(question.lower()))
        if tab:
            words = [w for w in rest.split("\t")[0].strip().lower().split(",") if w]
            index = len(set(story.question))
            story.tokens.extend([ANSWER] * len(words))
            story.answers.extend(words)
            story.question.extend([index] * len(words))
    return stories


@dataclass
class BabiSplit:
    """Stories as flat tensors: story s is tokens[offsets[s] : offsets[s] + lengths[s]]."""

    tokens: torch.Tensor  # int64 [total] word ids
    targets: torch.Tensor  # int64 [total] answer word id at '-' steps, -1 elsewhere
    questions: torch.Tensor  # int64 [total] global question id at '-' steps, -1 elsewhere
    offsets: torch.Tensor  # int64 [stories]
    lengths: torch.Tensor  # int64 [stories]
    task: torch.Tensor  # int64 [stories]
    question_task: torch.Tensor  # int64 [questions] the task of each question

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, stories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded (tokens, targets, questions) [b, longest] of some stories; padding has target -1."""
        lengths = self.lengths[stories]
        steps = torch.arange(int(lengths.max()))
        index = self.offsets[stories, None] + steps
        valid = steps < lengths[:, None]
        index = torch.where(valid, index, 0)
        pad = torch.full_like(index, -1)
        return (
            torch.where(valid, self.tokens[index], 0),
            torch.where(valid, self.targets[index], pad),
            torch.where(valid, self.questions[index], pad),
        )


@dataclass
class Babi:
    lexicon: list[str]
    train: BabiSplit
    val: BabiSplit
    test: BabiSplit
    tasks: list[int]
    sources: dict[int, str]  # task -> where its training file came from


def _encode(stories: list[tuple[int, Story]], index: dict[str, int]) -> BabiSplit:
    tokens, targets, questions, lengths, task_ids, question_task = [], [], [], [], [], []
    next_question = 0
    for task, story in stories:
        ids = [index[t] for t in story.tokens]
        answer_steps = [i for i, t in enumerate(story.tokens) if t == ANSWER]
        target, question = [-1] * len(ids), [-1] * len(ids)
        for step, word, q in zip(answer_steps, story.answers, story.question, strict=True):
            target[step], question[step] = index[word], next_question + q
        count = len(set(story.question))
        question_task.extend([task] * count)
        next_question += count
        tokens.extend(ids)
        targets.extend(target)
        questions.extend(question)
        lengths.append(len(ids))
        task_ids.append(task)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    return BabiSplit(
        tokens=torch.tensor(tokens, dtype=torch.int64),
        targets=torch.tensor(targets, dtype=torch.int64),
        questions=torch.tensor(questions, dtype=torch.int64),
        offsets=torch.cumsum(lengths_t, 0) - lengths_t,
        lengths=lengths_t,
        task=torch.tensor(task_ids, dtype=torch.int64),
        question_task=torch.tensor(question_task, dtype=torch.int64),
    )


def load_babi(cfg: BabiDataConfig) -> Babi:
    """Parse the selected tasks; the lexicon always covers all 20 tasks, so models trained on different
    task selections share input and output sizes (159 words with en-10k, as the book says)."""
    tasks = task_list(cfg.tasks)
    train, val, test = [], [], []
    words: set[str] = set()
    sources: dict[int, str] = {}
    for task in TASKS:
        train_lines, sources[task] = raw_lines(cfg, task, "train")
        test_lines = raw_lines(cfg, task, "test")[0]
        for lines in (train_lines, test_lines):  # every word of the file, answers included
            words.update(TOKEN.findall("\n".join(lines).lower()))
        if task not in tasks:
            continue
        train_stories, test_stories = parse_stories(train_lines), parse_stories(test_lines)
        held = min(cfg.val_size, len(train_stories) // 2)
        kept, heldout = train_stories[: len(train_stories) - held], train_stories[len(train_stories) - held :]
        limit = lambda items, n: items[:n] if n else items  # noqa: E731
        train += [(task, s) for s in limit(kept, cfg.train_limit)]
        val += [(task, s) for s in limit(heldout, cfg.eval_limit)]
        test += [(task, s) for s in limit(test_stories, cfg.eval_limit)]
    lexicon = sorted(words | {ANSWER})
    index = {word: i for i, word in enumerate(lexicon)}
    return Babi(
        lexicon=lexicon,
        train=_encode(train, index),
        val=_encode(val, index),
        test=_encode(test, index),
        tasks=tasks,
        sources={t: sources[t] for t in tasks},
    )
