"""Straightforward loop implementations of the DNC memory operations, for tests and the benchmark.

Each function computes, one batch element and one memory slot at a time, what its vectorized
counterpart in fdlcli/models/dnc.py computes at once; they follow the paper's equations literally
(the allocation by an explicit sort and running product) and are deliberately slow.
"""

from __future__ import annotations

import math

import torch

from fdlcli.models.dnc import EPS


def content_weighting(memory: torch.Tensor, keys: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
    batch, slots, _ = memory.shape
    out = torch.zeros(batch, keys.shape[1], slots)
    for b in range(batch):
        for h in range(keys.shape[1]):
            key = keys[b, h]
            scores = []
            for i in range(slots):
                row = memory[b, i]
                cosine = float(key @ row) / (float(key.norm()) * float(row.norm()) + EPS)
                scores.append(float(strengths[b, h]) * cosine)
            top = max(scores)
            exps = [math.exp(s - top) for s in scores]
            for i in range(slots):
                out[b, h, i] = exps[i] / sum(exps)
    return out


def retention(free_gates: torch.Tensor, read_weights: torch.Tensor) -> torch.Tensor:
    batch, heads, slots = read_weights.shape
    out = torch.ones(batch, slots)
    for b in range(batch):
        for i in range(slots):
            for r in range(heads):
                out[b, i] *= 1 - float(free_gates[b, r]) * float(read_weights[b, r, i])
    return out


def update_usage(usage: torch.Tensor, write_weights: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(usage)
    for b in range(usage.shape[0]):
        for i in range(usage.shape[1]):
            u, w = float(usage[b, i]), float(write_weights[b, i])
            out[b, i] = (u + w - u * w) * float(psi[b, i])
    return out


def allocation(usage: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(usage)
    for b in range(usage.shape[0]):
        used = [EPS + (1 - EPS) * float(u) for u in usage[b]]
        free_list = sorted(range(len(used)), key=lambda i: used[i])  # phi: least used first
        product = 1.0
        for slot in free_list:
            out[b, slot] = (1 - used[slot]) * product
            product *= used[slot]
    return out


def write_weighting(
    content: torch.Tensor, alloc: torch.Tensor, write_gate: torch.Tensor, alloc_gate: torch.Tensor
) -> torch.Tensor:
    out = torch.zeros_like(content)
    for b in range(content.shape[0]):
        gw, ga = float(write_gate[b, 0]), float(alloc_gate[b, 0])
        for i in range(content.shape[1]):
            out[b, i] = gw * (ga * float(alloc[b, i]) + (1 - ga) * float(content[b, i]))
    return out


def write_memory(
    memory: torch.Tensor, write_weights: torch.Tensor, erase: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    out = memory.clone()
    batch, slots, word = memory.shape
    for b in range(batch):
        for i in range(slots):
            w = float(write_weights[b, i])
            for k in range(word):
                out[b, i, k] = float(memory[b, i, k]) * (1 - w * float(erase[b, k])) + w * float(values[b, k])
    return out


def update_links(link: torch.Tensor, precedence: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(link)
    batch, slots, _ = link.shape
    for b in range(batch):
        for i in range(slots):
            for j in range(slots):
                if i != j:
                    wi, wj = float(write_weights[b, i]), float(write_weights[b, j])
                    out[b, i, j] = (1 - wi - wj) * float(link[b, i, j]) + wi * float(precedence[b, j])
    return out


def update_precedence(precedence: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(precedence)
    for b in range(precedence.shape[0]):
        total = sum(float(w) for w in write_weights[b])
        for i in range(precedence.shape[1]):
            out[b, i] = (1 - total) * float(precedence[b, i]) + float(write_weights[b, i])
    return out


def directional_weights(link: torch.Tensor, read_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    batch, heads, slots = read_weights.shape
    backward, forward = torch.zeros_like(read_weights), torch.zeros_like(read_weights)
    for b in range(batch):
        for r in range(heads):
            for i in range(slots):
                forward[b, r, i] = sum(
                    float(link[b, i, j]) * float(read_weights[b, r, j]) for j in range(slots)
                )
                backward[b, r, i] = sum(
                    float(link[b, j, i]) * float(read_weights[b, r, j]) for j in range(slots)
                )
    return backward, forward


def read_weighting(
    modes: torch.Tensor, backward: torch.Tensor, content: torch.Tensor, forward: torch.Tensor
) -> torch.Tensor:
    out = torch.zeros_like(content)
    batch, heads, slots = content.shape
    for b in range(batch):
        for r in range(heads):
            pb, pc, pf = (float(m) for m in modes[b, r])
            for i in range(slots):
                out[b, r, i] = (
                    pb * float(backward[b, r, i])
                    + pc * float(content[b, r, i])
                    + pf * float(forward[b, r, i])
                )
    return out
