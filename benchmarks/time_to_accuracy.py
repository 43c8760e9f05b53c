"""When a run's validation accuracy first reached each threshold: minibatches, epochs and wall minutes.

    python benchmarks/time_to_accuracy.py RUN [--metric val/accuracy] [--thresholds 0.6 0.7 0.8 0.85 0.9]

Reads only the run's metrics.jsonl: the step and wall-clock time of the first evaluation record at or
above each threshold (minutes from the run's first record, so a resumed run's pauses count; the table says
when there were any), and the best value with its step. For docs/RESULTS.md's CIFAR-10 rows (issue 19).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from fdlcli.runs import read_metrics


def milestones(run: Path, metric: str, thresholds: list[float]) -> list[str]:
    records = read_metrics(run)
    if not records:
        raise SystemExit(f"{run}: no metrics.jsonl records")
    start = records[0]["time"]
    evals = [r for r in records if r["name"] == metric and not math.isnan(r["value"])]
    if not evals:
        raise SystemExit(f"{run}: no {metric} records")
    lines = [f"{metric} threshold  minibatches  epochs  wall minutes"]
    for threshold in thresholds:
        hit = next((r for r in evals if r["value"] >= threshold), None)
        if hit is None:
            lines.append(f"{threshold:>17.2f}  not reached (best {max(r['value'] for r in evals):.4f})")
        else:
            minutes = (hit["time"] - start) / 60
            lines.append(f"{threshold:>17.2f}  {hit['step']:>11,}  {hit['epoch']:>6}  {minutes:>12.1f}")
    best = max(evals, key=lambda r: r["value"])
    last = evals[-1]
    lines.append(
        f"best {best['value']:.4f} at minibatch {best['step']:,} (epoch {best['epoch']}); "
        f"last {last['value']:.4f} at minibatch {last['step']:,}, "
        f"{(last['time'] - start) / 60:.1f} wall minutes after the first record"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--metric", default="val/accuracy")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.6, 0.7, 0.8, 0.85, 0.9])
    args = parser.parse_args()
    print("\n".join(milestones(args.run, args.metric, args.thresholds)))


if __name__ == "__main__":
    main()
