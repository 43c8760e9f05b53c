"""Loss-surface interpolation (chapter 4; Goodfellow, Vinyals & Saxe 2014).

Along the straight line theta(a) = a * theta_end + (1 - a) * theta_start we evaluate the cost and accuracy of
the model at every a of a grid (default [-2, 2) step 0.01). With theta_start the run's step-0 weights and
theta_end its trained weights this is the book's figure: is there a bump, a local minimum, a flat region on
the way from the initialization to the solution? With two trained runs as the ends it asks whether a
barrier separates two solutions.

The model and data come from the run's saved config through its experiment's :class:`SupervisedTask`, and
each point is evaluated by the task's own ``metrics``, so a = 0 and a = 1 reproduce exactly what
``fdl eval --checkpoint init/last`` reports on the same examples (the mix is written a*end + (1-a)*start,
which is exact at both ends; ``torch.lerp`` would not be). One evaluation per point over a few thousand
examples is one large matrix product per layer; the 400-point sweep takes seconds on a CPU.

Batch normalization: running statistics belong to one set of weights and mean nothing for an interpolated
one, so a model with BN layers gets them re-estimated at every a from training examples (cumulative average
over the minibatches, as in SWA's ``update_bn``) before it is evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fdlcli.analysis.artifacts import pyplot, save_png, write_csv
from fdlcli.data.tensors import Arrays, minibatches
from fdlcli.engine.supervised import SupervisedTask
from fdlcli.errors import UsageError


@dataclass
class InterpolationConfig:
    start: float = -2.0
    stop: float = 2.0  # exclusive, like the book's np.arange(-2, 2, 0.01)
    step: float = 0.01
    split: str = "test"  # test | val | train
    examples: int = 2000  # the first N examples of the split; 0 = all of it
    bn_examples: int = 2000  # training examples that re-estimate batch-norm statistics at each a

    def check(self) -> None:
        if not (math.isfinite(self.start) and math.isfinite(self.stop) and math.isfinite(self.step)):
            raise UsageError("--start, --stop and --step must be finite numbers")
        if self.step <= 0:
            raise UsageError(f"--step must be positive, got {self.step}")
        if self.stop <= self.start:
            raise UsageError(f"--stop ({self.stop}) must be greater than --start ({self.start})")
        if len(self.alphas()) > 100_000:
            raise UsageError("more than 100,000 points: use a larger --step")
        if self.split not in ("test", "val", "train"):
            raise UsageError(f"--split must be test, val or train, got {self.split!r}")
        if self.examples < 0 or self.bn_examples <= 0:
            raise UsageError("--examples must be >= 0 and --bn-examples > 0")

    def alphas(self) -> list[float]:
        """The grid start + k*step below stop; computed from k, so 0 and 1 land exactly on the grid."""
        count = math.ceil((self.stop - self.start) / self.step - 1e-9)
        return [round(self.start + k * self.step, 10) for k in range(count)]


@dataclass
class PathResult:
    alphas: list[float]
    metrics: list[dict[str, float]]  # one dict per alpha, keys as the task's metrics returns them
    batch_norm: bool  # whether BN statistics were re-estimated along the path
    examples: int
    bn_examples: int = 0
    notes: list[str] = field(default_factory=list)

    def column(self, name: str) -> list[float]:
        return [m[name] for m in self.metrics]


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _is_bn_statistic(model: nn.Module, key: str) -> bool:
    module_name, _, leaf = key.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and leaf in (
        "running_mean",
        "running_var",
        "num_batches_tracked",
    )


@torch.no_grad()
def reestimate_batch_norm(model: nn.Module, arrays: Arrays, batch_size: int) -> None:
    """Replace every BN layer's running statistics by their average over ``arrays`` (train-mode passes)."""
    bn_layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved_momenta = [m.momentum for m in bn_layers]
    for layer in bn_layers:
        layer.reset_running_stats()
        layer.momentum = None  # None = cumulative moving average: every minibatch counts equally
    was_training = model.training
    model.train()
    for batch in minibatches(arrays, batch_size):
        model(batch[0])
    model.train(was_training)
    for layer, momentum in zip(bn_layers, saved_momenta, strict=True):
        layer.momentum = momentum


@torch.no_grad()
def interpolate_path(
    task: SupervisedTask,
    model: nn.Module,
    start: dict[str, torch.Tensor],
    end: dict[str, torch.Tensor],
    alphas: list[float],
    arrays: Arrays,
    bn_arrays: Arrays | None,
    batch_size: int,
) -> PathResult:
    """Evaluate ``task`` at every a*end + (1-a)*start; ``start``/``end`` are state dicts of ``model``."""
    batch_norm = has_batch_norm(model)
    if batch_norm and bn_arrays is None:
        raise ValueError("a model with batch norm needs training examples to re-estimate its statistics")
    # Floating-point weights are mixed; BN statistics are re-estimated; anything else (integer buffers)
    # is taken from the end point.
    mixed = [
        k for k, v in end.items() if v.is_floating_point() and not (batch_norm and _is_bn_statistic(model, k))
    ]
    state = {k: v.clone() for k, v in end.items()}
    metrics = []
    for alpha in alphas:
        for key in mixed:
            torch.add(end[key] * alpha, start[key] * (1.0 - alpha), out=state[key])
        model.load_state_dict(state)
        if batch_norm:
            assert bn_arrays is not None
            reestimate_batch_norm(model, bn_arrays, batch_size)
        metrics.append(task.metrics(model, arrays, batch_size))
    return PathResult(
        alphas=list(alphas),
        metrics=metrics,
        batch_norm=batch_norm,
        examples=len(arrays[0]),
        bn_examples=len(bn_arrays[0]) if batch_norm and bn_arrays is not None else 0,
    )


# --------------------------------------------------------------------------------------------------
# Reading the curve: the minimum, flat stretches and bumps, in words.


def describe_path(alphas: list[float], costs: list[float], two_solutions: bool) -> list[str]:
    """A few lines on the shape of the cost along the path."""
    lines = []
    finite = [(a, c) for a, c in zip(alphas, costs, strict=True) if math.isfinite(c)]
    if not finite:
        return ["the cost is not finite anywhere on the path"]
    a_min, c_min = min(finite, key=lambda p: p[1])
    lines.append(f"minimum cost {c_min:.4f} at a={a_min:g}")
    inside = [(a, c) for a, c in finite if 0.0 <= a <= 1.0]
    ends = {a: c for a, c in inside if a in (0.0, 1.0)}
    if 0.0 in ends and 1.0 in ends:
        lines.append(f"cost {ends[0.0]:.4f} at a=0, {ends[1.0]:.4f} at a=1")
    if len(inside) >= 2:
        scale = max(c for _, c in inside) - min(c for _, c in inside)
        # the largest rise on the way from a=0 to a=1 (0 for a monotonically falling cost)
        rise, rise_at, low = 0.0, None, inside[0][1]
        for a, c in inside:
            low = min(low, c)
            if c - low > rise:
                rise, rise_at = c - low, a
        if two_solutions and 0.0 in ends and 1.0 in ends:
            peak_a, peak = max(inside, key=lambda p: p[1])
            barrier = peak - max(ends[0.0], ends[1.0])
            if barrier > 1e-3 * max(1.0, abs(peak)):
                lines.append(
                    f"barrier: the cost rises {barrier:.4f} above the higher end, peaking at a={peak_a:g}"
                )
            else:
                lines.append("no barrier: the cost between the two solutions stays below the higher end")
        elif rise_at is not None and rise > 0.01 * max(scale, 1e-12):
            lines.append(f"bump between a=0 and a=1: the cost rises by {rise:.4f} (up to a={rise_at:g})")
        else:
            lines.append("no bump: the cost falls monotonically from a=0 to a=1")
        extrema = local_extrema(alphas, costs, tolerance=1e-3 * max(scale, 1e-12))
        for kind in ("minima", "maxima"):
            if extrema[kind]:
                lines.append(
                    f"local {kind}: "
                    + ", ".join(f"a={a:g} (cost {c:.4f})" for a, c in extrema[kind][:5])
                    + (f" and {len(extrema[kind]) - 5} more" if len(extrema[kind]) > 5 else "")
                )
        flats = flat_regions(alphas, costs, tolerance=0.05 * max(scale, 1e-12))
        if flats:
            lines.append(
                "flat (|dcost/da| < 5% of the cost range on [0,1]) for a in "
                + ", ".join(f"[{lo:g}, {hi:g}]" for lo, hi in flats[:4])
                + (f" and {len(flats) - 4} more stretches" if len(flats) > 4 else "")
            )
    return lines


def local_extrema(
    alphas: list[float], costs: list[float], tolerance: float, window: int = 10
) -> dict[str, list[tuple[float, float]]]:
    """Interior points that are the lowest (highest) within ``window`` points on either side and stand
    more than ``tolerance`` below (above) the most extreme other point of that window."""
    found: dict[str, list[tuple[float, float]]] = {"minima": [], "maxima": []}
    for i in range(window, len(costs) - window):
        around = costs[i - window : i + window + 1]
        if not all(math.isfinite(c) for c in around):
            continue
        if costs[i] == min(around) and max(around) - costs[i] > tolerance and costs[i] < costs[i - 1]:
            found["minima"].append((alphas[i], costs[i]))
        if costs[i] == max(around) and costs[i] - min(around) > tolerance and costs[i] > costs[i - 1]:
            found["maxima"].append((alphas[i], costs[i]))
    return found


def flat_regions(
    alphas: list[float], costs: list[float], tolerance: float, min_width: float = 0.1
) -> list[tuple[float, float]]:
    """Stretches at least ``min_width`` wide where the slope of the cost stays below ``tolerance``."""
    regions: list[tuple[float, float]] = []
    run_start = None
    for i in range(1, len(alphas)):
        slope = (costs[i] - costs[i - 1]) / (alphas[i] - alphas[i - 1])
        flat = math.isfinite(slope) and abs(slope) < tolerance
        if flat and run_start is None:
            run_start = alphas[i - 1]
        if (not flat or i == len(alphas) - 1) and run_start is not None:
            run_end = alphas[i] if flat else alphas[i - 1]
            if run_end - run_start >= min_width - 1e-9:
                regions.append((run_start, run_end))
            run_start = None
    return regions


# --------------------------------------------------------------------------------------------------
# Files: a CSV of every point and a figure of cost and accuracy against a.


def save_csv(path: Path, result: PathResult) -> None:
    names = list(result.metrics[0]) if result.metrics else []
    rows = ([alpha, *(m[n] for n in names)] for alpha, m in zip(result.alphas, result.metrics, strict=True))
    write_csv(path, ["alpha", *names], rows, digits=17)  # exact round trip: a=0 and a=1 compare exactly


def plot_path(path: Path, result: PathResult, title: str, end_labels: tuple[str, str]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    costs = result.column("cost")
    ax.plot(result.alphas, costs, color="tab:blue", lw=1.6, label="cost")
    finite = [c for c in costs if math.isfinite(c) and c > 0]
    if finite and max(finite) / min(finite) > 100:
        ax.set_yscale("log")
    ax.set_xlabel("a   (theta = a * theta_1 + (1 - a) * theta_0)")
    ax.set_ylabel("cost (cross-entropy)", color="tab:blue")
    for alpha, label in zip((0.0, 1.0), end_labels, strict=True):
        ax.axvline(alpha, color="grey", lw=0.8, ls="--")
        ax.text(
            alpha,
            0.5,
            f" {label}",
            transform=ax.get_xaxis_transform(),
            rotation=90,
            fontsize=7,
            color="dimgrey",
            ha="right",
            va="center",
        )
    if "accuracy" in result.metrics[0]:
        twin = ax.twinx()
        twin.plot(result.alphas, result.column("accuracy"), color="tab:orange", lw=1.2, alpha=0.8)
        twin.set_ylabel("accuracy", color="tab:orange")
        twin.set_ylim(0, 1.02)
    note = "BN statistics re-estimated at every a" if result.batch_norm else "no batch norm"
    ax.set_title(f"{title}\n{result.examples} examples; {note}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
