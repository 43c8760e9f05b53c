"""Chapter 5: convolutional networks on MNIST (``cnn-mnist``) and CIFAR-10 (``cnn-cifar10``, ``-bn``).

Book (TF 1.x):
- MNIST: conv 5x5x32 -> maxpool 2 -> conv 5x5x64 -> maxpool 2 -> fc 1024 (dropout 0.5) -> 10, 'SAME'
  padding, He-normal init, Adam (companion script lr 1e-4), batch 100: 99.4% test accuracy.
- CIFAR-10: random 24x24 crops with flips and brightness/contrast distortions, per-image whitening, center
  crops at test time; conv 5x5x64 -> pool -> conv 5x5x64 -> pool -> fc 384 -> fc 192 -> 10 with dropout 0.5,
  Adam lr 1e-3, batch 128: 92.3%, >80,000 minibatches to cross 90%. With batch normalization on every conv
  and fc layer, lr x10 and no dropout: 96.7%, ~14,000 minibatches to 90%.

Speed: the whole training set stays on the device as uint8; :func:`augment` crops, flips, distorts and
whitens a minibatch in a handful of batched tensor ops (no per-image Python). Validation and test images
are center-cropped and whitened once, in ``load_data``. Convolutions run in channels_last memory format.
The augmentation draws from torch's global RNG, whose state every checkpoint carries: resume stays exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.data import ArraySplits, image_classification_arrays
from fdlcli.data.images import ShiftDataConfig, center_crop, random_crop, random_shift
from fdlcli.data.tensors import Arrays
from fdlcli.engine.supervised import ClassificationTask
from fdlcli.registry import ExperimentSpec, register

# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class CNNConfig:
    arch: str = "mnist"  # mnist | cifar10 (the book's two networks)
    batch_norm: bool = False  # BN after every conv and fc layer (cnn-cifar10-bn)
    dropout: float = 0.5  # on the fully connected hidden layers; 0 = off
    channels_last: bool = True  # NHWC convolutions: faster on CPUs and on GPU tensor cores

    def check(self) -> str | None:
        if self.arch not in _ARCHS:
            return f"model.arch={self.arch!r}; choose from: {', '.join(_ARCHS)}"
        if not 0.0 <= self.dropout < 1.0:
            return f"model.dropout={self.dropout}: it must lie in [0, 1)"
        return None


@dataclass
class ImageDataConfig(ShiftDataConfig):
    """Image data keys of the chapter-5 experiments (on top of fdl's DataConfig)."""

    # Permute the training rows with this fixed seed before carving the validation set: the CIFAR-10
    # mirror is stored sorted by class, so its first 5,000 rows are all airplanes. null = take the head.
    val_shuffle_seed: int | None = None
    crop: int = 0  # random crop size for training, center crop for evaluation; 0 = whole images
    flip: bool = False  # random horizontal flips
    brightness: float = 0.0  # max brightness shift, in units of the [0, 1] pixel range (TF: 63/255)
    contrast: list[float] | None = None  # [lower, upper] random contrast factor (TF: [0.2, 1.8])
    whiten: bool = False  # per-image standardization (tf.image.per_image_standardization)


# --------------------------------------------------------------------------------------------------
# Models


def _conv_block(cin: int, cout: int, batch_norm: bool) -> list[nn.Module]:
    # 5x5 'SAME' convolutions; a conv followed by BN needs no bias (BN's shift replaces it)
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    # max-pool, then ReLU: the same function as ReLU then max-pool (ReLU is monotone), but the ReLU and its
    # backward touch a quarter of the values; measured 1.4x faster per cnn-cifar10 step on the CPU
    return [*layers, nn.MaxPool2d(2), nn.ReLU()]


def _fc_block(fin: int, fout: int, batch_norm: bool, dropout: float) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Linear(fin, fout, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(fout))
    layers.append(nn.ReLU())
    if dropout:
        layers.append(nn.Dropout(dropout))
    return layers


class CNN(nn.Module):
    """The book's networks. ``features`` ends at the last hidden layer (used for t-SNE); ``head`` is the
    final linear layer; the first module of ``features`` is the first convolution (its filters are drawn)."""

    def __init__(self, cfg: CNNConfig) -> None:
        super().__init__()
        bn, dropout = cfg.batch_norm, cfg.dropout
        if cfg.arch == "mnist":  # 28x28x1 -> 14x14x32 -> 7x7x64 -> 1024 -> 10
            layers = [*_conv_block(1, 32, bn), *_conv_block(32, 64, bn), nn.Flatten()]
            layers += _fc_block(7 * 7 * 64, 1024, bn, dropout)
            width = 1024
        else:  # 24x24x3 -> 12x12x64 -> 6x6x64 -> 384 -> 192 -> 10
            layers = [*_conv_block(3, 64, bn), *_conv_block(64, 64, bn), nn.Flatten()]
            layers += _fc_block(6 * 6 * 64, 384, bn, dropout) + _fc_block(384, 192, bn, dropout)
            width = 192
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)
        self.channels_last = cfg.channels_last
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):  # the book's He-normal init, zero biases
                fan_in = module.weight[0].numel()
                nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))


_ARCHS = ("mnist", "cifar10")


# --------------------------------------------------------------------------------------------------
# Batched augmentation (training) and preprocessing (evaluation)


def whiten(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardization as TF's per_image_standardization: (x - mean) / max(std, 1/sqrt(N))."""
    flat = x.flatten(1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True, correction=0).clamp_min(1.0 / math.sqrt(flat.shape[1]))
    return ((flat - mean) / std).view_as(x)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W] or [N,H,W,C] -> float [N,C,H,W] in [0, 1]."""
    x = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def augment(images: torch.Tensor, cfg: ImageDataConfig) -> torch.Tensor:
    """Training-time distortions of a uint8 minibatch, as the book's (TF CIFAR-10 tutorial) pipeline:
    random crop, horizontal flip, brightness, contrast (in that order), then per-image whitening."""
    x = to_float(images)
    n = x.shape[0]
    if cfg.shift:
        x = random_shift(x, cfg.shift)
    if cfg.crop:
        x = random_crop(x, cfg.crop)
    if cfg.flip:
        flip = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
        x = torch.where(flip, x.flip(3), x)
    if cfg.brightness:
        x = x + torch.empty(n, 1, 1, 1, device=x.device).uniform_(-cfg.brightness, cfg.brightness)
    if cfg.contrast:
        lower, upper = cfg.contrast
        factor = torch.empty(n, 1, 1, 1, device=x.device).uniform_(lower, upper)
        mean = x.mean(dim=(2, 3), keepdim=True)  # per channel, as tf.image.adjust_contrast
        x = (x - mean) * factor + mean
    return whiten(x) if cfg.whiten else x


def preprocess_eval(images: torch.Tensor, cfg: ImageDataConfig) -> torch.Tensor:
    """Evaluation images: center crop and whitening, no randomness."""
    x = to_float(images)
    if cfg.crop:
        x = center_crop(x, cfg.crop).contiguous()
    return whiten(x) if cfg.whiten else x


# --------------------------------------------------------------------------------------------------
# The task: the engine (fdlcli/engine/supervised.py) drives it


class ImageClassification(ClassificationTask):
    def build_model(self) -> nn.Module:
        return CNN(self.config.model)

    @property
    def data_cfg(self) -> ImageDataConfig:
        return self.config.data

    def load_data(self) -> ArraySplits:
        splits = image_classification_arrays(self.data_cfg, shuffle_seed=self.data_cfg.val_shuffle_seed)
        prepare = lambda arrays: (preprocess_eval(arrays[0], self.data_cfg), arrays[1])  # noqa: E731
        if self.augments:
            # training images stay uint8 (4x less memory) and are distorted per minibatch in loss()
            return ArraySplits(splits.train, prepare(splits.val), prepare(splits.test))
        return splits.map(prepare)

    @property
    def augments(self) -> bool:
        cfg = self.data_cfg
        return bool(cfg.shift or cfg.crop or cfg.flip or cfg.brightness or cfg.contrast)

    def loss(self, model: nn.Module, batch: Arrays) -> torch.Tensor:
        # loss() only runs on training minibatches, so this is where training-time augmentation goes
        images, labels = batch
        if self.augments:
            images = augment(images, self.data_cfg)
        return F.cross_entropy(model(images), labels)


_CIFAR = "CIFAR-10 (mirror JPEG-recompressed, q~75)"
for name, dataset, book_result, description in (
    (
        "cnn-mnist",
        "MNIST",
        "99.4% test accuracy",
        "conv32-pool-conv64-pool-fc1024-10, dropout 0.5, Adam; 2-pixel shifts",
    ),
    (
        "cnn-cifar10",
        _CIFAR,
        "92.3% test accuracy; >80,000 minibatches to 90%",
        "conv64-pool-conv64-pool-fc384-fc192-10, crops/flips/distortions, dropout 0.5, Adam 1e-3. Measured "
        "on 2 CPU cores (AVX-512): ~32 s an epoch; test accuracy 75% after 86 epochs, flat from ~70 "
        "(docs/RESULTS.md)",
    ),
    (
        "cnn-cifar10-bn",
        _CIFAR,
        "96.7% test accuracy; ~14,000 minibatches to 90%",
        "cnn-cifar10 with batch normalization on every layer, lr x10, no dropout. Measured on 2 CPU cores "
        "(AVX-512): ~35 s an epoch; test accuracy ~80% from epoch ~40 on, flat after (docs/RESULTS.md)",
    ),
):
    register(
        ExperimentSpec(
            name=name,
            chapter=5,
            dataset=dataset,
            book_result=book_result,
            description=description,
            model_config=CNNConfig,
            model_group="cnn",
            task=ImageClassification,
            data_config=ImageDataConfig,
        )
    )
