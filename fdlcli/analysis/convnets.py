"""Figures of convolutional runs (chapter 5): first-layer filters, t-SNE of the last hidden layer, and
convergence curves of several runs on one plot (batch normalization against none)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def first_conv(model: nn.Module) -> nn.Conv2d:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module
    raise ValueError("the model has no convolution")


def filter_grid(weight: torch.Tensor, pad: int = 1) -> np.ndarray:
    """Filters [out, in, k, k] as one image: each filter min-max scaled on its own, tiled in a square-ish
    grid; RGB when the input has 3 channels, grey otherwise. Returns [H, W, 3] floats in [0, 1]."""
    w = weight.detach().float().cpu()
    if w.shape[1] != 3:
        w = w[:, :1].expand(-1, 3, -1, -1)  # one input channel (MNIST): grey
    lo = w.flatten(1).min(dim=1).values[:, None, None, None]
    hi = w.flatten(1).max(dim=1).values[:, None, None, None]
    w = (w - lo) / (hi - lo).clamp_min(1e-12)
    n, _, k, _ = w.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.ones(3, rows * (k + pad) + pad, cols * (k + pad) + pad)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = pad + r * (k + pad), pad + c * (k + pad)
        grid[:, top : top + k, left : left + k] = w[i]
    return grid.permute(1, 2, 0).numpy()


def save_filter_grid(model: nn.Module, path: Path, title: str) -> None:
    plt = _pyplot()
    conv = first_conv(model)
    image = filter_grid(conv.weight)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(f"{title}: first-layer filters {tuple(conv.weight.shape)}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def hidden_features(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The last hidden layer's activations (``model.hidden``) of preprocessed images, in eval mode."""
    model.eval()
    return torch.cat(
        [model.hidden(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)]
    )


def tsne(features: torch.Tensor, seed: int, perplexity: float = 30.0) -> np.ndarray:
    from sklearn.manifold import TSNE

    x = features.cpu().numpy().astype(np.float32)
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))  # scikit-learn needs perplexity < n
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def save_tsne(points: np.ndarray, labels: np.ndarray, names: list[str], path: Path, title: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    cmap = plt.get_cmap("tab10")
    for cls, name in enumerate(names):
        chosen = labels == cls
        ax.scatter(points[chosen, 0], points[chosen, 1], s=4, color=cmap(cls % 10), label=name)
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
