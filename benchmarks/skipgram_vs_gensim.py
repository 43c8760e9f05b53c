"""fdl's skipgram against gensim's Word2Vec (sg=1) on the same corpus, in one process.

Both train skip-gram with 64 negative samples, 128 dimensions, a window of 5 and 5 epochs on the PTB
mirror (10,000 words); gensim gets fdl's ``model.dim``, ``window``, ``negatives`` and ``subsample`` (its
``sample``), so an override such as ``model.subsample=0`` changes both. gensim runs with 2 worker threads
(C, one thread per worker) and fdl's compiled engine (``model.engine=hogwild``) with 2 threads. Words/s is
raw corpus words x epochs over the training time of each (subsampled words count, as gensim counts them;
fdl: its training loop, without the per-epoch evaluation or the one-time kernel compilation; gensim: its
train() call). The load average is printed before each, as the machine may be shared. Both embeddings are
scored by the same code (fdl's analogy and WordSim-353 evaluation on the same vocabulary). gensim is a
benchmark dependency only: ``pip install "fdlcli[bench]"``.

    FDL_DATA_DIR=../shared/data python benchmarks/skipgram_vs_gensim.py [--epochs N] [--repeats R] \
        [fdl overrides...]

``--epochs 1`` measures the speeds in a fifth of the time (the quality scores are then those of 1 epoch).
``--repeats R`` trains each R times, alternating, with seeds 0..R-1, and prints the means: with 2 threads
neither is deterministic, and one analogy score moves by a few tenths of a percent from run to run.

The last line is ``ratio <mean fdl words/s / mean gensim words/s>``.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean, stdev

import torch

from fdlcli import config as fdl_config
from fdlcli import registry
from fdlcli.data.text import load_corpus
from fdlcli.experiments import word2vec
from fdlcli.runs import Run

# fdl runs its `skipgram-word2vec` experiment (conf/experiment/skipgram-word2vec.yaml: word2vec.c's recipe
# in the compiled Hogwild engine) with 2 threads, as gensim's 2 workers
EXPERIMENT = "skipgram-word2vec"
FDL_OVERRIDES = [
    "trainer.threads=2",
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
    seed: int,
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
        seed=seed,
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
    run_config = fdl_config.validate(fdl_config.compose(EXPERIMENT, overrides))
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = registry.get(EXPERIMENT).train(Run(path=Path(tmp), config=run_config))
        seconds = time.perf_counter() - started
    return {"words_per_s": summary["words_per_s"], "seconds": seconds, **summary["final"]}


def main() -> None:
    if not os.environ.get("FDL_DATA_DIR"):
        os.environ["FDL_DATA_DIR"] = str(Path(__file__).resolve().parents[2] / "shared" / "data")
    folder = Path(os.environ["FDL_DATA_DIR"]) / word2vec.EVAL_FOLDER
    args = sys.argv[1:]
    epochs, repeats = 5, 1
    while args[:1] in (["--epochs"], ["--repeats"]):
        if args[0] == "--epochs":
            epochs = int(args[1])
        else:
            repeats = int(args[1])
        args = args[2:]
    overrides = [*FDL_OVERRIDES, *args, f"trainer.epochs={epochs}"]
    run_config = fdl_config.validate(fdl_config.compose(EXPERIMENT, overrides))
    corpus = load_corpus(run_config.data)
    words, index = corpus.words, corpus.index
    flat = [words[i] for i in corpus.ids.tolist()]
    # gensim gets the same token stream, cut into the corpus's lines (PTB: one sentence a line); fdl's
    # hogwild engine keeps its windows inside the same lines
    sentences, start = [], 0
    for length in corpus.line_lengths.tolist():
        if length:
            sentences.append(flat[start : start + length])
            start += length
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPUs, torch {torch.__version__}")
    print(f"corpus: {len(corpus.ids):,} words, vocabulary {len(words):,}")
    print(f"epochs: {epochs}; fdl: {EXPERIMENT} {' '.join(overrides)}")
    print("words/s: raw corpus words x epochs / training seconds (subsampled words count, as in gensim)")
    results: dict[str, list[dict]] = {"gensim": [], "fdl": []}
    for seed in range(repeats):
        print(f"load average before gensim (seed {seed}): {load()}", flush=True)
        results["gensim"].append(run_gensim(sentences, words, index, folder, run_config.model, epochs, seed))
        report("gensim", results["gensim"][-1])
        print(f"load average before fdl (seed {seed}): {load()}", flush=True)
        results["fdl"].append(run_fdl([*overrides, f"seed={seed}"]))
        report("fdl", results["fdl"][-1])
    print(f"load average after: {load()}")
    means = {name: {key: mean(r[key] for r in runs) for key in runs[0]} for name, runs in results.items()}
    if repeats > 1:
        report(f"gensim, mean of {repeats}", means["gensim"])
        report(f"fdl, mean of {repeats}", means["fdl"])
        for key, scale, unit in (("analogy", 100, "%"), ("wordsim", 1, "")):
            spread = {
                name: f"{scale * means[name][f'eval/{key}']:.3f}{unit} +- "
                f"{scale * stdev(r[f'eval/{key}'] for r in runs) / len(runs) ** 0.5:.3f}"
                for name, runs in results.items()
            }
            print(f"{key} (mean +- standard error): fdl {spread['fdl']}, gensim {spread['gensim']}")
    better = {
        key: means["fdl"][f"eval/{key}"] >= means["gensim"][f"eval/{key}"] for key in ("analogy", "wordsim")
    }
    verdict = ", ".join(f"{key} {'yes' if ok else 'no'}" for key, ok in better.items())
    print(f"fdl's quality at least gensim's: {verdict}")
    print(f"ratio {means['fdl']['words_per_s'] / means['gensim']['words_per_s']:.2f}")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(name: str, result: dict) -> None:
    print(
        f"{name:7s} {result['words_per_s']:10,.0f} words/s  ({result['seconds']:.1f} s)  "
        f"analogy {100 * result['eval/analogy']:.2f}% ({result['eval/analogy_questions']:.0f} questions)  "
        f"wordsim rho {result['eval/wordsim']:.3f} ({result['eval/wordsim_pairs']:.0f} pairs)",
        flush=True,
    )


if __name__ == "__main__":
    main()
