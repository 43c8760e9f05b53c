"""Optimizers from the typed ``optim`` config group (the book's chapter-4 line-up) and the learning-rate
schedule.

The schedule is a pure function of the global step rather than a stateful torch scheduler: the
checkpoint's step is all a resumed run needs to continue on exactly the same learning rates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from fdlcli.config import OptimConfig
from fdlcli.errors import ConfigError


def scheduled_lr(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """The learning rate of minibatch ``step`` (0-based) of a run of ``total_steps`` minibatches."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return floor + (cfg.lr - floor) * (1.0 - progress)  # linear


def has_schedule(cfg: OptimConfig) -> bool:
    """Whether the config asks for anything but the constant learning rate."""
    return cfg.schedule != "constant" or cfg.warmup_steps > 0


def refuse_schedule(cfg: OptimConfig) -> None:
    """For loops with their own learning-rate rule: a schedule they would ignore is an error instead."""
    if has_schedule(cfg):
        raise ConfigError(
            f"optim.schedule={cfg.schedule} / optim.warmup_steps={cfg.warmup_steps}: this experiment's "
            "training loop has its own learning-rate rule; use optim.schedule=constant optim.warmup_steps=0"
        )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def build_optimizer(
    cfg: OptimConfig, params: Iterable[torch.nn.Parameter], scheduled: bool = False, fused: bool = False
) -> torch.optim.Optimizer:
    """``scheduled``: the caller applies :func:`scheduled_lr` each step; loops that do not refuse a
    schedule instead of silently training at a constant rate. ``fused``: Adam and AdamW update all
    parameters in one kernel (the same rule up to float rounding; it pays for loops of many small
    updates, such as DQN's); the other optimizers ignore it."""
    if not scheduled:
        refuse_schedule(cfg)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(
            params,
            lr=cfg.lr,
            initial_accumulator_value=cfg.initial_accumulator_value,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
        )
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(
            params,
            lr=cfg.lr,
            alpha=cfg.alpha,
            eps=cfg.eps,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
            fused=fused or None,
        )  # fmt: skip
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
            fused=fused or None,
        )  # fmt: skip
    raise ValueError(f"unknown optimizer {cfg.name!r}")  # config validation lists the valid names
