"""The data layer against the real MNIST mirror, a tiny parquet made here, and missing data."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fdlcli.config import DataConfig
from fdlcli.data import image_classification_arrays, load_split
from fdlcli.errors import DataUnavailableError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_mirror(env):
    splits = image_classification_arrays(DataConfig())
    train_x, train_y = splits.train
    val_x, val_y = splits.val
    test_x, test_y = splits.test
    assert train_x.shape == (55000, 28, 28) and train_x.dtype == torch.uint8
    assert val_x.shape == (5000, 28, 28) and test_x.shape == (10000, 28, 28)
    all_train = torch.cat([val_y, train_y])
    assert torch.bincount(all_train).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(test_y).tolist() == MNIST_TEST_COUNTS
    assert 0 < train_x.float().mean() / 255 < 0.2  # mostly black digits: decoded, not garbage


def test_limits_and_deterministic_validation(env):
    a = image_classification_arrays(DataConfig(train_limit=100, eval_limit=50))
    b = image_classification_arrays(DataConfig(train_limit=100, eval_limit=50))
    assert len(a.train[0]) == 100 and len(a.val[0]) == 50 and len(a.test[0]) == 50
    assert torch.equal(a.val[0], b.val[0]) and torch.equal(a.train[1], b.train[1])


def _tiny_mirror(root, n_train=30, n_test=10):
    import datasets
    from PIL import Image

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(10)])}
    )
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images = []
        for _ in range(n):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(buffer, format="PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        labels = rng.integers(0, 10, n).tolist()
        dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        (root / "mnist").mkdir(parents=True, exist_ok=True)
        dataset.to_parquet(str(root / "mnist" / f"{split}.parquet"))
    return root


def test_tiny_parquet_mirror_made_here(tmp_path, monkeypatch):
    monkeypatch.setenv("FDL_CACHE_DIR", str(tmp_path / "cache"))
    root = _tiny_mirror(tmp_path / "mirror")
    splits = image_classification_arrays(DataConfig(dir=str(root), val_size=5))
    assert splits.train[0].shape == (25, 28, 28) and splits.val[0].shape == (5, 28, 28)
    assert splits.test[0].shape == (10, 28, 28)
    cached = list((tmp_path / "cache").glob("mnist-train-*.safetensors"))
    assert len(cached) == 1
    again = image_classification_arrays(DataConfig(dir=str(root), val_size=5))  # from the cache
    assert torch.equal(again.train[0], splits.train[0])


def test_missing_mirror_folder_and_split(tmp_path):
    with pytest.raises(DataUnavailableError, match="has no mnist/ folder"):
        load_split("mnist", "ylecun/mnist", "train", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DataUnavailableError, match="no split 'train'"):
        load_split("mnist", "ylecun/mnist", "train", str(tmp_path))


def test_corrupt_mirror_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FDL_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataUnavailableError, match="cannot read"):
        load_split("mnist", "ylecun/mnist", "train", str(tmp_path))


def test_offline_without_mirror_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.delenv("FDL_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(DataUnavailableError) as info:
        load_split("mnist", "ylecun/mnist", "train", None)
    message = str(info.value)
    assert "FDL_DATA_DIR" in message and "\n" not in message


def test_offline_cli_error(env):
    from conftest import fdl

    del env["FDL_DATA_DIR"]
    result = fdl("train", "logreg-mnist", "trainer.epochs=1", env=env)
    assert result.returncode == 1
    assert "FDL_DATA_DIR" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
