"""fdl's mlp-mnist training epoch against the usual tutorial loop, in one process.

The reference is what a PyTorch tutorial does: a map-style Dataset that decodes one PNG per item, a
DataLoader with batch 100 and shuffling, the same 784-256-256-10 model, He init and SGD lr 0.01. fdl
trains from whole-dataset tensors decoded once (cached) and indexed by a permutation.

Both see the same 55,000 real MNIST training images. The reference is timed at 1 and 2 intra-op threads
(its speed depends strongly on the thread count on small CPUs) and the ratio is taken against the faster
of the two, so the figure is not flattered by a badly configured reference. Each side is measured
``--repeats`` times (default 2, interleaved) and its best rate kept, so neither side pays alone for the
first-call warm-up (allocator, kernel selection) or for a burst of load from another process.

    FDL_DATA_DIR=../shared/data python benchmarks/mlp_mnist_throughput.py
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from fdlcli import config as fdl_config
from fdlcli.data.hub import load_split
from fdlcli.engine.loop import train
from fdlcli.experiments.mlp import MNISTClassification
from fdlcli.runs import Run, read_metrics


def fdl_epoch(threads: int) -> tuple[float, float]:
    """(samples/s of fdl's training loop, seconds of the whole 1-epoch training call).

    The rate is read from the run's own metrics.jsonl: the train/cost records carry wall-clock times, so
    (steps between the first and last record of the epoch) x batch / (time between them) is the
    minibatch loop alone, like the reference's, without the validation, checkpoint and test passes
    that the engine also does.
    """
    overrides = [
        # the reference's rule: plain SGD 0.01, no shifts (mlp-mnist's defaults add momentum and shifts)
        "optim=sgd",
        "optim.schedule=constant",
        "data.shift=0",
        "trainer.epochs=1",
        "trainer.histograms=false",
        "trainer.device=cpu",
        f"trainer.threads={threads}",
    ]
    run_config = fdl_config.validate(fdl_config.compose("mlp-mnist", overrides))
    task = MNISTClassification(run_config)
    task.load_data()  # fill the tensor cache first: decoding happens once per machine, not per epoch
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        train(MNISTClassification, Run(path=Path(tmp), config=run_config))
        total = time.perf_counter() - started
        records = [r for r in read_metrics(Path(tmp)) if r["name"] == "train/cost"]
    first, last = records[0], records[-1]
    rate = (last["step"] - first["step"]) * run_config.data.batch_size / (last["time"] - first["time"])
    return rate, total


class PNGDataset(torch.utils.data.Dataset):
    """The tutorial pattern: decode one image per __getitem__."""

    def __init__(self, rows: list[dict], labels: list[int]) -> None:
        self.rows, self.labels = rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = Image.open(io.BytesIO(self.rows[index]["bytes"]))
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float().div(255.0)
        return pixels, self.labels[index]


def reference_epoch(threads: int) -> float:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dataset = load_split("mnist", "ylecun/mnist", "train", None)
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    rows = table.column("image").to_pylist()[5000:]
    labels = table.column("label").to_pylist()[5000:]
    loader = torch.utils.data.DataLoader(PNGDataset(rows, labels), batch_size=100, shuffle=True)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=math.sqrt(2.0 / layer.in_features))
            nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    started = time.perf_counter()
    seen = 0
    for inputs, targets in loader:
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(targets)
    return seen / (time.perf_counter() - started)


def main() -> None:
    if not os.environ.get("FDL_DATA_DIR"):
        os.environ["FDL_DATA_DIR"] = str(Path(__file__).resolve().parents[2] / "shared" / "data")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="measurements per side; the best is kept")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    print(f"machine: {platform.processor() or platform.machine()}, {cpus} CPUs, torch {torch.__version__}")
    fdl_threads = cpus  # fdl's default (trainer.threads=0) for a single run
    fdl_rates: list[float] = []
    references: dict[int, list[float]] = {}
    for repeat in range(1, max(1, args.repeats) + 1):
        fdl_rate, fdl_total = fdl_epoch(fdl_threads)
        fdl_rates.append(fdl_rate)
        print(
            f"[{repeat}] fdl        threads={fdl_threads}: {fdl_rate:10.0f} samples/s  (minibatch loop; "
            f"the whole 1-epoch fit with validation, checkpoints and test: {fdl_total:.1f} s)"
        )
        for threads in sorted({1, min(2, cpus)}):
            rate = reference_epoch(threads)
            references.setdefault(threads, []).append(rate)
            print(f"[{repeat}] reference  threads={threads}: {rate:10.0f} samples/s")
    best_fdl = max(fdl_rates)
    best_reference = max(max(rates) for rates in references.values())
    print(f"best: fdl {best_fdl:.0f} samples/s, reference {best_reference:.0f} samples/s")
    print(f"ratio {best_fdl / best_reference:.2f}")


if __name__ == "__main__":
    main()
