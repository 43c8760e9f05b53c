"""Figures of chapter 6's autoencoders: 2-D codes of PCA and the autoencoder, reconstruction grids."""

from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def code_scatter(pca: torch.Tensor, autoencoder: torch.Tensor, labels: torch.Tensor, path: Path) -> None:
    """The book's side-by-side scatter of 2-D test codes, coloured by digit."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, codes, title in ((axes[0], pca, "PCA (k=2)"), (axes[1], autoencoder, "autoencoder (k=2)")):
        points = ax.scatter(
            codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=2, alpha=0.6, vmin=-0.5, vmax=9.5
        )
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(points, ax=axes, ticks=range(10), label="digit")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def reconstruction_grid(rows: dict[str, torch.Tensor], path: Path, columns: int = 10) -> None:
    """One row per named image batch (the first ``columns`` images of each), 28x28 greyscale."""
    plt = _pyplot()
    fig, axes = plt.subplots(len(rows), columns, figsize=(columns * 0.9, len(rows) * 1.0 + 0.2))
    for r, (name, images) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(28, 28).clamp(0, 1), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def activation_histogram(codes: torch.Tensor, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(codes.flatten().numpy(), bins=50, range=(0, 1))
    ax.set_xlabel("code unit activation (test images)")
    ax.set_ylabel("count")
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
