"""The compiled skip-gram trainer behind ``model.engine=hogwild`` (``skipgram-word2vec``; beyond the book).

word2vec.c and gensim train skip-gram one (context, target) pair at a time: 1 + K dot products and 2 (1 + K)
vector updates of d floats each, every one a separate BLAS level-1 call on 128 floats. The book's TensorFlow
NCE shares one draw of K negatives across a minibatch, which turns those into matrix products but applies
the whole minibatch's update at once; measured here, that costs analogy accuracy (docs/chapter6.md).

This kernel keeps word2vec.c's sequential SGD and shares the negatives only among the context words of a
few consecutive targets (Ji et al. 2016, "Parallelizing Word2Vec in Shared and Distributed Memory", share
them among the context words of one target). For G = ``model.shared_targets`` targets w_1..w_G with context
words c_1..c_n (all their windows) and negatives z_1..z_K:

    U = [in(c_1); ...; in(c_n)]  (n x d),   V = [out(w_1); ...; out(w_G); out(z_1); ...; out(z_K)]
    S = U V^T,   E = lr * (labels - sigmoid(S)) * present
    in(c_i) += (E V)_i,   out(v_k) += (E^T U)_k

where a context's label is 1 for its own target and 0 for the negatives, and it has no term (present = 0)
for the other targets of the group: three small matrix products (level-3 BLAS) per group instead of
3 n (1 + K) vector operations, and one gather and scatter of the K negative rows per group instead of
one per pair. Each group is one SGD step, and threads share the tables without locks (Hogwild, as
word2vec.c and gensim do). Sigmoids and the loss come from 1,000-entry tables clipped at +-6 (word2vec.c's
EXP_TABLE); negatives from Walker's alias tables (exact, and small enough to stay in cache, where
word2vec.c's 1e8-entry unigram table is not).

Randomness (window sizes, context choices, negatives) is seeded per (seed, epoch, chunk, block): the draws
do not depend on the number of threads, so one thread gives bit-identical runs and resumes, while two or
more race on shared rows as gensim's workers do.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import config, njit, prange, set_num_threads

SIGMOID_TABLE = 1000  # entries of the sigmoid table over [-MAX_LOGIT, MAX_LOGIT], as word2vec.c
MAX_LOGIT = 6.0
BLOCKS = 16  # independent stretches of a chunk (one RNG stream each), spread over the threads
_SCALE = SIGMOID_TABLE / (2 * MAX_LOGIT)
_TOP = MAX_LOGIT - 1e-4  # keeps int((x + MAX_LOGIT) * _SCALE) below SIGMOID_TABLE


@njit(inline="always")
def next_random(state):  # word2vec.c's generator
    return state * np.uint64(25214903917) + np.uint64(11)


@njit(inline="always")
def mix(z):  # splitmix64's output function: every bit of the result depends on every bit of z
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(parallel=True, fastmath=True, cache=True)
def train_chunk(  # a compiled kernel takes flat arrays, not objects
    inputs, outputs, stream, sentence, accept, alias, sigmoid, log_sigmoid, log_sigmoid_neg,
    start, stop, window, contexts_per_target, negatives, group, lr_start, lr_stop, seed,
):  # fmt: skip
    n = stream.shape[0]
    vocab = accept.shape[0]
    dim = inputs.shape[1]
    columns = group + negatives
    span = stop - start
    per_block = (span + BLOCKS - 1) // BLOCKS
    per_block = (per_block + group - 1) // group * group  # whole groups per block
    loss = np.zeros(BLOCKS)
    pairs = np.zeros(BLOCKS, np.int64)
    most = 2 * window * group
    for block in prange(BLOCKS):
        lo = start + block * per_block
        hi = min(stop, lo + per_block)
        state = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(block + 1) * np.uint64(
            6364136223846793005
        )
        offsets = np.empty(2 * window, np.int64)
        context = np.empty(most, np.int64)
        owner = np.empty(most, np.int64)
        rows = np.empty(columns, np.int64)
        u = np.empty((most, dim), np.float32)
        v = np.empty((columns, dim), np.float32)
        scores = np.empty((most, columns), np.float32)
        g = np.empty((most, columns), np.float32)
        grad_u = np.empty((most, dim), np.float32)
        grad_v = np.empty((columns, dim), np.float32)
        block_loss = 0.0
        block_pairs = 0
        for first in range(lo, hi, group):
            lr = np.float32(lr_start + (lr_stop - lr_start) * (first - start) / max(1, span))
            targets = min(group, hi - first)
            count = 0
            for m in range(targets):
                i = first + m
                rows[m] = stream[i]
                if contexts_per_target == 0:
                    state = next_random(state)
                    reach = 1 + np.int64((state >> np.uint64(16)) % np.uint64(window))
                    for o in range(-reach, reach + 1):
                        j = i + o
                        if o != 0 and 0 <= j < n and sentence[j] == sentence[i]:
                            context[count] = stream[j]
                            owner[count] = m
                            count += 1
                else:
                    for o in range(window):
                        offsets[o] = o - window
                        offsets[window + o] = o + 1
                    for pick in range(contexts_per_target):
                        state = next_random(state)
                        swap = pick + np.int64((state >> np.uint64(16)) % np.uint64(2 * window - pick))
                        offsets[pick], offsets[swap] = offsets[swap], offsets[pick]
                        j = i + offsets[pick]
                        if 0 <= j < n and sentence[j] == sentence[i]:
                            context[count] = stream[j]
                            owner[count] = m
                            count += 1
            if count == 0:
                continue
            for m in range(targets, group):  # a short last group: unused target columns get g = 0
                rows[m] = rows[0]
            for k in range(group, columns):
                state = next_random(state)
                z = mix(state)
                bucket = np.int64(((z >> np.uint64(32)) * np.uint64(vocab)) >> np.uint64(32))
                if np.float32(z & np.uint64(0xFFFFFFFF)) * np.float32(2.0**-32) < accept[bucket]:
                    rows[k] = bucket
                else:
                    rows[k] = alias[bucket]
            for c in range(count):
                u[c, :] = inputs[context[c]]
            for k in range(columns):
                v[k, :] = outputs[rows[k]]
            s = scores[:count]
            np.dot(u[:count], v.T, s)
            for c in range(count):
                mine = owner[c]
                target = rows[mine]
                for k in range(group):
                    g[c, k] = 0.0
                x = min(max(s[c, mine], -MAX_LOGIT), _TOP)
                at = int((x + MAX_LOGIT) * _SCALE)
                g[c, mine] = (np.float32(1.0) - sigmoid[at]) * lr
                block_loss -= log_sigmoid[at]
                for k in range(group, columns):
                    x = min(max(s[c, k], -MAX_LOGIT), _TOP)
                    at = int((x + MAX_LOGIT) * _SCALE)
                    live = np.float32(rows[k] != target)
                    g[c, k] = -sigmoid[at] * lr * live
                    block_loss -= log_sigmoid_neg[at] * live
            block_pairs += count
            np.dot(g[:count], v, grad_u[:count])
            np.dot(g[:count].T, u[:count], grad_v)
            for k in range(columns):
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


def alias_table(noise: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias method: bucket i (drawn uniformly) yields i with probability accept[i], else
    alias[i]; exact for any distribution, and two arrays of the vocabulary's size stay in cache."""
    p = noise.double().numpy() * len(noise)
    accept, alias = np.ones(len(p)), np.arange(len(p), dtype=np.int64)
    small = [i for i in range(len(p)) if p[i] < 1.0]
    large = [i for i in range(len(p)) if p[i] >= 1.0]
    while small and large:
        s_, l_ = small.pop(), large[-1]
        accept[s_], alias[s_] = p[s_], l_
        p[l_] -= 1.0 - p[s_]
        if p[l_] < 1.0:
            small.append(large.pop())
    return accept.astype(np.float32), alias


class HogwildSkipGram:
    """Trains a SkipGram's ``embed`` (input) and ``out`` (output) tables in place, chunk by chunk."""

    def __init__(self, embed: torch.Tensor, out: torch.Tensor, noise: torch.Tensor, threads: int) -> None:
        self.inputs, self.outputs = embed.numpy(), out.numpy()  # views: the kernel writes the tensors
        self.noise = alias_table(noise)
        self.tables = sigmoid_tables()
        set_num_threads(max(1, min(threads, config.NUMBA_NUM_THREADS)))
        self.warm_up()

    def warm_up(self) -> None:
        """Compile the kernel (or load it from numba's disk cache) before any step is timed: one target
        trained on scratch copies of two rows, so that the real tables are not touched."""
        inputs, outputs = self.inputs[:2].copy(), self.outputs[:2].copy()
        stream = np.zeros(2, np.int64)
        accept, alias = np.ones(1, np.float32), np.zeros(1, np.int64)
        train_chunk(
            inputs, outputs, stream, stream, accept, alias, *self.tables, 0, 1, 1, 0, 1, 1, 0.0, 0.0, 1
        )

    def train(
        self,
        stream: np.ndarray,
        sentence: np.ndarray,
        span: tuple[int, int],
        window: int,
        contexts_per_target: int,
        negatives: int,
        group: int,
        lr: tuple[float, float],
        draw: tuple[int, int, int],
    ) -> tuple[float, int]:
        """One SGD step per group of targets in stream[span[0]:span[1]] (context words anywhere in
        ``stream``, within the target's sentence), the rate moving linearly from lr[0] to lr[1], the random
        draws seeded by ``draw`` = (seed, epoch, chunk); returns (summed loss, pairs)."""
        loss, pairs = train_chunk(
            self.inputs, self.outputs, stream, sentence, *self.noise, *self.tables,
            span[0], span[1], window, contexts_per_target, negatives, group, lr[0], lr[1], chunk_seed(*draw),
        )  # fmt: skip
        return float(loss), int(pairs)


def chunk_seed(seed: int, epoch: int, chunk: int) -> int:
    """The RNG seed of one chunk: a hash of (seed, epoch, chunk), distinct for every chunk of a run."""
    return (
        int(np.random.SeedSequence([seed, epoch, chunk]).generate_state(1, np.uint64)[0] >> np.uint64(1)) or 1
    )
