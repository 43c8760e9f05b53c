"""fdl's skipgram against gensim's Word2Vec (sg=1) on the same corpus, in one process.

Both train skip-gram with 64 negative samples, 128 dimensions, a window of 5 and 5 epochs on the PTB
mirror (10,000 words); gensim gets fdl's ``model.dim``, ``window``, ``negatives`` and ``subsample`` (its
``sample``), so an override such as ``model.subsample=0`` changes both. gensim runs with 2 worker threads
(it is C with one thread per worker) and fdl with 1 intra-op thread. Words/s is raw corpus words x epochs
over the training time of each (subsampled words count, as gensim counts them; fdl: its training loop,
without the per-epoch evaluation; gensim: its train() call). The load average is printed before each, as
the machine may be shared. Both embeddings are scored by the same code (fdl's analogy and WordSim-353
evaluation on the same vocabulary). gensim is a benchmark dependency only: ``pip install "fdlcli[bench]"``.

    FDL_DATA_DIR=../shared/data python benchmarks/skipgram_vs_gensim.py [--epochs N] [fdl overrides...]

``--epochs 1`` measures the speeds in a fifth of the time (the quality scores are then those of 1 epoch).

The last line is ``ratio <fdl words/s / gensim words/s>``.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from fdlcli import config as fdl_config
from fdlcli.data.text import load_corpus
from fdlcli.experiments import word2vec
from fdlcli.runs import Run

# fdl's fast settings: the book's architecture and NCE-style shared negatives, in larger minibatches
FDL_OVERRIDES = [
    "data.batch_size=256",
    "model.share=256",  # one draw of 64 negatives for all 256 pairs of a step
    "optim.lr=3.2",  # the rate of the mean loss of 256 pairs: 0.0125 per pair (book: 0.1 / 32 = 0.003)
    "model.loss=neg",
    "model.sampler=unigram",
    "model.init=small",
    "model.lr_decay=true",
    "model.subsample=1e-3",  # gensim's default `sample`; the benchmark gives gensim the same value
    "model.contexts=dynamic",  # every word within a window shrunk at random to 1..5, as gensim
    "trainer.threads=1",  # 2 OpenMP threads on a loaded 2-core machine ran 5-8x slower than one
    "trainer.device=cpu",
    "trainer.tsne=false",
    "trainer.histograms=false",
]


def run_gensim(
    sentences: list[list[str]],
    words: list[str],
    index: dict[str, int],
    folder: Path,
    model_cfg: word2vec.SkipGramConfig,
    epochs: int,
) -> dict:
    from gensim.models import Word2Vec

    # fdl's dimension, window, negatives and subsampling; gensim's own lr schedule (0.025 -> 0.0001)
    model = Word2Vec(
        vector_size=model_cfg.dim,
        window=model_cfg.window,
        negative=model_cfg.negatives,
        sample=model_cfg.subsample,
        sg=1,
        hs=0,
        min_count=1,
        workers=2,
        seed=0,
    )
    model.build_vocab(sentences)
    total = sum(len(s) for s in sentences)
    started = time.perf_counter()
    model.train(sentences, total_examples=len(sentences), epochs=epochs)
    seconds = time.perf_counter() - started
    vectors = torch.stack([torch.from_numpy(model.wv[w].copy()) for w in words])
    return {
        "words_per_s": epochs * total / seconds,  # raw corpus words, subsampled ones included
        "seconds": seconds,
        **word2vec.word_quality(vectors, index, folder),
    }


def run_fdl(overrides: list[str]) -> dict:
    run_config = fdl_config.validate(fdl_config.compose("skipgram", overrides))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = word2vec.train(Run(path=Path(tmp), config=run_config))
        seconds = time.perf_counter() - started
    return {"words_per_s": summary["words_per_s"], "seconds": seconds, **summary["final"]}


def main() -> None:
    if not os.environ.get("FDL_DATA_DIR"):
        os.environ["FDL_DATA_DIR"] = str(Path(__file__).resolve().parents[2] / "shared" / "data")
    folder = Path(os.environ["FDL_DATA_DIR"]) / word2vec.EVAL_FOLDER
    args = sys.argv[1:]
    epochs = 5
    if args[:1] == ["--epochs"]:
        epochs, args = int(args[1]), args[2:]
    overrides = [*FDL_OVERRIDES, *args, f"trainer.epochs={epochs}"]
    run_config = fdl_config.validate(fdl_config.compose("skipgram", overrides))
    corpus = load_corpus(run_config.data)
    words, index = corpus.words, corpus.index
    flat = [words[i] for i in corpus.ids.tolist()]
    # gensim gets the same token stream, cut into the corpus's lines (PTB: one sentence a line)
    from fdlcli.data.text import _lines

    lengths = [len(line.split()) for line in _lines(run_config.data)]
    sentences, start = [], 0
    for length in lengths:
        if length:
            sentences.append(flat[start : start + length])
            start += length
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, torch {torch.__version__}")
    print(f"corpus: {len(corpus.ids):,} words, vocabulary {len(words):,}")
    print(f"epochs: {epochs}; fdl overrides: {' '.join(overrides)}")
    print("words/s: raw corpus words x epochs / training seconds (subsampled words count, as in gensim)")
    print(f"load average before gensim: {load()}", flush=True)
    gensim = run_gensim(sentences, words, index, folder, run_config.model, epochs)
    report("gensim", gensim)
    print(f"load average before fdl: {load()}", flush=True)
    fdl = run_fdl(overrides)
    report("fdl", fdl)
    print(f"load average after: {load()}")
    print(f"ratio {fdl['words_per_s'] / gensim['words_per_s']:.2f}")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(name: str, result: dict) -> None:
    print(
        f"{name:7s} {result['words_per_s']:10,.0f} words/s  ({result['seconds']:.1f} s)  "
        f"analogy {result['eval/analogy']:.4f} ({result['eval/analogy_questions']} questions)  "
        f"wordsim rho {result['eval/wordsim']:.3f} ({result['eval/wordsim_pairs']} pairs)",
        flush=True,
    )


if __name__ == "__main__":
    main()
