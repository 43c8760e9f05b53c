"""Chapter 6: skip-gram word2vec with noise-contrastive estimation (``skipgram``).

Book (TF 1.x, after TensorFlow's word2vec tutorial): embeddings of 128 dimensions, context window of 5
words on each side, 4 context words sampled per target word, minibatches of 32 (target, context) pairs,
``tf.nn.nce_loss`` with 64 negative samples drawn once per minibatch and shared by all its pairs, SGD lr
0.1, 5 epochs, the 10,000 most frequent words. Periodically it prints the 8 nearest neighbours (cosine)
of words among the 500 most frequent, and ends with a t-SNE plot. Book's sample neighbours: eight -> six,
seven, five, nine; french -> spanish, dutch, italian, english.

Speed: the corpus is one tensor of word ids; an epoch's (target, context) pairs and negative samples are
drawn as whole tensors from an RNG seeded by (seed, epoch), so no Python runs per pair and a resumed run
redraws exactly the same epoch. Because the negatives are shared by the pairs of a book minibatch, its
negative logits are one matrix product [32, d] x [d, K]. A step of ``data.batch_size`` pairs processes
batch_size / ``model.share`` book minibatches at once (one batched matrix product), each with its own
negatives and the book's update (SGD on its mean loss): the per-pair learning rate stays lr / 32 whatever
the batch size, and no noise word collects the gradients of more than ``share`` pairs at once.
Gradients are written out by hand (the model is two embedding tables and a bias) and applied with
``index_add_``: SGD on the rows a step touches, with no autograd graph and no dense gradient of the
10,000 x 128 tables.

Losses (``model.loss``): ``nce`` is TensorFlow's ``nce_loss``: logits u.v_w + b_w - log(K q(w)), a sigmoid
cross-entropy against 1 for the true context and 0 for each sample; ``neg`` is Mikolov's negative
sampling (no bias, no log q correction). Noise (``model.sampler``): ``log_uniform`` (TensorFlow's
default candidate sampler, Zipfian over frequency ranks) or ``unigram`` (counts ** ``model.power``).

Beyond the book, gensim's recipe (for ``benchmarks/skipgram_vs_gensim.py``): ``model.subsample`` drops each
occurrence of a frequent word with gensim's probability before the epoch's pairs are drawn;
``model.contexts=dynamic`` trains every word within a window shrunk at random to 1..window per target
(word2vec.c's reduced window) instead of the book's 4 sampled words; ``model.update=damped`` divides each
row's summed step by 1 + lr x its curvature in the step, so that the many simultaneous updates a minibatch
gives a frequent word cannot overshoot (see ``sgd_step``).

Two engines (``model.engine``): ``minibatch`` (above, the book's; PyTorch) and ``hogwild``, word2vec.c's
one-SGD-step-per-target training in a compiled kernel (``_word2vec_hogwild.py``), which ``skipgram-word2vec``
runs with word2vec.c's recipe. Both train through the engine's one loop (``SkipGramTask``: checkpoints,
resumption, logging and evaluation are the same for both); an engine only says how many steps an epoch
has and what one step trains. The minibatch engine runs on ``trainer.device``, the Hogwild one on the CPU.

Quality is measured at every epoch end on the analogy questions (``questions-words.txt``, restricted to
questions whose four words are in the vocabulary; 3CosAdd, the three question words excluded) and on
WordSim-353 (Spearman rho of cosine against the human scores, pairs in the vocabulary).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fdlcli.config import RunConfig, TrainerConfig
from fdlcli.data.hub import mirror_root
from fdlcli.data.text import Corpus, TextDataConfig, load_corpus
from fdlcli.engine.seed import epoch_generator
from fdlcli.engine.task import StepOutput, Task
from fdlcli.errors import DataUnavailableError
from fdlcli.registry import ExperimentSpec, register
from fdlcli.runs import atomic_write_text

EVAL_FOLDER = "word2vec-eval"  # in the data mirror: questions-words.txt and wordsim353.tsv


@dataclass
class SkipGramConfig:
    dim: int = 128
    window: int = 5  # context words on each side of the target
    contexts_per_target: int = 4  # the book's num_skips: distinct context words sampled per target
    negatives: int = 64  # noise words per book minibatch, shared by all its pairs
    share: int = 32  # pairs that share one draw of negatives (the book's minibatch); divides data.batch_size
    loss: str = "nce"  # nce | neg
    sampler: str = "log_uniform"  # log_uniform | unigram
    power: float = 0.75  # exponent of the unigram noise distribution
    lr_decay: bool = False  # linear decay of the learning rate to 0 over training (gensim's schedule)
    init: str = "book"  # book (uniform(-1, 1) inputs) | small (word2vec.c: uniform(+-0.5/dim), zero outputs)
    contexts: str = "sample"  # sample (the book) | dynamic (word2vec.c/gensim: all words of a shrunk window)
    subsample: float = 0.0  # gensim's `sample`: frequent-word downsampling threshold; 0 = off (the book)
    update: str = "sgd"  # sgd (the book) | damped (each row's step divided by 1 + lr x its curvature)
    engine: str = "minibatch"  # minibatch (the book, PyTorch) | hogwild (compiled, _word2vec_hogwild.py)
    shared_targets: int = 1  # hogwild: consecutive targets whose contexts share one draw of negatives

    def check(self) -> str | None:
        if self.loss not in ("nce", "neg"):
            return f"model.loss={self.loss!r}; choose from: nce, neg"
        if self.sampler not in ("log_uniform", "unigram"):
            return f"model.sampler={self.sampler!r}; choose from: log_uniform, unigram"
        if self.init not in ("book", "small"):
            return f"model.init={self.init!r}; choose from: book, small"
        if self.contexts not in ("sample", "dynamic"):
            return f"model.contexts={self.contexts!r}; choose from: sample, dynamic"
        if self.update not in ("sgd", "damped"):
            return f"model.update={self.update!r}; choose from: sgd, damped"
        if self.engine not in ("minibatch", "hogwild"):
            return f"model.engine={self.engine!r}; choose from: minibatch, hogwild"
        if self.engine == "hogwild" and (self.loss, self.update) != ("neg", "sgd"):
            return "model.engine=hogwild needs model.loss=neg and model.update=sgd"
        if not 0 <= self.subsample < 1:
            return f"model.subsample={self.subsample} must be in [0, 1)"
        names = ("dim", "window", "contexts_per_target", "negatives", "share", "shared_targets")
        if min(getattr(self, name) for name in names) <= 0:
            return f"model.{', '.join(names)} must be positive"
        if self.contexts_per_target > 2 * self.window:
            return f"model.contexts_per_target={self.contexts_per_target} exceeds the 2*window context words"
        return None


@dataclass
class SkipGramTrainerConfig(TrainerConfig):
    neighbours_every: int = 0  # minibatches between nearest-neighbour printouts; 0 = at epoch ends only
    neighbour_words: int = 20  # words shown, drawn among the 500 most frequent
    eval_dir: str | None = None  # analogy/WordSim files; default: <data mirror>/word2vec-eval, if present
    tsne: bool = True  # t-SNE figure of the 500 most frequent words at the end
    chunk_words: int = 10000  # model.engine=hogwild: target words per step (one call of the kernel)

    def check(self) -> str | None:
        if self.grad_clip:
            return f"trainer.grad_clip={self.grad_clip}: skip-gram's hand-written SGD has no gradient to clip"
        return None if self.chunk_words > 0 else f"trainer.chunk_words={self.chunk_words} must be positive"


class SkipGram(nn.Module):
    """Input embeddings (the word vectors), output embeddings and output biases (NCE)."""

    def __init__(self, vocab: int, cfg: SkipGramConfig) -> None:
        super().__init__()
        embed, out = torch.empty(vocab, cfg.dim), torch.zeros(vocab, cfg.dim)
        if cfg.init == "book":  # uniform(-1, 1) inputs, truncated normal(1/sqrt(d)) outputs
            embed.uniform_(-1.0, 1.0)
            std = 1 / math.sqrt(cfg.dim)
            nn.init.trunc_normal_(out, std=std, a=-2 * std, b=2 * std)
        else:  # word2vec.c / gensim: small uniform inputs, zero outputs
            embed.uniform_(-0.5 / cfg.dim, 0.5 / cfg.dim)
        # no autograd: sgd_step writes the gradients out by hand
        self.embed = nn.Parameter(embed, requires_grad=False)
        self.out = nn.Parameter(out, requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(vocab), requires_grad=False)


def noise_distribution(counts: torch.Tensor, cfg: SkipGramConfig) -> torch.Tensor:
    if cfg.sampler == "log_uniform":  # P(rank r) = log((r + 2) / (r + 1)) / log(V + 1); ids are ranks
        ranks = torch.arange(len(counts), dtype=torch.float64)
        probs = torch.log((ranks + 2) / (ranks + 1)) / math.log(len(counts) + 1)
    else:
        probs = counts.double().pow(cfg.power)
    return (probs / probs.sum()).float()


@dataclass
class Epoch:
    """Every random draw of one epoch, a function of (seed, epoch) only."""

    targets: torch.Tensor  # [pairs] word ids, pairs a multiple of cfg.share
    contexts: torch.Tensor  # [pairs]
    negatives: torch.Tensor  # [pairs / cfg.share, K]: one draw per group of `share` pairs


def keep_probability(counts: torch.Tensor, sample: float) -> torch.Tensor:
    """gensim's (and word2vec.c's) chance to keep each occurrence of a word when subsampling: with
    t = sample * corpus words, a word seen c times is kept with probability (sqrt(c / t) + 1) * t / c, capped
    at 1, so words rarer than about t are never dropped and "the" mostly is."""
    if sample <= 0:
        return torch.ones(len(counts))
    threshold = sample * float(counts.sum())
    c = counts.double().clamp_min(1)
    return ((c / threshold).sqrt() + 1).mul(threshold / c).clamp(max=1.0).float()


def expected_kept(counts: torch.Tensor, sample: float) -> float:
    """Words an epoch keeps on average after subsampling."""
    return float((keep_probability(counts, sample) * counts).sum())


def subsample_mask(
    corpus: torch.Tensor, counts: torch.Tensor, sample: float, generator: torch.Generator
) -> torch.Tensor:
    """Which occurrences an epoch keeps (as gensim: dropped words leave the stream, so windows reach past
    them); one uniform draw per word from ``generator``."""
    return torch.rand(len(corpus), generator=generator) < keep_probability(counts, sample)[corpus]


def expected_pairs(counts: torch.Tensor, cfg: SkipGramConfig) -> float:
    """Pairs an epoch trains on average (for the progress bar): kept words x contexts per word."""
    kept = expected_kept(counts, cfg.subsample)
    # a dynamic window of b ~ U{1..window} words each side holds 2 * (window + 1) / 2 context words
    return kept * (cfg.window + 1 if cfg.contexts == "dynamic" else cfg.contexts_per_target)


def draw_epoch(
    corpus: torch.Tensor, cfg: SkipGramConfig, noise: torch.Tensor, seed: int, epoch: int
) -> Epoch:
    generator = epoch_generator(seed, epoch)
    if cfg.subsample > 0:
        counts = torch.bincount(corpus, minlength=len(noise))
        corpus = corpus[subsample_mask(corpus, counts, cfg.subsample, generator)]
    n = len(corpus)
    positions = torch.randperm(n, generator=generator)
    offsets = torch.cat([torch.arange(-cfg.window, 0), torch.arange(1, cfg.window + 1)])
    if cfg.contexts == "dynamic":  # every word within b ~ U{1..window} of the target, b drawn per target
        reach = torch.randint(1, cfg.window + 1, (n,), generator=generator)
        inside = offsets.abs()[None, :] <= reach[:, None]  # [n, 2 * window]
        targets = corpus[positions].repeat_interleave(inside.sum(dim=1))
        contexts = corpus[(positions[:, None] + offsets) % n][inside]  # row-major: grouped by target
    else:  # the book: distinct offsets, the first `per_target` of a random ordering of the 2*window
        per_target = cfg.contexts_per_target
        choice = torch.rand(n, 2 * cfg.window, generator=generator).argsort(dim=1)[:, :per_target]
        targets = corpus[positions].repeat_interleave(per_target)
        contexts = corpus[(positions[:, None] + offsets[choice]) % n].flatten()  # the corpus wraps around
    groups = len(targets) // cfg.share  # the last < share pairs of the epoch are left out
    if groups == 0:
        raise DataUnavailableError(
            f"the corpus gives {len(targets)} (target, context) pairs, fewer than model.share={cfg.share}"
        )
    pairs = groups * cfg.share
    negatives = torch.multinomial(noise, groups * cfg.negatives, replacement=True, generator=generator)
    return Epoch(
        targets=targets[:pairs], contexts=contexts[:pairs], negatives=negatives.view(groups, cfg.negatives)
    )


@torch.no_grad()
def sgd_step(
    model: SkipGram,
    targets: torch.Tensor,
    contexts: torch.Tensor,
    negatives: torch.Tensor,
    log_kq: torch.Tensor | None,
    lr: float,
    damped: bool = False,
) -> torch.Tensor:
    """SGD on G groups of S pairs at once (``negatives``: [G, K], one draw per group); each group takes
    the step of the mean loss of its pairs. Returns the summed loss (a tensor: no host sync).

    ``damped``: each row's summed step is divided by 1 + (lr per pair) x h, h the sum over the row's terms
    in this step of sigmoid'(logit) x |other vector|^2 (the curvature of the loss along the row). A row
    touched once moves as with SGD; "the", drawn as a noise word for all S pairs of a group, takes about
    a Newton step instead of S full steps at once, which is what diverges at gensim's rate per pair."""
    groups, _ = negatives.shape
    flat_negatives = negatives.flatten()
    d = model.embed.shape[1]
    u = model.embed.index_select(0, targets).view(groups, -1, d)  # [G, S, d]; index_select beats []
    v = model.out.index_select(0, contexts).view(groups, -1, d)  # [G, S, d]
    noise = model.out.index_select(0, flat_negatives).view(groups, -1, d)  # [G, K, d]
    positive = (u * v).sum(dim=2)  # [G, S]
    negative = torch.bmm(u, noise.transpose(1, 2))  # [G, S, K]: what sharing the negatives buys
    if log_kq is not None:  # NCE: a bias per word and the log K q(w) correction
        positive = positive + (model.bias - log_kq)[contexts].view(groups, -1)
        negative = negative + (model.bias - log_kq)[negatives][:, None, :]
    loss = nn.functional.softplus(-positive).sum() + nn.functional.softplus(negative).sum()
    p_pos = torch.sigmoid(positive)
    g_pos = p_pos - 1.0  # d loss / d positive logit
    g_neg = torch.sigmoid(negative)  # d loss / d negative logits
    step = lr * groups / len(targets)  # per pair: each group's loss is the mean over its pairs, as the book
    grad_u = (g_pos[..., None] * v + torch.bmm(g_neg, noise)).view(-1, d)
    grad_v = (g_pos[..., None] * u).view(-1, d)
    grad_n = torch.bmm(g_neg.transpose(1, 2), u).view(-1, d)
    grad_b = g_pos.flatten(), g_neg.sum(dim=1).flatten()
    if damped:
        h_pos, h_neg = p_pos * (1 - p_pos), g_neg * (1 - g_neg)  # sigmoid' of every logit
        uu, vv, nn_ = (u * u).sum(2, keepdim=True), (v * v).sum(2), (noise * noise).sum(2, keepdim=True)
        h_in = model.embed.new_zeros(len(model.embed)).index_add_(
            0, targets, (h_pos * vv + torch.bmm(h_neg, nn_).squeeze(2)).flatten()
        )
        h_out = model.out.new_zeros(len(model.out)).index_add_(0, contexts, (h_pos * uu.squeeze(2)).flatten())
        h_out.index_add_(0, flat_negatives, torch.bmm(h_neg.transpose(1, 2), uu).flatten())
        damp_in, damp_out = 1 / (1 + step * h_in), 1 / (1 + step * h_out)
        grad_u = grad_u * damp_in[targets, None]
        grad_v, grad_n = grad_v * damp_out[contexts, None], grad_n * damp_out[flat_negatives, None]
        # a word's bias takes its output row's damping
        grad_b = grad_b[0] * damp_out[contexts], grad_b[1] * damp_out[flat_negatives]
    model.embed.index_add_(0, targets, grad_u, alpha=-step)
    model.out.index_add_(0, contexts, grad_v, alpha=-step)
    model.out.index_add_(0, flat_negatives, grad_n, alpha=-step)
    if log_kq is not None:
        model.bias.index_add_(0, contexts, grad_b[0], alpha=-step)
        model.bias.index_add_(0, flat_negatives, grad_b[1], alpha=-step)
    return loss


# ---- evaluation: analogies, WordSim-353, nearest neighbours ---------------------------------------


def unit_rows(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-12)


def eval_files(trainer: SkipGramTrainerConfig, data_dir: str | None) -> Path | None:
    """The folder with the evaluation files, or None when none is configured or in the mirror."""
    if trainer.eval_dir:
        folder = Path(trainer.eval_dir).expanduser()
        if not (folder / "questions-words.txt").is_file() or not (folder / "wordsim353.tsv").is_file():
            raise DataUnavailableError(
                f"trainer.eval_dir={trainer.eval_dir!r} lacks questions-words.txt or wordsim353.tsv"
            )
        return folder
    root = mirror_root(data_dir)
    folder = root / EVAL_FOLDER if root else None
    return folder if folder and (folder / "questions-words.txt").is_file() else None


@torch.no_grad()
def analogy_accuracy(vectors: torch.Tensor, index: dict[str, int], path: Path) -> tuple[float, int]:
    """3CosAdd accuracy on the questions whose four words are all in the vocabulary (and how many)."""
    rows = []
    for line in path.read_text().splitlines():
        words = line.lower().split()
        if len(words) == 4 and not line.startswith(":") and all(w in index for w in words):
            rows.append([index[w] for w in words])
    if not rows:
        return float("nan"), 0
    questions = torch.tensor(rows)
    unit = unit_rows(vectors.float())
    correct = 0
    for chunk in questions.split(2048):
        a, b, c, d = chunk.T
        scores = (unit[b] - unit[a] + unit[c]) @ unit.T
        scores.scatter_(1, chunk[:, :3], float("-inf"))  # the question words are not answers
        correct += int((scores.argmax(dim=1) == d).sum())
    return correct / len(rows), len(rows)


@torch.no_grad()
def wordsim_spearman(vectors: torch.Tensor, index: dict[str, int], path: Path) -> tuple[float, int]:
    from scipy.stats import spearmanr

    pairs, human = [], []
    for line in path.read_text().splitlines():
        parts = line.lower().split("\t")
        if len(parts) == 3 and not line.startswith("#") and parts[0] in index and parts[1] in index:
            pairs.append((index[parts[0]], index[parts[1]]))
            human.append(float(parts[2]))
    if len(pairs) < 3:
        return float("nan"), len(pairs)
    unit = unit_rows(vectors.float())
    first, second = torch.tensor(pairs).T
    cosine = (unit[first] * unit[second]).sum(dim=1)
    return float(spearmanr(cosine.numpy(), human).statistic), len(pairs)


def word_quality(vectors: torch.Tensor, index: dict[str, int], folder: Path | None) -> dict[str, float]:
    if folder is None:
        return {}
    analogy, questions = analogy_accuracy(vectors, index, folder / "questions-words.txt")
    rho, pairs = wordsim_spearman(vectors, index, folder / "wordsim353.tsv")
    return {
        "eval/analogy": analogy,
        "eval/analogy_questions": questions,
        "eval/wordsim": rho,
        "eval/wordsim_pairs": pairs,
    }


@torch.no_grad()
def nearest_neighbours(
    vectors: torch.Tensor, words: list[str], queries: torch.Tensor, k: int = 8
) -> list[str]:
    unit = unit_rows(vectors.float())
    scores = unit[queries] @ unit.T
    scores[torch.arange(len(queries)), queries] = float("-inf")
    best = scores.topk(min(k, len(vectors) - 1), dim=1).indices  # a tiny vocabulary has fewer words
    return [
        f"{words[q]} -> {', '.join(words[i] for i in row)}"
        for q, row in zip(queries.tolist(), best.tolist(), strict=True)
    ]


# ---- the two engines: what one step of an epoch trains -------------------------------------------


class MinibatchEngine:
    """The book's engine: the epoch's (target, context) pairs in minibatches of ``data.batch_size``, each
    ``model.share`` pairs sharing one draw of negatives, SGD written out in PyTorch (``sgd_step``) on the
    model's device."""

    def __init__(self, model: SkipGram, corpus: Corpus, cfg: SkipGramConfig, noise: torch.Tensor, batch: int):
        self.model, self.corpus, self.cfg, self.noise, self.batch = model, corpus, cfg, noise, batch
        log_kq = (noise * cfg.negatives).log() if cfg.loss == "nce" else None
        self.log_kq = log_kq.to(model.embed.device) if log_kq is not None else None
        self.draws: Epoch | None = None

    @staticmethod
    def expected_steps(corpus: Corpus, cfg: SkipGramConfig, batch: int) -> int:
        return math.ceil(expected_pairs(corpus.counts, cfg) / batch)

    def start_epoch(self, seed: int, epoch: int) -> int:
        """Draw the epoch (on the CPU: the same numbers whatever the device); returns its number of steps."""
        draws = draw_epoch(self.corpus.ids, self.cfg, self.noise, seed, epoch)
        device = self.model.embed.device
        self.draws = Epoch(draws.targets.to(device), draws.contexts.to(device), draws.negatives.to(device))
        return math.ceil(len(draws.targets) / self.batch)

    def step(self, index: int, lr: tuple[float, float]) -> tuple[torch.Tensor, int]:
        """Train step ``index`` at lr[0]; returns (summed loss, a tensor: no host sync; pairs)."""
        assert self.draws is not None
        share, pairs = self.cfg.share, len(self.draws.targets)
        lo, hi = index * self.batch, min((index + 1) * self.batch, pairs)
        loss = sgd_step(
            self.model,
            self.draws.targets[lo:hi],
            self.draws.contexts[lo:hi],
            self.draws.negatives[lo // share : hi // share],
            self.log_kq,
            lr[0],
            self.cfg.update == "damped",
        )
        return loss, hi - lo


class HogwildEngine:
    """word2vec.c's SGD, one step per target word, in the compiled kernel of ``_word2vec_hogwild.py``: a step
    is ``trainer.chunk_words`` target words of the epoch's subsampled stream, the lr decaying through it.
    The kernel works on numpy views of the (CPU) model's tables; building it compiles the kernel."""

    def __init__(
        self,
        model: SkipGram,
        corpus: Corpus,
        cfg: SkipGramConfig,
        noise: torch.Tensor,
        chunk: int,
        threads: int,
    ) -> None:
        from fdlcli.extras import require

        require("numba", "model.engine=hogwild", "word2vec")
        from fdlcli.experiments._word2vec_hogwild import HogwildSkipGram

        self.corpus, self.cfg, self.chunk = corpus, cfg, chunk
        self.kernel = HogwildSkipGram(model.embed.data, model.out.data, noise, threads)
        self.sentences = corpus.sentence_ids
        self.per_target = 0 if cfg.contexts == "dynamic" else cfg.contexts_per_target  # 0: shrunk windows
        self.stream: np.ndarray | None = None
        self.sentence: np.ndarray | None = None
        self.seed, self.epoch = 0, 0

    @staticmethod
    def expected_steps(corpus: Corpus, cfg: SkipGramConfig, chunk: int) -> int:
        return math.ceil(expected_kept(corpus.counts, cfg.subsample) / chunk)

    def start_epoch(self, seed: int, epoch: int) -> int:
        ids, sentences = self.corpus.ids, self.sentences
        if self.cfg.subsample > 0:
            kept = subsample_mask(ids, self.corpus.counts, self.cfg.subsample, epoch_generator(seed, epoch))
            ids, sentences = ids[kept], sentences[kept]
        self.stream, self.sentence = ids.numpy(), sentences.numpy()
        self.seed, self.epoch = seed, epoch
        return math.ceil(len(self.stream) / self.chunk)

    def step(self, index: int, lr: tuple[float, float]) -> tuple[float, int]:
        assert self.stream is not None
        span = (index * self.chunk, min((index + 1) * self.chunk, len(self.stream)))
        return self.kernel.train(
            self.stream,
            self.sentence,
            span,
            self.cfg.window,
            self.per_target,
            self.cfg.negatives,
            self.cfg.shared_targets,
            lr,
            (self.seed, self.epoch, index),
        )


def decayed_lr(lr: float, decay: bool, epochs_done: float, epochs: int) -> float:
    """The rate after ``epochs_done`` (fractional) epochs: constant, or linear to 0 as gensim's."""
    return lr * max(1e-4, 1.0 - epochs_done / epochs) if decay else lr


def ignored_setting(cfg: RunConfig) -> str | None:
    """A setting of another section that skip-gram could not honour (refused at validation, never silently
    ignored)."""
    model_cfg: SkipGramConfig = cfg.model
    if cfg.data.batch_size % model_cfg.share:
        return f"data.batch_size={cfg.data.batch_size} must be a multiple of model.share={model_cfg.share}"
    optim = cfg.optim
    if optim.name != "sgd" or optim.momentum or optim.nesterov or optim.weight_decay:
        return (
            f"optim.name={optim.name} optim.momentum={optim.momentum} optim.nesterov={optim.nesterov} "
            f"optim.weight_decay={optim.weight_decay}: skip-gram's SGD is written out by hand and takes "
            "optim.lr only (model.lr_decay decays it)"
        )
    if model_cfg.engine == "hogwild" and cfg.trainer.device not in ("auto", "cpu"):
        return (
            f"trainer.device={cfg.trainer.device}: model.engine=hogwild runs on the CPU only "
            "(model.engine=minibatch runs on any device)"
        )
    return None


# ---- the task: skip-gram on the engine's loop ------------------------------------------------------


class SkipGramTask(Task):
    """Epochs of skip-gram training, either engine. An epoch is one draw: its pairs (minibatch engine) or its
    subsampled stream (Hogwild), so :meth:`start_epoch` returns a number of steps that varies with
    subsampling and dynamic windows. A step updates the tables itself and hands the loop its summed loss
    and the pairs it counts, so ``train/cost`` is the mean loss per pair. Every epoch ends with the analogy
    and WordSim scores and the neighbours of a few frequent words; those scores come from test sets, so no
    checkpoint is chosen by them (``trainer.monitor: null``)."""

    unit = "epochs"
    supports = frozenset({"checkpoint_every", "data_limits"})  # no autograd, no optimizer: no bf16, compile

    @classmethod
    def check_config(cls, config: RunConfig) -> str | None:
        return ignored_setting(config)

    def setup(self) -> None:
        cfg, trainer = self.config, self.config.trainer
        model_cfg: SkipGramConfig = cfg.model
        if model_cfg.engine == "hogwild":  # trainer.device=auto: the CPU, the kernel's only device
            self.device = torch.device("cpu")
        self.corpus = corpus = load_corpus(cfg.data)
        self.folder = eval_files(trainer, cfg.data.dir)
        if self.folder is None:
            self.message(
                "no word2vec-eval folder in the data mirror (or trainer.eval_dir): analogy/WordSim skipped"
            )
        self.model = SkipGram(len(corpus.words), model_cfg).to(self.device)  # initialized from the seeded RNG
        self.noise = noise_distribution(corpus.counts, model_cfg)
        # the words whose neighbours are shown: drawn once from the seed among the 500 most frequent
        self.top = min(500, len(corpus.words))
        self.shown = torch.randperm(self.top, generator=torch.Generator().manual_seed(cfg.seed))[
            : trainer.neighbour_words
        ]
        # built by the first epoch (building the Hogwild engine compiles its kernel), so never for fdl eval
        self.engine: MinibatchEngine | HogwildEngine | None = None
        self.epoch, self.steps, self.lr = 0, 0, cfg.optim.lr
        # words/s: raw corpus words (subsampled ones included, as gensim counts them) over the time of the
        # epochs' steps (no evaluation, no epoch draw, no kernel compilation)
        self.word_seconds, self.words_trained = 0.0, 0
        self.epoch_started: float | None = None
        self.epoch_from_start = False  # the epoch's first step ran in this process: its words/s is logged
        self.epoch_words_per_s: float | None = None

    def build_engine(self) -> MinibatchEngine | HogwildEngine:
        cfg = self.config
        if cfg.model.engine == "hogwild":
            threads = torch.get_num_threads()  # trainer.threads, as the run session configured it
            return HogwildEngine(
                self.model, self.corpus, cfg.model, self.noise, cfg.trainer.chunk_words, threads
            )
        return MinibatchEngine(self.model, self.corpus, cfg.model, self.noise, cfg.data.batch_size)

    def expected_steps(self) -> int:
        """Steps per epoch, on average (subsampling and dynamic windows make each epoch's count a draw)."""
        cfg = self.config
        if cfg.model.engine == "hogwild":
            return HogwildEngine.expected_steps(self.corpus, cfg.model, cfg.trainer.chunk_words)
        return MinibatchEngine.expected_steps(self.corpus, cfg.model, cfg.data.batch_size)

    def describe(self) -> str:
        cfg, corpus = self.config, self.corpus
        steps = self.expected_steps()
        if cfg.model.engine == "hogwild":
            per_epoch = (
                f"{steps:,} steps of {cfg.trainer.chunk_words:,} target words per epoch, "
                f"{torch.get_num_threads()} Hogwild threads"
            )
        else:
            per_epoch = f"{steps:,} minibatches of {cfg.data.batch_size} pairs per epoch"
        drawn = cfg.model.subsample or cfg.model.contexts == "dynamic"
        return f"corpus {len(corpus.ids):,} words, vocabulary {len(corpus.words):,}; {per_epoch}" + (
            " (on average)" if drawn else ""
        )

    def total_steps(self) -> int:
        return self.expected_steps() * self.config.trainer.epochs

    # ---- the work --------------------------------------------------------------------------------------

    def start_epoch(self, epoch: int) -> int:
        if self.engine is None:
            self.engine = self.build_engine()
        self.epoch = epoch
        self.steps = self.engine.start_epoch(self.config.seed, epoch)
        self.epoch_started, self.epoch_from_start = time.monotonic(), False
        return self.steps

    def learning_rate(self, index: float) -> float:
        """The rate at step ``index`` of the current epoch (model.lr_decay: linear to 0 over the run)."""
        cfg = self.config
        done = self.epoch + index / self.steps
        return decayed_lr(cfg.optim.lr, cfg.model.lr_decay, done, cfg.trainer.epochs)

    def train_step(self, step: int, index: int) -> StepOutput:
        assert self.engine is not None
        every = self.config.trainer.neighbours_every
        self.epoch_from_start |= index == 0
        self.lr = self.learning_rate(index)
        # the Hogwild kernel moves its rate linearly to the next step's through the chunk
        loss, pairs = self.engine.step(index, (self.lr, self.learning_rate(index + 1)))
        if index + 1 == self.steps:
            self.end_epoch_timing()
        elif every and (step + 1) % every == 0:
            self.show_neighbours(f"step {step + 1}")
        return StepOutput(cost=loss, weight=pairs)

    def end_epoch_timing(self) -> None:
        assert self.epoch_started is not None
        seconds = time.monotonic() - self.epoch_started
        self.word_seconds += seconds
        self.words_trained += len(self.corpus.ids)
        if self.epoch_from_start:  # a resumed epoch's time would not cover its words
            self.epoch_words_per_s = len(self.corpus.ids) / max(1e-9, seconds)
        self.epoch_started = None

    def window_metrics(self, cost: float) -> dict[str, float]:
        metrics = {"train/lr": self.lr}
        if self.epoch_words_per_s is not None:  # logged with the epoch's last training cost
            metrics["train/words_per_s"] = self.epoch_words_per_s
            self.epoch_words_per_s = None
        return metrics

    # ---- evaluation ------------------------------------------------------------------------------------

    def evaluate(self, split: str) -> dict[str, float]:
        """Analogy and WordSim scores (the split does not apply: they are the evaluation files' own)."""
        if self.folder is None:
            if self.engine is not None:  # training: said once at setup, the epochs go on without scores
                return {}
            raise DataUnavailableError("no word2vec-eval folder: set FDL_DATA_DIR or trainer.eval_dir")
        return word_quality(self.model.embed.detach().cpu(), self.corpus.index, self.folder)

    def after_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        if "eval/analogy" in metrics:
            analogy, questions = metrics["eval/analogy"], metrics["eval/analogy_questions"]
            rho, pairs = metrics["eval/wordsim"], metrics["eval/wordsim_pairs"]
            self.message(
                f"analogy {100 * analogy:.2f}% of {questions:.0f} questions, "
                f"WordSim rho {rho:.3f} on {pairs:.0f} pairs"
            )
        self.show_neighbours(f"epoch {int(metrics['epoch'])}")

    def show_neighbours(self, label: str) -> None:
        lines = nearest_neighbours(self.model.embed.detach().cpu(), self.corpus.words, self.shown)
        if self.run is not None:
            with open(self.run.artifacts_dir / "neighbours.txt", "a") as handle:
                handle.write(f"# {label}\n" + "\n".join(lines) + "\n")
        self.message(f"nearest neighbours ({label}):\n  " + "\n  ".join(lines))

    # ---- state -----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        running = time.monotonic() - self.epoch_started if self.epoch_started is not None else 0.0
        return {"word_seconds": self.word_seconds + running, "words_trained": self.words_trained}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.word_seconds = float(state.get("word_seconds", 0.0))
        self.words_trained = int(state.get("words_trained", 0))

    # ---- the end ---------------------------------------------------------------------------------------

    def summary_fields(self) -> dict[str, Any]:
        return {
            "corpus_words": len(self.corpus.ids),
            "vocabulary": len(self.corpus.words),
            "words_per_s": self.words_trained / max(1e-9, self.word_seconds),
        }

    def finish(self, artifacts: Path) -> dict[str, Any]:
        vectors, words = self.model.embed.detach().cpu(), self.corpus.words
        export_word2vec(vectors, words, artifacts / "embeddings.txt")
        if self.config.trainer.tsne and self.top >= 3:  # t-SNE needs a few points
            from fdlcli.analysis.embeddings import tsne_plot

            tsne_plot(vectors[: self.top], words[: self.top], artifacts / "tsne.png", self.config.seed)
        return {}

    def done_message(self, summary: dict[str, Any]) -> str:
        final = summary["final"]
        quality = [
            f"{name[5:]} {final[name]:.4g}" for name in ("eval/analogy", "eval/wordsim") if name in final
        ]
        return f"done: {summary['words_per_s']:,.0f} words/s" + "".join(f", {q}" for q in quality)


def export_word2vec(vectors: torch.Tensor, words: list[str], path: Path) -> None:
    """The word2vec text format: a "<count> <dim>" header, then one "word v1 v2 ..." line per word."""
    lines = [f"{len(words)} {vectors.shape[1]}"]
    lines += [
        f"{w} " + " ".join(f"{x:.6f}" for x in row) for w, row in zip(words, vectors.tolist(), strict=True)
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")


for name, description in [
    ("skipgram", "skip-gram word2vec, NCE with 64 shared negatives, SGD"),
    ("skipgram-word2vec", "skip-gram, word2vec.c's recipe in a compiled Hogwild kernel (beyond the book)"),
]:
    register(
        ExperimentSpec(
            name=name,
            chapter=6,
            dataset="PTB (text8 / any text file by config)",
            book_result="neighbours such as eight -> six, seven, five, nine (text8, 5 epochs)",
            description=description,
            model_config=SkipGramConfig,
            model_group="skipgram",
            task=SkipGramTask,
            data_config=TextDataConfig,
            trainer_config=SkipGramTrainerConfig,
        )
    )
