"""Accuracy of a classifier run on the whole test set and on single test minibatches, as the book measured.

    python benchmarks/test_batch_spread.py RUN [--checkpoint best] [--batch 128]

The book's CIFAR-10 scripts (convnet_cifar.py, convnet_cifar_bn.py) report their "Validation Error" and
final "Test Accuracy" from one ``sess.run`` of the evaluation input queue: a single minibatch of 128 test
images. This prints the full-test-set accuracy of a checkpoint beside the distribution of that one-batch
figure over every consecutive 128-image slice of the test set (mean, std, min, max, and the share of
batches at or above 90%), so our numbers and the book's can be read side by side.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from fdlcli import config, registry
from fdlcli.engine.loop import load_task


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    run = config.open_run(args.run)
    task, ref = load_task(registry.get(run.config.name).task, run, args.checkpoint)
    inputs, labels = task.data.test
    correct = torch.cat(
        [
            task.model(inputs[i : i + 1000]).argmax(dim=1) == labels[i : i + 1000]
            for i in range(0, len(labels), 1000)
        ]
    ).float()
    batches = [correct[i : i + args.batch].mean().item() for i in range(0, len(correct), args.batch)]
    batches = batches[: len(correct) // args.batch]  # whole batches only, as the input queue gives them
    print(f"{run.path} checkpoint {ref.name}: test accuracy {correct.mean().item():.4f} on {len(correct):,}")
    print(
        f"single {args.batch}-image test batches ({len(batches)}): mean {statistics.mean(batches):.4f}, "
        f"std {statistics.stdev(batches):.4f}, min {min(batches):.4f}, max {max(batches):.4f}, "
        f"at or above 0.90: {sum(b >= 0.9 for b in batches) / len(batches):.0%}"
    )


if __name__ == "__main__":
    main()
