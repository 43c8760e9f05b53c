"""The compiled skip-gram trainer behind ``skipgram model.engine=hogwild`` (chapter 6, beyond the book).

word2vec.c and gensim train skip-gram one (context, target) pair at a time: 1 + K dot products and 2 (1 + K)
vector updates of d floats each, every one a separate BLAS call on 128 floats. The book's TensorFlow NCE
shares one draw of K negatives across a minibatch, which turns those dot products into matrix products but
applies the whole minibatch's update at once; measured here, that costs analogy accuracy (docs/chapter6.md).

This kernel keeps word2vec.c's sequential SGD and shares the negatives only among the context words of one
target (Ji et al. 2016, "Parallelizing Word2Vec in Shared and Distributed Memory"): for a target w with
context words c_1..c_n and negatives z_1..z_K,

    S = U V^T  with U = [in(c_1); ...; in(c_n)]  (n x d),  V = [out(w); out(z_1); ...; out(z_K)]  ((1+K) x d)
    G = lr * (labels - sigmoid(S))       labels: 1 in column 0 (w), 0 elsewhere
    in(c_i) += (G V)_i,   out(v_k) += (G^T U)_k

three small matrix products per target (level-3 BLAS) instead of 3 n (1 + K) vector operations. Each target
is one SGD step, as in word2vec.c, and threads share the tables without locks (Hogwild, as word2vec.c and
gensim do). Sigmoids come from a 1,000-entry table clipped at +-6 (word2vec.c's EXP_TABLE).

Randomness (window sizes, context choices, negatives) comes from word2vec.c's linear congruential generator,
seeded per (seed, epoch, chunk, block): the draws do not depend on the number of threads, so one thread
gives bit-identical runs and resumes, while two or more threads race on shared rows as gensim's workers do.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import config, njit, prange, set_num_threads

SIGMOID_TABLE = 1000  # entries of the sigmoid table over [-MAX_LOGIT, MAX_LOGIT], as word2vec.c
MAX_LOGIT = 6.0
NOISE_TABLE = 10_000_000  # word2vec.c's unigram table is 1e8 entries; 1e7 resolves a 1e-7 probability
BLOCKS = 16  # independent stretches of a chunk (one RNG stream each), spread over the threads
_SCALE = SIGMOID_TABLE / (2 * MAX_LOGIT)
_TOP = MAX_LOGIT - 1e-4  # keeps int((x + MAX_LOGIT) * _SCALE) below SIGMOID_TABLE


@njit(inline="always")
def next_random(state):  # word2vec.c's generator
    return state * np.uint64(25214903917) + np.uint64(11)


@njit(parallel=True, fastmath=True, cache=True)
def train_chunk(  # a compiled kernel takes flat arrays, not objects
    inputs, outputs, stream, sentence, noise, sigmoid, log_sigmoid, log_sigmoid_neg,
    start, stop, window, contexts_per_target, negatives, lr_start, lr_stop, seed,
):  # fmt: skip
    n = stream.shape[0]
    dim = inputs.shape[1]
    columns = negatives + 1
    span = stop - start
    per_block = (span + BLOCKS - 1) // BLOCKS
    loss = np.zeros(BLOCKS)
    pairs = np.zeros(BLOCKS, np.int64)
    for block in prange(BLOCKS):
        lo = start + block * per_block
        hi = min(stop, lo + per_block)
        state = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(block + 1) * np.uint64(
            6364136223846793005
        )
        offsets = np.empty(2 * window, np.int64)
        context = np.empty(2 * window, np.int64)
        rows = np.empty(columns, np.int64)
        u = np.empty((2 * window, dim), np.float32)  # the context words' input vectors
        v = np.empty((columns, dim), np.float32)  # the target's and the negatives' output vectors
        scores = np.empty((2 * window, columns), np.float32)
        g = np.empty((2 * window, columns), np.float32)
        grad_u = np.empty((2 * window, dim), np.float32)
        grad_v = np.empty((columns, dim), np.float32)
        block_loss = 0.0
        block_pairs = 0
        for i in range(lo, hi):
            lr = np.float32(lr_start + (lr_stop - lr_start) * (i - start) / max(1, span))
            # the context words: all of a window shrunk at random to 1..window (word2vec.c), or
            # contexts_per_target distinct positions of the full window (the book's num_skips)
            count = 0
            if contexts_per_target == 0:
                state = next_random(state)
                reach = 1 + np.int64((state >> np.uint64(16)) % np.uint64(window))
                for o in range(-reach, reach + 1):
                    j = i + o
                    if o != 0 and 0 <= j < n and sentence[j] == sentence[i]:
                        context[count] = stream[j]
                        count += 1
            else:
                for o in range(window):
                    offsets[o] = o - window
                    offsets[window + o] = o + 1
                for pick in range(contexts_per_target):  # a partial Fisher-Yates shuffle
                    state = next_random(state)
                    swap = pick + np.int64((state >> np.uint64(16)) % np.uint64(2 * window - pick))
                    offsets[pick], offsets[swap] = offsets[swap], offsets[pick]
                    j = i + offsets[pick]
                    if 0 <= j < n and sentence[j] == sentence[i]:
                        context[count] = stream[j]
                        count += 1
            if count == 0:
                continue
            target = stream[i]
            rows[0] = target
            for k in range(1, columns):
                state = next_random(state)
                rows[k] = noise[(state >> np.uint64(16)) % np.uint64(noise.shape[0])]
            for c in range(count):
                u[c, :] = inputs[context[c]]
            for k in range(columns):
                v[k, :] = outputs[rows[k]]
            s = scores[:count]
            np.dot(u[:count], v.T, s)
            for c in range(count):
                x = min(max(s[c, 0], -MAX_LOGIT), _TOP)
                at = int((x + MAX_LOGIT) * _SCALE)
                g[c, 0] = (np.float32(1.0) - sigmoid[at]) * lr
                block_loss -= log_sigmoid[at]
                for k in range(1, columns):
                    x = min(max(s[c, k], -MAX_LOGIT), _TOP)
                    at = int((x + MAX_LOGIT) * _SCALE)
                    live = np.float32(rows[k] != target)  # word2vec.c skips a draw of the target
                    g[c, k] = -sigmoid[at] * lr * live
                    block_loss -= log_sigmoid_neg[at] * live
            block_pairs += count
            np.dot(g[:count], v, grad_u[:count])
            np.dot(g[:count].T, u[:count], grad_v)
            for k in range(columns):  # repeated rows (a negative drawn twice) add up
                row = outputs[rows[k]]
                for t in range(dim):
                    row[t] += grad_v[k, t]
            for c in range(count):
                row = inputs[context[c]]
                for t in range(dim):
                    row[t] += grad_u[c, t]
        loss[block] = block_loss
        pairs[block] = block_pairs
    return loss.sum(), pairs.sum()


def sigmoid_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """sigmoid, log sigmoid and log(1 - sigmoid) at the centres of SIGMOID_TABLE cells over +-MAX_LOGIT."""
    x = (np.arange(SIGMOID_TABLE) + 0.5) / SIGMOID_TABLE * 2 * MAX_LOGIT - MAX_LOGIT
    return (
        (1 / (1 + np.exp(-x))).astype(np.float32),
        -np.logaddexp(0, -x).astype(np.float32),
        -np.logaddexp(0, x).astype(np.float32),
    )


def noise_table(noise: torch.Tensor) -> np.ndarray:
    """word2vec.c's unigram table: word ids repeated in proportion to their noise probability, so that a
    uniform index draws from the distribution in one memory read."""
    repeats = np.maximum(1, np.round(noise.double().numpy() * NOISE_TABLE)).astype(np.int64)
    return np.repeat(np.arange(len(repeats), dtype=np.int64), repeats)


class HogwildSkipGram:
    """Trains a SkipGram's ``embed`` (input) and ``out`` (output) tables in place, chunk by chunk."""

    def __init__(self, embed: torch.Tensor, out: torch.Tensor, noise: torch.Tensor, threads: int) -> None:
        self.inputs, self.outputs = embed.numpy(), out.numpy()  # views: the kernel writes the tensors
        self.noise = noise_table(noise)
        self.tables = sigmoid_tables()
        set_num_threads(max(1, min(threads, config.NUMBA_NUM_THREADS)))
        self.warm_up()

    def warm_up(self) -> None:
        """Compile the kernel (or load it from numba's disk cache) before any step is timed: one target
        trained on scratch copies of two rows, so that the real tables are not touched."""
        inputs, outputs = self.inputs[:2].copy(), self.outputs[:2].copy()
        stream, noise = np.zeros(2, np.int64), np.zeros(1, np.int64)
        train_chunk(inputs, outputs, stream, stream, noise, *self.tables, 0, 1, 1, 0, 1, 0.0, 0.0, 1)

    def train(
        self,
        stream: np.ndarray,
        sentence: np.ndarray,
        span: tuple[int, int],
        window: int,
        contexts_per_target: int,
        negatives: int,
        lr: tuple[float, float],
        seed: int,
    ) -> tuple[float, int]:
        """One SGD step per target in stream[span[0]:span[1]] (context words anywhere in ``stream``, within
        the target's sentence), the rate moving linearly from lr[0] to lr[1]; returns (summed loss, pairs)."""
        loss, pairs = train_chunk(
            self.inputs, self.outputs, stream, sentence, self.noise, *self.tables,
            span[0], span[1], window, contexts_per_target, negatives, lr[0], lr[1], seed,
        )  # fmt: skip
        return float(loss), int(pairs)


def chunk_seed(seed: int, epoch: int, chunk: int) -> int:
    """The RNG seed of one chunk: a hash of (seed, epoch, chunk), distinct for every chunk of a run."""
    return (
        int(np.random.SeedSequence([seed, epoch, chunk]).generate_state(1, np.uint64)[0] >> np.uint64(1)) or 1
    )
