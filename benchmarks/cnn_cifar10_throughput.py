"""fdl's cnn-cifar10 training throughput against the usual tutorial loop, in one process.

Both train the book's CIFAR-10 network (Adam lr 1e-3, batch 128) on the same real
45,000 training images of the mirror (JPEG-recompressed CIFAR-10) with the same distortions: random 24x24
crop, horizontal flip, brightness and contrast, per-image whitening.

- fdl: ``ImageClassification`` as ``fdl train cnn-cifar10`` runs it: the decoded uint8 training set
  resident on the device, minibatches indexed by a permutation, the whole minibatch augmented in a few
  batched tensor ops (``fdlcli.experiments.cnn.augment``), channels_last; bf16 autocast on CUDA.
- reference (the tutorial pattern): a map-style Dataset that decodes one JPEG per item with Pillow and
  distorts it on its own (numpy), a DataLoader with shuffling and batch 128, and the same network written
  as tutorials write it (conv-ReLU-pool, NCHW). fdl's network pools before its ReLU (the same function,
  cheaper) and runs channels_last: both count as fdl's speed here.
  It is timed with 0 and 2 DataLoader workers and the ratio is taken against the faster.

A third line times the reference network alone on one resident, already-distorted minibatch: no data
work at all. It bounds what any input pipeline can buy: ``ceiling`` = that rate over the reference's, the
largest ratio an fdl with the reference's compute speed could reach. On a CPU the network's own
arithmetic dominates the step, so the ceiling is small there; on a GPU the input pipeline dominates.

Each side runs ``--warmup`` steps untimed, then ``--steps`` timed steps. The script ends with
``ratio <fdl images/s over the reference's>``.

    FDL_DATA_DIR=../shared/data python benchmarks/cnn_cifar10_throughput.py [--device cuda] [--steps 40]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdlcli import config as fdl_config
from fdlcli.data.hub import load_split
from fdlcli.engine.devices import autocast
from fdlcli.experiments.cnn import ImageClassification

BATCH = 128


def _timed(step, warmup: int, steps: int, device: torch.device) -> float:  # type: ignore[no-untyped-def]
    """Images per second of ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * BATCH / (time.perf_counter() - started)


def fdl_rate(device: torch.device, warmup: int, steps: int) -> float:
    run_config = fdl_config.validate(fdl_config.compose("cnn-cifar10", [f"trainer.device={device.type}"]))
    task = ImageClassification(run_config)
    data = task.load_data().to(device)  # decoded once and cached; resident on the device
    torch.manual_seed(0)
    model = task.build_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = data.train
    order = torch.randperm(len(labels), device=device)
    position = [0]
    precision = "bf16" if device.type == "cuda" else "32"

    def step() -> None:  # the body of fdl's fit() loop
        start = position[0] % (len(labels) - BATCH)
        indices = order[start : start + BATCH]
        position[0] += BATCH
        with autocast(device, precision):
            loss = task.loss(model, (images[indices], labels[indices]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _timed(step, warmup, steps, device)


class JPEGDataset(torch.utils.data.Dataset):
    """The tutorial pattern: decode and distort one image per __getitem__ (the TF tutorial's distortions)."""

    def __init__(self, rows: list[dict], labels: list[int]) -> None:
        self.rows, self.labels = rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        rng = np.random.default_rng()
        image = np.asarray(Image.open(io.BytesIO(self.rows[index]["bytes"])).convert("RGB"), np.float32) / 255
        top, left = rng.integers(0, 9, size=2)
        x = image[top : top + 24, left : left + 24]
        if rng.random() < 0.5:
            x = x[:, ::-1]
        x = x + rng.uniform(-63 / 255, 63 / 255)
        mean = x.mean(axis=(0, 1), keepdims=True)
        x = (x - mean) * rng.uniform(0.2, 1.8) + mean
        x = (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size))
        # float32 again: a near-flat image divides by the float64 floor, which numpy 2 promotes to float64
        x = np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
        return torch.from_numpy(x), self.labels[index]


def tutorial_model() -> nn.Module:
    """The book's CIFAR-10 network as a tutorial writes it: conv-ReLU-pool, default NCHW layout."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(6 * 6 * 64, 384), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(384, 192), nn.ReLU(), nn.Dropout(0.5), nn.Linear(192, 10),
    )  # fmt: skip


def reference_rate(device: torch.device, warmup: int, steps: int, workers: int) -> float:
    dataset = load_split("cifar10", "uoft-cs/cifar10", "train", None)
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    rows, labels = table.column("img").to_pylist()[5000:], table.column("label").to_pylist()[5000:]
    loader = torch.utils.data.DataLoader(
        JPEGDataset(rows, labels), batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True
    )
    torch.manual_seed(0)
    model = tutorial_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def epochs():  # type: ignore[no-untyped-def]  # a new epoch only on a cut mirror (the GPU check's)
        while True:
            yield from loader

    batches = epochs()

    def step() -> None:
        inputs, targets = next(batches)
        inputs, targets = inputs.to(device), targets.to(device)
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _timed(step, warmup, steps, device)


def compute_only_rate(device: torch.device, warmup: int, steps: int) -> float:
    """The reference network and optimizer on one resident minibatch: its step with zero data cost."""
    torch.manual_seed(0)
    model = tutorial_model().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    inputs = torch.randn(BATCH, 3, 24, 24, device=device)  # whitened images have zero mean, unit std
    targets = torch.randint(0, 10, (BATCH,), device=device)

    def step() -> None:
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return _timed(step, warmup, steps, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (fdl CNN default: 1)")
    args = parser.parse_args()
    if not os.environ.get("FDL_DATA_DIR"):
        os.environ["FDL_DATA_DIR"] = str(Path(__file__).resolve().parents[2] / "shared" / "data")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cpus = len(os.sched_getaffinity(0))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"device: {device} ({name}), {cpus} CPUs, {args.threads} threads, torch {torch.__version__}")
    fdl = fdl_rate(device, args.warmup, args.steps)
    print(f"fdl                 : {fdl:10.0f} images/s")
    references = {}
    for workers in (0, min(2, cpus)):
        references[workers] = reference_rate(device, args.warmup, args.steps, workers)
        print(f"reference workers={workers}: {references[workers]:10.0f} images/s")
    compute_only = compute_only_rate(device, args.warmup, args.steps)
    reference = max(references.values())
    print(f"reference, no data  : {compute_only:10.0f} images/s (ceiling {compute_only / reference:.2f})")
    print(f"ratio {fdl / reference:.2f}")


if __name__ == "__main__":
    main()
