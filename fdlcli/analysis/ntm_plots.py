"""The NTM's heads at work on one copy sequence (the NTM paper's figure 6): input and output, the add
vectors and write weightings while the sequence comes in, the read weightings and read vectors while it is
recalled; and the bit errors per sequence against the sequence length for several models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fdlcli.analysis.artifacts import pyplot, save_png


def used_slots(*weightings: torch.Tensor, threshold: float = 0.01) -> slice:
    """The span of memory slots that any of the weightings [T, N] gives more than ``threshold``."""
    used = torch.cat([w.max(dim=0).values.unsqueeze(0) for w in weightings]).max(dim=0).values > threshold
    slots = used.nonzero().flatten()
    if len(slots) == 0:
        return slice(0, weightings[0].shape[1])
    return slice(int(slots.min()), int(slots.max()) + 1)


def plot_heads(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    outputs: torch.Tensor,
    trace: dict[str, torch.Tensor],
    path: Path,
) -> None:
    """``inputs`` [T, bits+1], ``targets``/``outputs`` [T, bits]; ``trace`` from ``NTM(..., record=True)``
    for this one sequence (write_weights and read_weights [T, H, N], adds and reads [T, H, W]); the first
    write and read head are drawn."""
    plt = pyplot()
    write, read = trace["write_weights"][:, 0], trace["read_weights"][:, 0]
    span = used_slots(write, read)
    fig, axes = plt.subplots(3, 2, figsize=(11, 9), gridspec_kw={"height_ratios": [1, 1.3, 2.2]})
    panels = [
        ("inputs (last row: delimiter)", inputs.T, "Greys", (0, 1)),
        ("outputs (sigmoid); target below", torch.cat([outputs.T, targets.T]), "Greys", (0, 1)),
        ("adds (write head)", trace["adds"][:, 0].T, "coolwarm", None),
        ("reads (read head)", trace["reads"][:, 0].T, "coolwarm", None),
        (f"write weightings (slots {span.start}-{span.stop - 1})", write[:, span].T, "Blues", (0, 1)),
        (f"read weightings (slots {span.start}-{span.stop - 1})", read[:, span].T, "Reds", (0, 1)),
    ]
    for ax, (title, image, cmap, limits) in zip(axes.flatten(), panels, strict=True):
        if limits is None:
            top = float(image.abs().max()) or 1.0
            limits = (-top, top)
        ax.imshow(
            image.numpy(), aspect="auto", cmap=cmap, interpolation="nearest", vmin=limits[0], vmax=limits[1]
        )
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_yticks([])
        ax.set_xlabel("time step", fontsize=8)
    for ax in axes[2]:
        ax.set_ylabel("memory slot", fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def plot_bit_errors(
    curves: Mapping[str, Sequence[tuple[int, float]]], path: Path, trained_up_to: int
) -> None:
    """Bit errors per sequence against the test length, one curve per model: ``curves[label]`` is a list
    of (length, bit errors per sequence)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        lengths, errors = zip(*sorted(points), strict=True)
        ax.plot(lengths, errors, marker="o", label=label)
    ax.axvspan(0, trained_up_to, color="0.92", zorder=0, label=f"training lengths (<= {trained_up_to})")
    ax.set_xlabel("sequence length (vectors)")
    ax.set_ylabel("bit errors per sequence")
    ax.set_title("copy task: generalization to longer sequences")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
