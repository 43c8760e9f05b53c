"""Minutes to a CIFAR-10 test accuracy: fdl's cnn-cifar10-fast against the usual PyTorch tutorial script.

Both sides train on all 50,000 training images of the mirror (JPEG-recompressed CIFAR-10) and evaluate on
the 10,000 test images, in one process, with the same torch threads:

- fdl: ``cnn-cifar10-fast`` (airbench94's recipe, fdlcli/experiments/cifar_fast.py) with
  ``data.val_size=0 trainer.monitor=null`` and any ``--fdl KEY=VALUE`` overrides: its Task's own steps
  and its test evaluation (with the run's TTA level) after every epoch, as ``fdl train`` does them.
- reference: the book's cnn-cifar10-bn network (conv5x5x64-BN-ReLU-pool twice, fc384-BN, fc192-BN, He
  init, Adam lr 0.01, batch 128) and augmentation (random 24x24 crop, flip, brightness, contrast, per-image
  standardization; centre crops at test time) written as the tutorial pattern: a Dataset that decodes
  one JPEG with Pillow and distorts it per item, DataLoader(num_workers=2), a plain loop; the test set
  through a DataLoader too, every ``--eval-every`` minibatches.

The clock runs during training steps and evaluations only, for both (not while fdl loads its cached
tensors and initializes its whitening layer, nor while the reference reads the parquet bytes). Each side
stops at its target accuracy (``--target`` for the reference, the highest of ``--fdl-targets`` for fdl)
or after ``--cap-minutes``. The script prints the minutes each needed to reach every threshold, then
``ratio <reference minutes / fdl minutes>`` at ``--target`` last (``ratio nan`` when either missed it).

    FDL_DATA_DIR=../shared/data python benchmarks/cifar10_time_to_accuracy.py [--seed 0] [--cap-minutes 120]
    FDL_DATA_DIR=../shared/data python benchmarks/cifar10_time_to_accuracy.py --quick  # small slice, < 1 min
    python benchmarks/cifar10_time_to_accuracy.py --peak    # fp32 and bf16 matmul GFLOP/s, then exit

A finished ``fdl train`` run gives the same reading from its metrics.jsonl:
``python benchmarks/time_to_accuracy.py RUN --metric test/accuracy``.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from cnn_cifar10_throughput import JPEGDataset  # the tutorial Dataset (the book's distortions)
from torch import nn

from fdlcli import config as fdl_config
from fdlcli.data.hub import load_split
from fdlcli.engine.devices import autocast
from fdlcli.engine.seed import seed_everything
from fdlcli.experiments.cifar_fast import FastCIFARTask, flops_per_image

Curve = list[tuple[float, float]]  # (minutes of training and evaluation, test accuracy)


def matmul_gflops(
    size: int = 2048, seconds: float = 3.0, dtype: torch.dtype = torch.float32
) -> tuple[float, float]:
    """This CPU's matmul rate (fp32 or bf16) with torch's current threads, a practical peak for the
    module header's fraction-of-peak figure: (GFLOP per wall second, GFLOP per CPU-second of this
    process). On a quiet machine the first is the peak; on a shared one the second still says what a
    core computes."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    count, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    flop = 2 * size**3 * count / 1e9
    return flop / (time.perf_counter() - started), flop / (time.process_time() - cpu)


# ---- fdl ------------------------------------------------------------------------------------------


def fdl_curve(overrides: list[str], targets: list[float], cap_minutes: float, eval_limit: int) -> Curve:
    """Train cnn-cifar10-fast through its Task, timing steps and the test evaluation after each epoch."""
    limit = [f"data.eval_limit={eval_limit}"] if eval_limit else []
    run_config = fdl_config.validate(
        fdl_config.compose(
            "cnn-cifar10-fast",
            ["data.val_size=0", "trainer.monitor=null", "trainer.device=cpu", *limit, *overrides],
        )
    )
    print(f"fdl: cnn-cifar10-fast {' '.join(overrides)}")
    seed_everything(run_config.seed)
    task = FastCIFARTask(run_config)
    task.setup()  # untimed: the cached uint8 tensors and the whitening layer's initialization
    task.train_model = task.model
    precision = autocast(torch.device("cpu"), run_config.trainer.precision)  # as fdl train: steps and tests
    curve: Curve = []
    seconds, step = 0.0, 0
    for epoch in range(math.ceil(run_config.trainer.epochs)):
        started = time.perf_counter()
        task.model.train()
        for index in range(task.start_epoch(epoch)):
            with precision:
                task.train_step(step, index)
            step += 1
        task.model.eval()
        with torch.no_grad(), precision:
            accuracy = task.evaluate("test")["accuracy"]
        seconds += time.perf_counter() - started
        curve.append((seconds / 60, accuracy))
        print(f"  fdl epoch {epoch + 1}: {seconds / 60:6.2f} min, test accuracy {accuracy:.4f}")
        if accuracy >= max(targets) or seconds >= cap_minutes * 60:
            break
    return curve


# ---- the reference: the tutorial pattern ------------------------------------------------------------


class JPEGTestset(torch.utils.data.Dataset):
    """Test images decoded per item, centre-cropped to 24x24 and standardized (the book's evaluation)."""

    def __init__(self, rows: list[dict], labels: list[int]) -> None:
        self.rows, self.labels = rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = np.asarray(Image.open(io.BytesIO(self.rows[index]["bytes"])).convert("RGB"), np.float32) / 255
        x = image[4:28, 4:28]
        x = (x - x.mean()) / max(x.std(), 1 / np.sqrt(x.size))
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)), self.labels[
            index
        ]


def reference_model() -> nn.Module:
    """cnn-cifar10-bn as a tutorial writes it: conv-BN-ReLU-pool, NCHW, He-normal init as the book."""
    model = nn.Sequential(
        nn.Conv2d(3, 64, 5, padding=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 5, padding=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(6 * 6 * 64, 384, bias=False), nn.BatchNorm1d(384), nn.ReLU(),
        nn.Linear(384, 192, bias=False), nn.BatchNorm1d(192), nn.ReLU(),
        nn.Linear(192, 10),
    )  # fmt: skip
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


def _rows(split: str, limit: int) -> tuple[list[dict], list[int]]:
    dataset = load_split("cifar10", "uoft-cs/cifar10", split, None)
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    rows, labels = table.column("img").to_pylist(), table.column("label").to_pylist()
    if limit:
        order = np.random.default_rng(0).permutation(len(labels))[:limit]  # the mirror is sorted by class
        rows, labels = [rows[i] for i in order], [labels[i] for i in order]
    return rows, labels


def reference_curve(
    target: float, cap_minutes: float, eval_every: int, workers: int, train_limit: int, eval_limit: int
) -> Curve:
    train = torch.utils.data.DataLoader(
        JPEGDataset(*_rows("train", train_limit)), batch_size=128, shuffle=True, num_workers=workers
    )
    test = torch.utils.data.DataLoader(
        JPEGTestset(*_rows("test", eval_limit)), batch_size=1000, num_workers=workers
    )
    model = reference_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    def evaluate() -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for inputs, labels in test:
                correct += int((model(inputs).argmax(1) == labels).sum())
                total += len(labels)
        model.train()
        return correct / total

    curve: Curve = []
    seconds, minibatches = 0.0, 0
    started = time.perf_counter()
    while True:
        for inputs, labels in train:
            loss = F.cross_entropy(model(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            minibatches += 1
            if minibatches % eval_every == 0:
                accuracy = evaluate()
                seconds = time.perf_counter() - started
                curve.append((seconds / 60, accuracy))
                shown = f"{seconds / 60:6.2f} min, test accuracy {accuracy:.4f}"
                print(f"  reference minibatch {minibatches}: {shown}")
                if accuracy >= target or seconds >= cap_minutes * 60:
                    return curve


# ---- the comparison ---------------------------------------------------------------------------------


def minutes_to(curve: Curve, threshold: float) -> float:
    return next((minutes for minutes, accuracy in curve if accuracy >= threshold), math.nan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=float, default=0.80, help="the accuracy of the ratio")
    parser.add_argument("--fdl-targets", type=float, nargs="+", default=[0.80, 0.90])
    parser.add_argument("--cap-minutes", type=float, default=120.0, help="per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fdl", action="append", default=[], metavar="KEY=VALUE", help="cnn-cifar10-fast override"
    )
    parser.add_argument(
        "--eval-every", type=int, default=1000, help="reference minibatches between evaluations"
    )
    parser.add_argument("--workers", type=int, default=2, help="the reference's DataLoader workers")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads; 0 = every usable CPU")
    parser.add_argument(
        "--quick", action="store_true", help="a small slice, under a minute: the script works"
    )
    parser.add_argument("--peak", action="store_true", help="print this CPU's matmul GFLOP/s and exit")
    args = parser.parse_args()
    if not os.environ.get("FDL_DATA_DIR"):
        os.environ["FDL_DATA_DIR"] = str(Path(__file__).resolve().parents[2] / "shared" / "data")
    cpus = len(os.sched_getaffinity(0))
    torch.set_num_threads(args.threads or cpus)
    print(f"{platform.machine()}, {cpus} CPUs, {torch.get_num_threads()} threads, torch {torch.__version__}")
    if args.peak:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            wall, cpu = matmul_gflops(dtype=dtype)
            print(f"{name} matmul: {wall:.1f} GFLOP/s, {cpu:.1f} GFLOP per CPU-second")
        forward, backward = flops_per_image()
        print(f"cnn-cifar10-fast: {(forward + backward) / 1e9:.3f} GFLOP per training image")
        return
    overrides = [f"seed={args.seed}", *args.fdl]
    train_limit = eval_limit = 0
    if args.quick:  # narrow conv groups on 1,024 images, low targets: every code path within a minute
        overrides += [
            "data.train_limit=1024",
            "data.batch_size=256",
            "trainer.epochs=2",
            "model.widths=[16,32,32]",
        ]
        train_limit, eval_limit, args.eval_every, args.cap_minutes = 1024, 500, 4, 1.0
        args.target, args.fdl_targets = 0.1, [0.1, 0.12]
    torch.manual_seed(args.seed)
    runs: dict[str, Callable[[], Curve]] = {
        "fdl": lambda: fdl_curve(overrides, args.fdl_targets, args.cap_minutes, eval_limit),
        "reference": lambda: reference_curve(
            args.target, args.cap_minutes, args.eval_every, args.workers, train_limit, eval_limit
        ),
    }
    curves = {side: run() for side, run in runs.items()}
    for threshold in sorted({args.target, *args.fdl_targets}):
        for side, curve in curves.items():
            if side == "reference" and threshold > args.target:
                continue
            print(f"{side} minutes to {threshold:.0%}: {minutes_to(curve, threshold):.2f}")
    reference_minutes = minutes_to(curves["reference"], args.target)
    if math.isnan(reference_minutes) and curves["reference"]:
        # the reference stopped at the cap below the target: its time to the target is at least the
        # cap, so the ratio printed is a lower bound
        reference_minutes = curves["reference"][-1][0]
        missed = f"reference missed {args.target:.0%} in {reference_minutes:.2f} min"
        print(f"{missed}: the ratio is a lower bound")
    ratio = reference_minutes / minutes_to(curves["fdl"], args.target)
    print(f"ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
