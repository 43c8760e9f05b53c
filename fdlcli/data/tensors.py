"""Whole datasets as in-memory tensors, decoded once and cached on disk.

Training loops index these tensors with a permutation: no per-sample Python, no collate function.
The first load decodes every image (a few seconds for MNIST); the result is cached under
``$FDL_CACHE_DIR`` (default ``~/.cache/fdl``) as safetensors, keyed by the source files' identity.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fdlcli.config import DataConfig
from fdlcli.data.hub import load_split, mirror_file, mirror_root
from fdlcli.errors import DataUnavailableError
from fdlcli.runs import atomic_write_bytes

Arrays = tuple[torch.Tensor, ...]


@dataclass
class ArraySplits:
    """Train, validation and test tensors (each a tuple such as (images, labels))."""

    train: Arrays
    val: Arrays
    test: Arrays

    def to(self, device: torch.device) -> ArraySplits:
        move = lambda arrays: tuple(a.to(device, non_blocking=True) for a in arrays)  # noqa: E731
        return ArraySplits(move(self.train), move(self.val), move(self.test))

    def map(self, fn) -> ArraySplits:  # type: ignore[no-untyped-def]
        return ArraySplits(fn(self.train), fn(self.val), fn(self.test))


def cache_dir() -> Path:
    return Path(os.environ.get("FDL_CACHE_DIR") or Path.home() / ".cache" / "fdl")


def _decode_image_column(column: list[dict]) -> np.ndarray:
    from PIL import Image

    images = []
    for row, item in enumerate(column):
        data = item.get("bytes") if isinstance(item, dict) else None
        if data is None:
            raise DataUnavailableError(f"image row {row} holds no bytes (image paths are not supported)")
        try:
            images.append(np.asarray(Image.open(io.BytesIO(data))))
        except Exception as exc:  # PIL raises several types for damaged files
            raise DataUnavailableError(f"image row {row} cannot be decoded: {type(exc).__name__}") from None
    try:
        return np.stack(images)
    except ValueError:
        raise DataUnavailableError("the images of this split do not all have the same shape") from None


def _classification_split(cfg: DataConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [N,H,W] or [N,H,W,C], int64 labels [N]) for one split, via the cache."""
    root = mirror_root(cfg.dir)
    if root is not None:
        source = mirror_file(root, cfg.name, split)
        stat = source.stat() if source.is_file() else None
        identity = f"mirror:{source.resolve()}:{stat.st_size}:{stat.st_mtime_ns}" if stat else None
    else:
        identity = None
    dataset = None
    if identity is None:  # the Hub (or a missing mirror file, which load_split reports)
        dataset = load_split(cfg.name, cfg.hub_id, split, cfg.dir)
        identity = f"hub:{cfg.hub_id}:{split}:{dataset._fingerprint}"
    key = hashlib.sha256(identity.encode()).hexdigest()[:24]
    cached = cache_dir() / f"{cfg.name}-{split}-{key}.safetensors"
    if cached.is_file():
        try:
            tensors = load_file(str(cached))
            return tensors["images"], tensors["labels"]
        except Exception:
            pass  # a damaged cache file is rebuilt below
    if dataset is None:
        dataset = load_split(cfg.name, cfg.hub_id, split, cfg.dir)
    image_col, label_col = _classification_columns(dataset)
    table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
    images = torch.from_numpy(_decode_image_column(table.column(image_col).to_pylist()))
    labels = torch.tensor(table.column(label_col).to_pylist(), dtype=torch.int64)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        save_file({"images": images.contiguous(), "labels": labels}, str(tmp), metadata={"source": identity})
        atomic_write_bytes(cached, tmp.read_bytes())
        tmp.unlink()
    except OSError:
        pass  # an unwritable cache only costs time
    return images, labels


def _classification_columns(dataset) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    import datasets

    features = dataset.features
    images = [name for name, f in features.items() if isinstance(f, datasets.Image)]
    labels = [name for name, f in features.items() if isinstance(f, datasets.ClassLabel)]
    if len(images) != 1 or len(labels) != 1:
        raise DataUnavailableError(
            f"expected one Image and one ClassLabel column, found {json.dumps(list(features))}"
        )
    return images[0], labels[0]


def image_classification_arrays(cfg: DataConfig, shuffle_seed: int | None = None) -> ArraySplits:
    """Images and labels of train/validation/test. Without a validation split, the first
    ``val_size`` training examples become the validation set (as TF's ``read_data_sets`` did for MNIST).

    ``shuffle_seed``: permute the rows with this fixed seed first, for sources stored sorted by class (the
    CIFAR-10 mirror), whose head would be a validation set of one class; the test rows too, so that
    ``eval_limit`` slices hold every class. The permutations depend on the seed alone: the validation set
    is the same in every run.
    """
    train_x, train_y = _classification_split(cfg, "train")
    test_x, test_y = _classification_split(cfg, "test")
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
        order = torch.randperm(len(train_y), generator=generator)
        train_x, train_y = train_x[order], train_y[order]
        order = torch.randperm(len(test_y), generator=generator)
        test_x, test_y = test_x[order], test_y[order]
    if cfg.val_size >= len(train_y):
        raise DataUnavailableError(f"data.val_size={cfg.val_size} leaves no training examples")
    val_x, val_y = train_x[: cfg.val_size], train_y[: cfg.val_size]
    train_x, train_y = train_x[cfg.val_size :], train_y[cfg.val_size :]
    if cfg.train_limit:
        train_x, train_y = train_x[: cfg.train_limit], train_y[: cfg.train_limit]
    if cfg.eval_limit:
        val_x, val_y = val_x[: cfg.eval_limit], val_y[: cfg.eval_limit]
        test_x, test_y = test_x[: cfg.eval_limit], test_y[: cfg.eval_limit]
    return ArraySplits((train_x, train_y), (val_x, val_y), (test_x, test_y))


def minibatches(arrays: Arrays, batch_size: int) -> Iterator[Arrays]:
    """Consecutive slices (for evaluation; training indexes with a permutation instead)."""
    n = len(arrays[0])
    for start in range(0, n, batch_size):
        yield tuple(a[start : start + batch_size] for a in arrays)
