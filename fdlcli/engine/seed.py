"""Seeding and RNG state that a checkpoint carries, so a resumed run continues bit for bit."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling RNG of one epoch: a function of (seed, epoch) alone, so resuming needs no state."""
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + epoch)
    return generator


def rng_state() -> dict[str, Any]:
    """Torch RNG state (tensors only, so it loads with ``torch.load(weights_only=True)``)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
