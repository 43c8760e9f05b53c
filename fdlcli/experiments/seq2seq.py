"""Chapter 7, part 2: English -> French translation with an attentional encoder-decoder (``translate-en-fr``).

Book (TF 1.x ``translate.py`` on WMT'15 giga-fren): word-level vocabularies of 40,000, buckets (5,10),
(10,15), (20,25), (40,50), source reversed, GO and EOS tokens, padding weighted 0 in the loss, a 3-layer
1024-unit GRU encoder-decoder with attention (``embedding_attention_seq2seq``), sampled softmax over 512
words, SGD lr 0.5 multiplied by 0.99 whenever the loss of the last 200 steps exceeds the three before,
gradient-norm clip 5, batch 64; greedy decoding from stdin and an attention heatmap (figure 7-33). Eight
M40 GPUs for four days took the training perplexity from ~6 to ~4.

Here (conf/model/seq2seq.yaml, CPU-sized): Multi30k en-fr from the mirror, the same buckets and tokens,
one GRU layer of 256 units, vocabularies of 6,000 words with the full softmax, Adam lr 1e-3, clip 5,
batch 64 (conf/model/seq2seq-book.yaml and conf/optim/... give the book's sizes and SGD rule).

The model is the TF attention decoder: the decoder input at step t is [embedding of y_{t-1}; attention
context of step t-1] ("input feeding"); the top decoder state queries the encoder outputs with additive
(Bahdanau) attention, v^T tanh(W_k h_enc + W_q h_dec), masked at padding; the output layer reads
tanh(W [h_dec; context]). Training runs the encoder once per batch (packed, so padding never enters a
state) and the decoder step by step with teacher forcing; the output projection of all steps is one
matrix product. Decoding: greedy for whole batches, and beam search that keeps all beams of a sentence
in one batch (``beam_search``; ``reference_beam_search`` is the same search one hypothesis at a time,
the baseline of benchmarks/translate_latency.py).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fdlcli.config import RunConfig, TrainerConfig
from fdlcli.data.translation import (
    EOS_ID,
    GO_ID,
    PAD_ID,
    VOCAB_FILE,
    ParallelData,
    ParallelSplit,
    TranslationDataConfig,
    Vocab,
    bucket_batches,
    detokenize,
    load_parallel,
    load_vocabs,
    save_vocabs,
    tokenize,
)
from fdlcli.engine.devices import resolve_device
from fdlcli.engine.loop import load_weights
from fdlcli.engine.optim import build_optimizer, set_lr
from fdlcli.engine.seed import epoch_generator
from fdlcli.engine.task import StepOutput, Task
from fdlcli.registry import ExperimentSpec, register
from fdlcli.runs import Run


@dataclass
class Seq2SeqConfig:
    cell: str = "gru"  # gru | lstm
    embedding: int = 256
    hidden: int = 256
    layers: int = 1
    bidirectional: bool = False  # the book's encoder reads one way (the reversed source)
    attention: int = 256  # width of the additive attention's hidden layer
    dropout: float = 0.2
    sampled_softmax: int = 0  # training loss over this many sampled words (book: 512); 0 = full softmax

    def check(self) -> str | None:
        if self.sampled_softmax < 0:
            return f"model.sampled_softmax={self.sampled_softmax}: it must be 0 (off) or positive"
        if self.cell not in ("gru", "lstm"):
            return f"model.cell={self.cell!r}; choose from: gru, lstm"
        if min(self.embedding, self.hidden, self.layers, self.attention) <= 0:
            return "model.embedding, hidden, layers and attention must be positive"
        if not 0.0 <= self.dropout < 1.0:
            return f"model.dropout={self.dropout}: it must lie in [0, 1)"
        return None


@dataclass
class TranslateTrainerConfig(TrainerConfig):
    lr_decay: float = 1.0  # the book's rule: lr *= lr_decay when a window's loss exceeds the 3 before
    decay_every: int = 200  # steps per loss window of that rule (the book's steps_per_checkpoint)
    beam: int = 5  # beam width of the final test BLEU (and the default of `fdl translate`)
    length_penalty: float = 1.0  # beam hypotheses ranked by log p / length ** length_penalty
    max_output: int = 0  # longest translation in tokens; 0 = the largest target bucket
    attention_sentence: int = 0  # test sentence whose attention map is saved (artifacts/attention.png)

    def check(self) -> str | None:
        if self.beam <= 0 or self.decay_every <= 0:
            return "trainer.beam and trainer.decay_every must be positive"
        if not 0.0 < self.lr_decay <= 1.0:
            return f"trainer.lr_decay={self.lr_decay}: it must lie in (0, 1]"
        return None


# ---- the model -----------------------------------------------------------------------------------


@dataclass
class Memory:
    """What the decoder attends to: encoder outputs, their attention keys, and the padding mask."""

    outputs: torch.Tensor  # [B, S, enc]
    keys: torch.Tensor  # [B, S, A]
    mask: torch.Tensor  # [B, S] true at real tokens

    def take(self, index: torch.Tensor) -> Memory:
        return Memory(self.outputs[index], self.keys[index], self.mask[index])


State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def take_state(state: State, index: torch.Tensor) -> State:
    """Rows ``index`` of a recurrent state (batch is dim 1)."""
    if isinstance(state, tuple):
        return state[0][:, index], state[1][:, index]
    return state[:, index]


class Seq2Seq(nn.Module):
    def __init__(self, source_vocab: int, target_vocab: int, cfg: Seq2SeqConfig) -> None:
        super().__init__()
        self.cfg = cfg
        rnn = nn.GRU if cfg.cell == "gru" else nn.LSTM
        between = cfg.dropout if cfg.layers > 1 else 0.0
        self.encoded = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.source_embed = nn.Embedding(source_vocab, cfg.embedding, padding_idx=PAD_ID)
        self.target_embed = nn.Embedding(target_vocab, cfg.embedding, padding_idx=PAD_ID)
        self.encoder = rnn(
            cfg.embedding, cfg.hidden, cfg.layers, batch_first=True, dropout=between,
            bidirectional=cfg.bidirectional,
        )  # fmt: skip
        self.bridge = nn.Linear(self.encoded, cfg.hidden)  # final encoder state -> first decoder state
        self.decoder = rnn(
            cfg.embedding + self.encoded, cfg.hidden, cfg.layers, batch_first=True, dropout=between
        )
        self.attend_keys = nn.Linear(self.encoded, cfg.attention, bias=False)
        self.attend_query = nn.Linear(cfg.hidden, cfg.attention)
        self.attend_score = nn.Linear(cfg.attention, 1, bias=False)
        self.combine = nn.Linear(cfg.hidden + self.encoded, cfg.hidden)
        self.project = nn.Linear(cfg.hidden, target_vocab)
        self.drop = nn.Dropout(cfg.dropout)

    def encode(self, source: torch.Tensor, lengths: torch.Tensor) -> tuple[Memory, State]:
        """``source`` [B, S] padded at the end, ``lengths`` [B] on the CPU (all positive)."""
        batch, width = source.shape
        packed = pack_padded_sequence(
            self.drop(self.source_embed(source)), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        packed_out, final = self.encoder(packed)
        outputs, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=width)
        last = final[0] if isinstance(final, tuple) else final  # [layers * directions, B, H]
        if self.cfg.bidirectional:  # [layer, direction, B, H] -> [layer, B, 2H]
            last = (
                last.view(self.cfg.layers, 2, batch, -1)
                .permute(0, 2, 1, 3)
                .reshape(self.cfg.layers, batch, -1)
            )
        first = torch.tanh(self.bridge(last))
        state: State = (first, torch.zeros_like(first)) if self.cfg.cell == "lstm" else first
        # the mask comes from the lengths, so a source of one padding token (an empty line) still works
        mask = torch.arange(width, device=source.device)[None] < lengths.to(source.device)[:, None]
        return Memory(outputs, self.attend_keys(outputs), mask), state

    def step(
        self, tokens: torch.Tensor, context: torch.Tensor, state: State, memory: Memory
    ) -> tuple[torch.Tensor, torch.Tensor, State, torch.Tensor]:
        """One decoder step: (output features [B, H], new context, new state, attention weights [B, S])."""
        inputs = torch.cat([self.drop(self.target_embed(tokens)), context], dim=1)
        output, state = self.decoder(inputs[:, None], state)
        features, context, weights = self.attend(output[:, 0], memory.keys, memory.outputs, memory.mask)
        return features, context, state, weights

    def attend(
        self, top: torch.Tensor, keys: torch.Tensor, outputs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The top decoder state [B, H] queries the encoder outputs: (output features, context, weights)."""
        scores = self.attend_score(torch.tanh(keys + self.attend_query(top)[:, None])).squeeze(2)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=1)
        context = torch.bmm(weights[:, None], outputs)[:, 0]
        features = torch.tanh(self.combine(torch.cat([top, context], dim=1)))
        return features, context, weights

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(self.drop(features))

    def features(self, source: torch.Tensor, lengths: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced output features [B, T, H] for decoder inputs ``target_in`` [B, T] (GO + target)."""
        memory, state = self.encode(source, lengths)
        context = memory.outputs.new_zeros(len(source), self.encoded)
        features = []
        for t in range(target_in.shape[1]):
            out, context, state, _ = self.step(target_in[:, t], context, state, memory)
            features.append(out)
        return torch.stack(features, dim=1)

    def forward(self, source: torch.Tensor, lengths: torch.Tensor, target_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, T, V]."""
        return self.logits(self.features(source, lengths, target_in))


# ---- batches, loss, perplexity -------------------------------------------------------------------


def make_batch(split: ParallelSplit, index: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, ...]:
    """(source, source lengths on CPU, decoder input, decoder target), trimmed to the batch's longest."""
    source_len, target_len = split.source.lengths[index], split.target.lengths[index]
    source = split.source.ids[index, : int(source_len.max())].to(device)
    target = split.target.ids[index, : int(target_len.max())].to(device)
    target_in = torch.cat([torch.full_like(target[:, :1], GO_ID), target[:, :-1]], dim=1)
    target_in = target_in.masked_fill(target_in == EOS_ID, PAD_ID)  # EOS is never an input
    return source, source_len, target_in, target


def token_loss(model: Seq2Seq, batch: tuple[torch.Tensor, ...], reduction: str = "mean") -> torch.Tensor:
    source, source_len, target_in, target = batch
    features = model.features(source, source_len, target_in)
    if model.training and model.cfg.sampled_softmax:
        real = target != PAD_ID  # padding positions weigh 0, as the book's target_weights
        return sampled_softmax_loss(model, features[real], target[real], model.cfg.sampled_softmax)
    logits = model.logits(features)
    return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=PAD_ID, reduction=reduction)


def sampled_softmax_loss(
    model: Seq2Seq, features: torch.Tensor, targets: torch.Tensor, samples: int
) -> torch.Tensor:
    """The book's training softmax (TF ``sampled_softmax_loss``): the true word against ``samples`` words
    drawn once per batch from the log-uniform (Zipfian) distribution over frequency-ranked ids, every
    logit corrected by -log(expected count), accidental hits of the true word removed."""
    weight, bias = model.project.weight, model.project.bias
    vocab = len(weight)
    ranks = torch.arange(vocab, dtype=torch.float64, device=features.device)
    proposal = (torch.log((ranks + 2) / (ranks + 1)) / math.log(vocab + 1)).float()
    sampled = torch.multinomial(proposal, samples, replacement=True)  # the global RNG: resumes exactly
    log_expected = torch.log(samples * proposal)
    hidden = model.drop(features)
    true_logits = (hidden * weight[targets]).sum(dim=1) + bias[targets] - log_expected[targets]
    sampled_logits = hidden @ weight[sampled].T + bias[sampled] - log_expected[sampled]
    sampled_logits = sampled_logits.masked_fill(sampled[None] == targets[:, None], float("-inf"))
    logits = torch.cat([true_logits[:, None], sampled_logits], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


@torch.no_grad()
def perplexity(
    model: Seq2Seq, split: ParallelSplit, batch_size: int, device: torch.device
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    order = torch.argsort(split.source.lengths)  # similar lengths together: little padding
    for index in order.split(batch_size):
        batch = make_batch(split, index, device)
        total += float(token_loss(model, batch, reduction="sum"))
        tokens += int((batch[3] != PAD_ID).sum())
    model.train(was_training)
    cost = total / max(1, tokens)
    return {"cost": cost, "perplexity": math.exp(min(cost, 50.0))}


# ---- decoding ------------------------------------------------------------------------------------


@torch.no_grad()
def greedy(
    model: Seq2Seq, source: torch.Tensor, lengths: torch.Tensor, max_len: int
) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy translations of a batch (ids without EOS) and the attention weights [B, T, S]."""
    memory, state = model.encode(source, lengths)
    tokens = torch.full((len(source),), GO_ID, dtype=torch.int64, device=source.device)
    context = memory.outputs.new_zeros(len(source), model.encoded)
    outputs, attention = [], []
    done = torch.zeros(len(source), dtype=torch.bool, device=source.device)
    for _ in range(max_len):
        features, context, state, weights = model.step(tokens, context, state, memory)
        tokens = model.logits(features).argmax(dim=1)
        outputs.append(tokens)
        attention.append(weights)
        done |= tokens == EOS_ID
        if bool(done.all()):
            break
    rows = torch.stack(outputs, dim=1).tolist()
    return [row[: row.index(EOS_ID)] if EOS_ID in row else row for row in rows], torch.stack(attention, 1)


@dataclass
class Hypothesis:
    ids: list[int]  # without EOS
    log_prob: float
    score: float  # log_prob / length ** length_penalty (the ranking)
    attention: torch.Tensor  # [len(ids) + 1, S]: one row per output token, EOS included


def _finish(ids: list[int], log_prob: float, attention: torch.Tensor, penalty: float) -> Hypothesis:
    return Hypothesis(ids, log_prob, log_prob / (len(ids) + 1) ** penalty, attention)


@torch.no_grad()
def beam_search(
    model: Seq2Seq, source: list[int], width: int, max_len: int, penalty: float = 1.0
) -> list[Hypothesis]:
    """Beam search for one sentence with all live beams as one batch; best first.

    Each step extends every live hypothesis by every word and keeps the best ``width - finished``
    candidates; a candidate ending in EOS is finished, so the beam shrinks as hypotheses finish."""
    device = next(model.parameters()).device
    ids = torch.tensor([source], device=device)
    memory, state = model.encode(ids, torch.tensor([len(source)]))
    tokens = torch.tensor([GO_ID], device=device)
    context = memory.outputs.new_zeros(1, model.encoded)
    scores = torch.zeros(1, device=device)
    history: list[list[int]] = [[]]
    attention = memory.outputs.new_zeros(1, 0, len(source))
    finished: list[Hypothesis] = []
    for _ in range(max_len):
        live = len(history)
        shared = Memory(*(t.expand(live, *t.shape[1:]) for t in (memory.outputs, memory.keys, memory.mask)))
        features, context, state, weights = model.step(tokens, context, state, shared)
        log_probs = model.logits(features).log_softmax(dim=1)
        vocab = log_probs.shape[1]
        best, flat = (scores[:, None] + log_probs).flatten().topk(width - len(finished))
        attention = torch.cat([attention, weights[:, None]], dim=1)
        keep_rows, keep_words, keep_scores = [], [], []
        for score, row, word in zip(
            best.tolist(), (flat // vocab).tolist(), (flat % vocab).tolist(), strict=True
        ):
            if word == EOS_ID:
                finished.append(_finish(history[row], score, attention[row].cpu(), penalty))
            else:
                keep_rows.append(row)
                keep_words.append(word)
                keep_scores.append(score)
        if not keep_rows:
            break
        rows = torch.tensor(keep_rows, device=device)
        history = [history[r] + [w] for r, w in zip(keep_rows, keep_words, strict=True)]
        tokens, scores = torch.tensor(keep_words, device=device), torch.tensor(keep_scores, device=device)
        context, state, attention = context[rows], take_state(state, rows), attention[rows]
    else:  # out of steps: the unfinished hypotheses compete as they are
        finished += [
            _finish(h, s, a.cpu(), penalty)
            for h, s, a in zip(history, scores.tolist(), attention, strict=True)
        ]
    return sorted(finished, key=lambda h: h.score, reverse=True)


@torch.no_grad()
def reference_beam_search(
    model: Seq2Seq, source: list[int], width: int, max_len: int, penalty: float = 1.0
) -> list[Hypothesis]:
    """The same search as :func:`beam_search`, one hypothesis per decoder call (the naive baseline)."""
    device = next(model.parameters()).device
    memory, first_state = model.encode(torch.tensor([source], device=device), torch.tensor([len(source)]))
    # a live hypothesis: (ids, log prob, next input token, context, state, attention rows)
    live = [([], 0.0, GO_ID, memory.outputs.new_zeros(1, model.encoded), first_state, [])]
    finished: list[Hypothesis] = []
    for _ in range(max_len):
        candidates = []
        for ids, log_prob, token, context, state, rows in live:
            features, new_context, new_state, weights = model.step(
                torch.tensor([token], device=device), context, state, memory
            )
            log_probs = model.logits(features).log_softmax(dim=1)[0]
            candidates.append((log_prob + log_probs, ids, new_context, new_state, [*rows, weights[0]]))
        vocab = len(candidates[0][0])
        best, flat = torch.cat([c[0] for c in candidates]).topk(width - len(finished))
        new_live = []
        for score, position in zip(best.tolist(), flat.tolist(), strict=True):
            _, ids, context, state, rows = candidates[position // vocab]
            word = position % vocab
            if word == EOS_ID:
                finished.append(_finish(ids, score, torch.stack(rows).cpu(), penalty))
            else:
                new_live.append(([*ids, word], score, word, context, state, rows))
        live = new_live
        if not live:
            break
    else:
        finished += [_finish(ids, s, torch.stack(rows).cpu(), penalty) for ids, s, _, _, _, rows in live]
    return sorted(finished, key=lambda h: h.score, reverse=True)


# Two BLEU figures: "bleu" is the standard one (sacreBLEU's defaults: cased, its 13a tokenizer) of the
# detokenized translations against the references as the dataset writes them, comparable with published
# scores; "bleu_tok" is BLEU of our own lowercased tokens against the tokenized references (sacreBLEU with
# tokenize="none"), which runs higher and compares fdl runs with each other only.
BLEU_OPTIONS: dict[str, dict[str, Any]] = {"bleu": {}, "bleu_tok": {"tokenize": "none", "force": True}}


def corpus_bleu(outputs: list[list[str]], split: ParallelSplit) -> dict[str, float]:
    """``bleu`` and ``bleu_tok`` (see BLEU_OPTIONS) of the translations ``outputs`` (token lists)."""
    from sacrebleu.metrics import BLEU

    detokenized = [detokenize(tokens, split.language) for tokens in outputs]
    tokenized = [" ".join(tokens) for tokens in outputs]
    return {
        "bleu": float(BLEU(**BLEU_OPTIONS["bleu"]).corpus_score(detokenized, [split.texts]).score),
        "bleu_tok": float(BLEU(**BLEU_OPTIONS["bleu_tok"]).corpus_score(tokenized, [split.references]).score),
    }


def bleu_signatures() -> dict[str, str]:
    """sacreBLEU's signature of each BLEU figure (its options and version), recorded with the scores."""
    from sacrebleu.metrics import BLEU

    signatures = {}
    for name, options in BLEU_OPTIONS.items():
        scorer = BLEU(**options)
        scorer.corpus_score(["a"], [["a"]])  # the signature names the number of references: one
        signatures[name] = str(scorer.get_signature())
    return signatures


def translate_split(
    model: Seq2Seq, split: ParallelSplit, vocab: Vocab, max_len: int, device: torch.device,
    beam: int = 1, penalty: float = 1.0, batch_size: int = 256,
) -> list[list[str]]:  # fmt: skip
    """The translation (target tokens) of every source sentence of ``split`` (greedy when beam is 1)."""
    was_training = model.training
    model.eval()
    lengths = split.source.lengths.clamp_min(1)  # an empty source reads one padding token
    out: list[list[int]] = [[] for _ in range(len(lengths))]
    if beam == 1:
        order = torch.argsort(lengths)
        for index in order.split(batch_size):
            width = int(lengths[index].max())
            ids, _ = greedy(model, split.source.ids[index, :width].to(device), lengths[index], max_len)
            for row, translation in zip(index.tolist(), ids, strict=True):
                out[row] = translation
    else:
        for row in range(len(lengths)):
            source = split.source.ids[row, : int(lengths[row])].tolist()
            out[row] = beam_search(model, source, beam, max_len, penalty)[0].ids
    model.train(was_training)
    return [vocab.decode(ids) for ids in out]


def bleu_metrics(
    model: Seq2Seq, split: ParallelSplit, vocab: Vocab, trainer: TranslateTrainerConfig, max_len: int,
    device: torch.device, beam: bool,
) -> dict[str, float]:  # fmt: skip
    """Greedy ``bleu`` and ``bleu_tok``; with ``beam``, also ``bleu_beam<N>`` and ``bleu_tok_beam<N>``."""
    metrics = corpus_bleu(translate_split(model, split, vocab, max_len, device), split)
    if beam:
        outputs = translate_split(model, split, vocab, max_len, device, trainer.beam, trainer.length_penalty)
        metrics |= {f"{name}_beam{trainer.beam}": v for name, v in corpus_bleu(outputs, split).items()}
    return metrics


# ---- training ------------------------------------------------------------------------------------


def build_model(cfg: RunConfig, source: Vocab, target: Vocab) -> Seq2Seq:
    model = Seq2Seq(len(source), len(target), cfg.model)
    for name, param in model.named_parameters():  # TF's seq2seq: uniform(-0.1, 0.1)-ish small weights
        if "embed" in name or param.dim() > 1:
            nn.init.uniform_(param, -0.1, 0.1)
    return model


def output_limit(cfg: RunConfig) -> int:
    return cfg.trainer.max_output or cfg.data.max_target


@dataclass
class LossPlateauDecay:
    """The book's learning-rate rule: after every window of ``decay_every`` steps, if the window's mean
    loss exceeds the largest of the three windows before it, lr *= ``decay``."""

    lr: float
    decay: float
    losses: list[float] = field(default_factory=list)  # mean losses of the last three windows

    def end_window(self, mean_loss: float) -> float:
        """Close a window; returns the learning rate from now on."""
        if self.decay < 1.0 and len(self.losses) > 2 and mean_loss > max(self.losses[-3:]):
            self.lr *= self.decay
        self.losses = [*self.losses[-2:], mean_loss]
        return self.lr


class TranslationTask(Task):
    """Epochs of the book's bucketed minibatches (a function of (seed, epoch)); validation perplexity and
    greedy BLEU after each epoch; the best model's test perplexity and greedy and beam BLEU at the end,
    then its attention map (book figure 7-33)."""

    unit = "epochs"
    supports = frozenset({"precision", "compile", "checkpoint_every", "data_limits"})
    test_checkpoints = ("best",)

    def setup(self) -> None:
        cfg = self.config
        # a resumed (or evaluated) run keeps the vocabularies it was trained with: vocab.json is written
        # once, by the fresh run, and never rewritten
        run_dir = self.run.path if self.run is not None else None
        saved = run_dir is not None and (run_dir / VOCAB_FILE).is_file()
        self.data = load_parallel(cfg.data, load_vocabs(run_dir) if saved and run_dir else None)
        if run_dir is not None and not saved:
            save_vocabs(run_dir, self.data.source_vocab, self.data.target_vocab)
        self.model = build_model(cfg, self.data.source_vocab, self.data.target_vocab).to(self.device)
        self.optimizer = build_optimizer(cfg.optim, self.model.parameters())
        self.lr_rule = LossPlateauDecay(cfg.optim.lr, cfg.trainer.lr_decay)
        # the loss summed since the book rule's last window closed (on the device: no host sync per step)
        self.decay_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.batches: list[torch.Tensor] = []
        self.decode_seconds: float | None = None

    def describe(self) -> str:
        data = self.data
        n_params = sum(p.numel() for p in self.model.parameters())
        return (
            f"{len(data.train.source):,} training pairs ({data.dropped} longer than the buckets left out), "
            f"vocabularies {len(data.source_vocab):,} / {len(data.target_vocab):,}, {n_params:,} parameters"
        )

    def compile(self) -> None:
        # training runs the decoder one step at a time, and dynamo does not trace GRU/LSTM modules: compile
        # the rest of a step, the attention and the output layer (dynamic: batch and source widths vary).
        # Evaluation stays eager: its shapes (beams of one, expanded memory, no grad) would recompile often.
        model = self.model
        for name in ("attend", "logits"):
            eager = getattr(model, name)
            compiled = torch.compile(eager, dynamic=True)
            setattr(model, name, lambda *args, e=eager, c=compiled: c(*args) if model.training else e(*args))

    # ---- the work ------------------------------------------------------------------------------------

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """The minibatches of an epoch: a function of (seed, epoch), so a resumed run replays them."""
        lengths = self.data.train.source.lengths, self.data.train.target.lengths
        data_cfg: TranslationDataConfig = self.config.data
        generator = epoch_generator(self.config.seed, epoch)
        return bucket_batches(*lengths, data_cfg.buckets, data_cfg.batch_size, generator)

    def start_epoch(self, epoch: int) -> int:
        self.batches = self.epoch_batches(epoch)
        return len(self.batches)

    def total_steps(self) -> int:
        return len(self.epoch_batches(0)) * self.config.trainer.epochs  # every epoch has as many batches

    def train_step(self, step: int, index: int) -> StepOutput:
        trainer: TranslateTrainerConfig = self.config.trainer
        if step and step % trainer.decay_every == 0:  # the window closed by the previous step
            mean = self.decay_sum.item() / trainer.decay_every
            self.decay_sum.zero_()
            set_lr(self.optimizer, self.lr_rule.end_window(mean))  # type: ignore[arg-type]
        loss = token_loss(self.model, make_batch(self.data.train, self.batches[index], self.device))
        self.decay_sum += loss.detach()
        return StepOutput(loss=loss)

    def log_due(self, step: int) -> bool:
        trainer: TranslateTrainerConfig = self.config.trainer
        return step % trainer.log_every == 0 or step % trainer.decay_every == 0

    def window_metrics(self, cost: float) -> dict[str, float]:
        return {"train/perplexity": math.exp(min(cost, 50.0)), "train/lr": self.lr_rule.lr}

    # ---- evaluation ----------------------------------------------------------------------------------

    def evaluate(self, split: str) -> dict[str, float]:
        """Perplexity and greedy BLEU; on any split but "val" (validated every epoch) also beam BLEU."""
        cfg, device = self.config, self.device
        data = {"train": self.data.train, "val": self.data.val, "test": self.data.test}[split]
        metrics = perplexity(self.model, data, cfg.trainer.eval_batch_size, device)
        started = time.monotonic()
        metrics |= bleu_metrics(
            self.model, data, self.data.target_vocab, cfg.trainer, output_limit(cfg), device,
            beam=split != "val",
        )  # fmt: skip
        if split == "test":
            self.decode_seconds = time.monotonic() - started
        return metrics

    # ---- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rule = self.lr_rule
        return {"lr": rule.lr, "decay_losses": list(rule.losses), "decay_sum": self.decay_sum.item()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.lr_rule.lr, self.lr_rule.losses = float(state["lr"]), [float(x) for x in state["decay_losses"]]
        self.decay_sum.fill_(float(state["decay_sum"]))
        set_lr(self.optimizer, self.lr_rule.lr)  # type: ignore[arg-type]

    # ---- the end ---------------------------------------------------------------------------------------

    def summary_fields(self) -> dict[str, Any]:
        data = self.data
        return {
            "training_pairs": len(data.train.source),
            "vocabulary": [len(data.source_vocab), len(data.target_vocab)],
            "bleu_signatures": bleu_signatures(),
        }

    def metrics_info(self) -> dict[str, Any]:
        return {"bleu_signatures": bleu_signatures()}

    def finish(self, artifacts: Path) -> dict[str, Any]:
        save_attention_figure(self.config, self.model, self.data, self.device, artifacts / "attention.png")
        seconds = self.decode_seconds
        return {} if seconds is None else {"test_decode_seconds": round(seconds, 2)}

    def done_message(self, summary: dict[str, Any]) -> str | None:
        test, trainer = summary["final"], self.config.trainer
        if "test/perplexity" not in test:  # no best checkpoint was tested
            return None
        return (
            f"done: test perplexity {test['test/perplexity']:.2f}, BLEU greedy {test['test/bleu']:.2f}, "
            f"beam {trainer.beam} {test[f'test/bleu_beam{trainer.beam}']:.2f} (best by {trainer.monitor})"
        )


def save_attention_figure(
    cfg: RunConfig, model: Seq2Seq, data: ParallelData, device: torch.device, path: Path
) -> Path:
    """Book figure 7-33: the attention of the greedy translation of one test sentence."""
    from fdlcli.analysis.attention import attention_png

    split, row = data.test, min(cfg.trainer.attention_sentence, len(data.test.source) - 1)
    length = max(1, int(split.source.lengths[row]))
    source = split.source.ids[row : row + 1, :length].to(device)
    model.eval()
    ids, weights = greedy(model, source, torch.tensor([length]), output_limit(cfg))
    source_words = data.source_vocab.decode(source[0].tolist())
    if cfg.data.reverse_source:  # show the sentence as it was written
        source_words, weights = source_words[::-1], weights.flip(2)
    target_words = [*(data.target_vocab.words[i] for i in ids[0]), "<eos>"][: weights.shape[1]]
    return attention_png(weights[0].cpu(), source_words, target_words, path)


# ---- loading a trained run (fdl translate, the latency benchmark) --------------------------------


def load_model(run: Run, which: str, device: torch.device) -> tuple[Seq2Seq, Vocab, Vocab]:
    """The model of checkpoint ``which`` and the run's vocabularies, without the dataset."""
    source, target = load_vocabs(run.path)
    model = build_model(run.config, source, target)
    load_weights(run, which, model, device)
    return model.to(device).eval(), source, target


register(
    ExperimentSpec(
        name="translate-en-fr",
        chapter=7,
        dataset="Multi30k en-fr (Hub: IWSLT2017 or WMT14 by config)",
        book_result="training perplexity ~6 -> ~4 (WMT'15, 8 GPUs, 4 days)",
        description="GRU encoder-decoder with Bahdanau attention, buckets, beam search",
        model_config=Seq2SeqConfig,
        model_group="seq2seq",
        data_config=TranslationDataConfig,
        trainer_config=TranslateTrainerConfig,
        task=TranslationTask,
    )
)


# ---- translating text (fdl translate, the latency benchmark) -------------------------------------


@dataclass
class Translation:
    source: list[str]  # the words the model read (after truncation), in the order typed
    hypotheses: list[Hypothesis]  # best first
    dropped: int  # words cut from an over-long input
    unknown: list[str]  # input words outside the source vocabulary (read as <unk>)

    def attention(self, rank: int = 0) -> torch.Tensor:
        """[output words + EOS, source words] in the order typed."""
        return self.hypotheses[rank].attention


class Translator:
    """A trained run loaded once; ``translate(text)`` handles any string (empty, unknown words, too long)."""

    def __init__(self, run: Run, which: str = "best", device: str = "cpu") -> None:
        self.run = run
        self.device = resolve_device(device)
        self.model, self.source_vocab, self.target_vocab = load_model(run, which, self.device)
        self.max_words = run.config.data.max_source
        self.max_output = output_limit(run.config)
        self.penalty = run.config.trainer.length_penalty

    def translate(self, text: str, beam: int = 5, nbest: int = 1, search: Any = None) -> Translation | None:
        """None for a line without words; otherwise the ``max(beam, nbest)`` best hypotheses."""
        # lone surrogates (undecodable bytes read with surrogateescape) become U+FFFD before anything else
        text = text.encode("utf-8", "replace").decode("utf-8")
        words = tokenize(text)
        if not words:
            return None
        dropped = max(0, len(words) - self.max_words)
        words = words[: self.max_words]
        unknown = [w for w in words if w not in self.source_vocab.index]
        ids = self.source_vocab.encode(words)
        reverse = self.run.config.data.reverse_source
        search = search or beam_search
        hypotheses = search(
            self.model, ids[::-1] if reverse else ids, max(beam, nbest), self.max_output, self.penalty
        )
        if reverse:  # attention columns back in the order typed
            for hypothesis in hypotheses:
                hypothesis.attention = hypothesis.attention.flip(1)
        return Translation(words, hypotheses[:nbest], dropped, unknown)

    def text(self, hypothesis: Hypothesis) -> str:
        return detokenize(self.target_vocab.decode(hypothesis.ids), self.run.config.data.target)

    def output_words(self, hypothesis: Hypothesis) -> list[str]:
        """One label per attention row: the output words as generated, then <eos> if it was reached."""
        words = [self.target_vocab.words[i] for i in hypothesis.ids]
        return [*words, "<eos>"][: len(hypothesis.attention)]
