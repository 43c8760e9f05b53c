"""Batched image operations on [N, C, H, W] tensors: each is one indexing op for the whole minibatch,
so training-time augmentation never loops over images in Python."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
    return x[:, :, top : top + size, left : left + size]


def random_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """A different random size x size window of every image, gathered in one indexing op."""
    n, c, h, w = x.shape
    top = torch.randint(0, h - size + 1, (n,), device=x.device)
    left = torch.randint(0, w - size + 1, (n,), device=x.device)
    offsets = torch.arange(size, device=x.device)
    rows = (top[:, None] + offsets)[:, None, :, None]  # [n,1,size,1]
    cols = (left[:, None] + offsets)[:, None, None, :]  # [n,1,1,size]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return x[batch, channel, rows, cols]


def random_shift(x: torch.Tensor, pixels: int) -> torch.Tensor:
    """Translate every image by its own random offset of up to ``pixels`` in each direction, zero fill:
    pad by ``pixels``, then take a random window of the original size."""
    return random_crop(F.pad(x, (pixels,) * 4), x.shape[-1])
