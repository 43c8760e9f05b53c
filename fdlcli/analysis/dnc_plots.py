"""The DNC's memory at work on one copy series (the book's figure 8-9): input, target and output, the write
and read weightings over the memory slots, the free, allocation and write gates, and the usage."""

from __future__ import annotations

from pathlib import Path

import torch

from fdlcli.analysis.artifacts import pyplot, save_png


def plot_weightings(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    outputs: torch.Tensor,
    trace: dict[str, torch.Tensor],
    length: int,
    path: Path,
) -> None:
    """``inputs`` [T, bits+1], ``targets``/``outputs`` [T, bits]; ``trace`` from ``DNC(..., record=True)``
    for this one series (write_weights and usage [T, N], read_weights [T, R, N], gates [T] or [T, R])."""
    plt = pyplot()
    steps = inputs.shape[0]
    fig, axes = plt.subplots(
        7, 1, figsize=(10, 12), sharex=True, gridspec_kw={"height_ratios": [1, 1, 1, 1.6, 1.6, 1.1, 1.6]}
    )
    panels = [
        ("input (last row: delimiter)", inputs.T, "Greys"),
        ("target", targets.T, "Greys"),
        ("output (sigmoid)", outputs.T, "Greys"),
        ("write weighting", trace["write_weights"].T, "Blues"),
        ("read weighting", trace["read_weights"].sum(dim=1).T, "Reds"),
    ]
    for ax, (title, image, cmap) in zip(axes, panels, strict=False):
        ax.imshow(image.numpy(), aspect="auto", cmap=cmap, interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_yticks([])
    gates = axes[5]
    time = torch.arange(steps).numpy()
    gates.plot(time, trace["free_gates"].mean(dim=1).numpy(), label="free gate", color="tab:red")
    gates.plot(time, trace["alloc_gate"].numpy(), label="allocation gate", color="tab:green")
    gates.plot(time, trace["write_gate"].numpy(), label="write gate", color="tab:blue")
    gates.set_ylim(-0.05, 1.05)
    gates.set_title("gates", fontsize=9, loc="left")
    gates.legend(fontsize=7, loc="lower left", ncol=3, framealpha=0.8)
    usage = axes[6]
    usage.imshow(
        trace["usage"].T.numpy(), aspect="auto", cmap="Purples", interpolation="nearest", vmin=0, vmax=1
    )
    usage.set_title("usage", fontsize=9, loc="left")
    usage.set_ylabel("slot", fontsize=8)
    usage.set_xlabel("time step")
    for ax in axes:  # a line where each sequence's recall ends
        for end in range(2 * length + 1, steps, 2 * length + 1):
            ax.axvline(end - 0.5, color="0.6", linewidth=0.6)
    fig.tight_layout()
    save_png(fig, path)
