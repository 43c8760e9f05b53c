"""Straightforward loop implementations of the NTM's addressing and memory access, for the tests.

Each function computes, one batch element, head and memory slot at a time, what its vectorized counterpart
in fdlcli/models/ntm.py computes at once, following the paper's equations (3.5)-(3.9) and (3.1)-(3.4)
literally; they are deliberately slow. Content addressing is the DNC's (fdlcli/models/dnc_reference.py).
"""

from __future__ import annotations

import torch

from fdlcli.models.ntm import EPS


def interpolate(content: torch.Tensor, previous: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(content)
    batch, heads, slots = content.shape
    for b in range(batch):
        for h in range(heads):
            g = float(gate[b, h])
            for i in range(slots):
                out[b, h, i] = g * float(content[b, h, i]) + (1 - g) * float(previous[b, h, i])
    return out


def shift(weights: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """w~[i] = sum_j w[j] s[i - j], the index of s taken modulo N over the shifts -k..k."""
    out = torch.zeros_like(weights)
    batch, heads, slots = weights.shape
    k = shifts.shape[2] // 2
    for b in range(batch):
        for h in range(heads):
            for i in range(slots):
                total = 0.0
                for j in range(slots):
                    for d in range(-k, k + 1):
                        if (i - j - d) % slots == 0:
                            total += float(weights[b, h, j]) * float(shifts[b, h, d + k])
                out[b, h, i] = total
    return out


def sharpen(weights: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(weights)
    batch, heads, slots = weights.shape
    for b in range(batch):
        for h in range(heads):
            powered = [(float(weights[b, h, i]) + EPS) ** float(gamma[b, h]) for i in range(slots)]
            for i in range(slots):
                out[b, h, i] = powered[i] / sum(powered)
    return out


def write(
    memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor
) -> torch.Tensor:
    out = memory.clone()
    batch, slots, word = memory.shape
    for b in range(batch):
        for i in range(slots):
            for k in range(word):
                value = float(memory[b, i, k])
                for h in range(weights.shape[1]):  # every head erases ...
                    value *= 1 - float(weights[b, h, i]) * float(erase[b, h, k])
                for h in range(weights.shape[1]):  # ... then every head adds
                    value += float(weights[b, h, i]) * float(add[b, h, k])
                out[b, i, k] = value
    return out


def read(memory: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    batch, heads, slots = weights.shape
    out = torch.zeros(batch, heads, memory.shape[2])
    for b in range(batch):
        for h in range(heads):
            for k in range(memory.shape[2]):
                out[b, h, k] = sum(float(weights[b, h, i]) * float(memory[b, i, k]) for i in range(slots))
    return out
