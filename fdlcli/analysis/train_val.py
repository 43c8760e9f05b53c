"""Training against validation curves of one run, per epoch (chapter 7's overfitting figures).

Left: the mean training cost of each epoch and the validation cost after it; right: the validation
accuracy, with the best epoch marked. Read from ``metrics.jsonl`` alone, so it works on running runs too.
"""

from __future__ import annotations

from pathlib import Path

from fdlcli.analysis.artifacts import pyplot, save_png
from fdlcli.errors import RunDirError
from fdlcli.runs import read_metrics


def epoch_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``{metric: [(epoch, value), ...]}`` of the per-epoch records (train/epoch_cost and val/*)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for record in read_metrics(run_dir):
        name = str(record.get("name", ""))
        if name == "train/epoch_cost" or name.startswith("val/"):
            curves.setdefault(name, []).append((int(record["epoch"]), float(record["value"])))
    return curves


def train_val_figure(run_dir: Path, out: Path, title: str) -> tuple[int, float]:
    """Write the figure; return the best epoch and its validation accuracy."""
    curves = epoch_curves(run_dir)
    needed = ("train/epoch_cost", "val/cost", "val/accuracy")
    if any(not curves.get(name) for name in needed):
        raise RunDirError(f"{run_dir} has no finished epoch with {', '.join(needed)} yet")
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=110)
    for name, label in (("train/epoch_cost", "training (epoch mean)"), ("val/cost", "validation")):
        epochs, values = zip(*curves[name], strict=True)
        left.plot(epochs, values, marker="o", ms=3, lw=1.3, label=label)
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend(fontsize=8, frameon=False)
    epochs, accuracy = zip(*curves["val/accuracy"], strict=True)
    best = max(range(len(accuracy)), key=accuracy.__getitem__)
    right.plot(epochs, accuracy, marker="o", ms=3, lw=1.3, color="tab:green")
    right.axvline(epochs[best], color="grey", lw=0.8, ls="--")
    late = best >= len(epochs) / 2  # the label goes left of a late best epoch, so it stays inside
    right.annotate(f"best: epoch {epochs[best]}, {accuracy[best]:.2%}", (epochs[best], accuracy[best]),
                   textcoords="offset points", xytext=(-5 if late else 5, -12), fontsize=8,
                   ha="right" if late else "left")  # fmt: skip
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, out)
    return epochs[best], accuracy[best]
