"""Batched image operations on [N, C, H, W] tensors: each is one indexing op for the whole minibatch,
so training-time augmentation never loops over images in Python."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fdlcli.config import DataConfig

# The side in pixels of the square images of each dataset (data.name) the image experiments train on.
IMAGE_SIDES = {"mnist": 28, "cifar10": 32}


@dataclass
class ShiftDataConfig(DataConfig):
    """Data keys of image experiments that can translate their training images (on top of DataConfig)."""

    shift: int = 0  # random translation by up to this many pixels (zero fill) in training; not in the book

    def check(self) -> str | None:
        if self.shift < 0:
            return f"data.shift={self.shift}: it must not be negative"
        side = IMAGE_SIDES.get(self.name)
        if side is not None and self.shift >= side:  # every image could leave its frame: blank training
            return (
                f"data.shift={self.shift}: it must be smaller than the {side}x{side} {self.name} images "
                f"(at most {side - 1})"
            )
        return None


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
    return x[:, :, top : top + size, left : left + size]


def random_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """A different random size x size window of every image, gathered in one indexing op."""
    n, _, h, w = x.shape
    top = torch.randint(0, h - size + 1, (n,), device=x.device)
    left = torch.randint(0, w - size + 1, (n,), device=x.device)
    return crop_at(x, top, left, size)


def crop_at(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """The size x size window of image i whose corner is (top[i], left[i]), all gathered in one op."""
    n, c = x.shape[:2]
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
