"""Per-sentence latency of `fdl translate` with beam 5 on the CPU, after loading, against the same beam
search run naively one hypothesis at a time, in one process.

fdl's search (``seq2seq.beam_search``) feeds all live hypotheses of a sentence to the decoder as one
batch: one decoder step, one output projection and one top-k per output word. The naive search
(``seq2seq.reference_beam_search``) runs the decoder once per live hypothesis and word, as a
straightforward port of a beam search written around a batch-1 decoder would. Both run the same
algorithm (the tests check they return the same hypotheses), on the same model and the first N
sentences of the test split, alternating sentence by sentence so that load on a shared machine hits
both alike. Each figure is the mean wall time of translating one sentence (tokenizing, encoding,
searching, detokenizing), as `fdl translate` does for each line, in wall-clock time and in the
process's CPU time: with one thread, CPU time is what the wall time would be on an idle machine, and
it holds on a machine shared with other jobs (where the wall time of both searches grows alike).

    python benchmarks/translate_latency.py [RUN_DIR] [--sentences 100] [--beam 5] [--threads 1]

RUN_DIR defaults to the newest translate-en-fr run under $FDL_RUNS_DIR (or ./runs). The last line is
``ratio <naive CPU time / fdl CPU time>``; the wall-time ratio is printed above it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from fdlcli import config, runs
from fdlcli.data.translation import load_pairs
from fdlcli.experiments.seq2seq import Translator, reference_beam_search


def newest_run() -> Path:
    root = Path(os.environ.get("FDL_RUNS_DIR", "runs")) / "translate-en-fr"
    done = [p for p in root.glob("*") if (p / "summary.json").is_file() and (p / "vocab.json").is_file()]
    if not done:
        raise SystemExit(f"no finished translate-en-fr run under {root}; train one or pass RUN_DIR")
    return max(done, key=lambda p: p.stat().st_mtime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("--sentences", type=int, default=100)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = runs.resolve_run_dir(args.run_dir or newest_run())
    run = runs.Run(path=run_dir, config=config.load_saved(run_dir / runs.CONFIG_FILE))

    started = time.perf_counter()
    translator = Translator(run, "best", device="cpu")
    load_seconds = time.perf_counter() - started
    sources, _ = load_pairs(run.config.data, run.config.data.test_split)
    sentences = sources[: args.sentences]
    for text in sentences[:3]:  # warm-up: first calls allocate
        translator.translate(text, beam=args.beam)
        translator.translate(text, beam=args.beam, search=reference_beam_search)

    fast, naive, fast_cpu, naive_cpu, same = [], [], [], [], 0
    for text in sentences:
        t0, c0 = time.perf_counter(), time.process_time()
        ours = translator.translate(text, beam=args.beam)
        t1, c1 = time.perf_counter(), time.process_time()
        theirs = translator.translate(text, beam=args.beam, search=reference_beam_search)
        t2, c2 = time.perf_counter(), time.process_time()
        fast.append(t1 - t0)
        naive.append(t2 - t1)
        fast_cpu.append(c1 - c0)
        naive_cpu.append(c2 - c1)
        if ours and theirs:
            same += ours.hypotheses[0].ids == theirs.hypotheses[0].ids

    print(f"run {run_dir} ({sum(p.numel() for p in translator.model.parameters()):,} parameters)")
    cpu = platform.processor() or platform.machine()
    print(f"device cpu ({cpu}), {args.threads} thread(s), torch {torch.__version__}")
    print(f"model loaded in {load_seconds:.2f} s; {len(sentences)} test sentences, beam {args.beam}")
    rows = (("fdl (beams batched)", fast, fast_cpu), ("naive (one hypothesis per call)", naive, naive_cpu))
    for name, times, cpu_times in rows:
        print(
            f"{name:32s} wall: mean {1000 * statistics.mean(times):6.1f} ms/sentence, "
            f"median {1000 * statistics.median(times):6.1f}, max {1000 * max(times):6.1f};  "
            f"CPU: mean {1000 * statistics.mean(cpu_times):6.1f} ms/sentence"
        )
    print(f"identical best translations: {same}/{len(sentences)}")
    print(f"wall-time ratio {statistics.mean(naive) / statistics.mean(fast):.2f}")
    print(f"ratio {statistics.mean(naive_cpu) / statistics.mean(fast_cpu):.2f}")


if __name__ == "__main__":
    main()
