"""The Neural Turing Machine (Graves, Wayne and Danihelka 2014; the book's chapter 8), batched.

Each addressing step is a pure function on batched tensors (first dimension: the batch, then the heads)
so that each can be checked against the straightforward loop it replaces (fdlcli/models/ntm_reference.py).
Shapes: B batch, H heads, N memory slots, W word size, S = 2 * shift_range + 1 allowed shifts.

Addressing, for every head at every time step (the paper's section 3.3):
1. content weighting w^c = softmax_i(beta * cosine(k, M[i])), beta >= 0 (the DNC's content weighting)
2. interpolation w^g = g w^c + (1 - g) w_{t-1}, gate g in [0, 1]
3. convolutional shift w~[i] = sum_j w^g[j] s[(i - j) mod N], s a softmax over shifts -k..k
4. sharpening w[i] = w~[i]^gamma / sum_j w~[j]^gamma, gamma >= 1
Then the write heads erase and add, M = M * prod_h (1 - w_h e_h^T) + sum_h w_h a_h^T, and the read heads
read r = w M from the written memory; the output layer sees the controller's output and these reads, the
controller the input and the previous step's reads.

Initialization (the paper leaves it open; Collier and Beel 2018, "Implementing Neural Turing Machines",
compared the choices): the memory starts at a small constant (1e-6) in every slot; the initial read
vectors and head weightings are learned biases. A constant memory makes content addressing uniform, and a
uniform weighting stays uniform through interpolation, shift and sharpening, so the initial weightings
start focused on slot 0 (otherwise every slot would receive the same writes forever).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.models.dnc import content_weighting
from fdlcli.models.unroll import unroll

EPS = 1e-6  # keeps sharpening's w^gamma differentiable at w = 0
INITIAL_FOCUS = 10.0  # logit of slot 0 in the initial weightings: 0.99 of the weight at 128 slots


@dataclass
class NTMConfig:
    controller: str = "lstm"  # lstm | feedforward
    hidden: int = 100  # controller units (the paper's copy task: an LSTM of 100)
    memory_slots: int = 128  # N (the paper: 128 x 20)
    word_size: int = 20  # W
    read_heads: int = 1
    write_heads: int = 1
    shift_range: int = 1  # shifts -k..k (the paper: -1, 0, 1)
    clip: float = 20.0  # controller outputs clipped to [-clip, clip], as for the DNC; 0 = off

    def check(self) -> str | None:
        if self.controller not in ("lstm", "feedforward"):
            return f"model.controller={self.controller!r}; choose from: lstm, feedforward"
        if min(self.hidden, self.memory_slots, self.word_size, self.read_heads, self.write_heads) <= 0:
            return "model.hidden, memory_slots, word_size, read_heads and write_heads must be positive"
        if not 0 <= self.shift_range < self.memory_slots:
            return f"model.shift_range={self.shift_range} must be in [0, memory_slots)"
        if self.clip < 0:
            return f"model.clip={self.clip} must be >= 0"
        return None


# --------------------------------------------------------------------------------------------------
# Addressing and memory access (vectorized; loops over slots only in ntm_reference.py).


def interpolate(content: torch.Tensor, previous: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """content, previous [B,H,N]; gate [B,H] -> g w^c + (1 - g) w_{t-1}."""
    g = gate.unsqueeze(2)
    return g * content + (1 - g) * previous


def shift(weights: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circular convolution: weights [B,H,N], shifts [B,H,S] over -k..k -> [B,H,N], one gather of the
    S rotated copies of the weighting (no loop over slots)."""
    slots, k = weights.shape[2], shifts.shape[2] // 2
    offsets = torch.arange(-k, k + 1, device=weights.device)
    source = (torch.arange(slots, device=weights.device).unsqueeze(0) - offsets.unsqueeze(1)) % slots  # [S,N]
    rotated = weights[:, :, source]  # [B,H,S,N]: rotated[..., d, i] = w[(i - shift_d) mod N]
    return (shifts.unsqueeze(3) * rotated).sum(dim=2)


def sharpen(weights: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """weights [B,H,N], gamma [B,H] (>= 1) -> w^gamma normalized over slots."""
    powered = (weights + EPS) ** gamma.unsqueeze(2)
    return powered / powered.sum(dim=2, keepdim=True)


def address(
    memory: torch.Tensor,
    previous: torch.Tensor,
    key: torch.Tensor,
    strength: torch.Tensor,
    gate: torch.Tensor,
    shifts: torch.Tensor,
    gamma: torch.Tensor,
) -> torch.Tensor:
    """The four addressing steps for H heads at once: memory [B,N,W], previous [B,H,N], key [B,H,W],
    strength, gate and gamma [B,H], shifts [B,H,S] -> weightings [B,H,N]."""
    content = content_weighting(memory, key, strength)
    return sharpen(shift(interpolate(content, previous, gate), shifts), gamma)


def write(
    memory: torch.Tensor, weights: torch.Tensor, erase: torch.Tensor, add: torch.Tensor
) -> torch.Tensor:
    """memory [B,N,W], weights [B,H,N], erase and add [B,H,W]: every head erases, then every head adds."""
    kept = torch.prod(1 - weights.unsqueeze(3) * erase.unsqueeze(2), dim=1)  # [B,N,W]
    return memory * kept + weights.transpose(1, 2) @ add


def read(memory: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """memory [B,N,W], weights [B,H,N] -> read vectors [B,H,W]."""
    return weights @ memory


# --------------------------------------------------------------------------------------------------
# The module.


class NTMState(NamedTuple):
    memory: torch.Tensor  # [B,N,W]
    read_weights: torch.Tensor  # [B,R,N]
    write_weights: torch.Tensor  # [B,Hw,N]
    reads: torch.Tensor  # [B,R,W]


class Heads(NamedTuple):
    """One time step's head parameters, squashed into their ranges; read heads first, then write heads."""

    key: torch.Tensor  # [B,H,W]
    strength: torch.Tensor  # [B,H], >= 0
    gate: torch.Tensor  # [B,H], in [0, 1]
    shifts: torch.Tensor  # [B,H,S], a softmax
    gamma: torch.Tensor  # [B,H], >= 1
    erase: torch.Tensor  # [B,Hw,W], in [0, 1]
    add: torch.Tensor  # [B,Hw,W]


def head_size(word: int, shift_range: int) -> int:
    """Outputs per head for addressing: key, strength, gate, shift weights, gamma."""
    return word + 3 + 2 * shift_range + 1


def split_heads(vector: torch.Tensor, cfg: NTMConfig) -> Heads:
    """Cut the controller's head vector [B, (R+Hw) * head_size + 2 Hw W] into its squashed parts."""
    b, heads, word = vector.shape[0], cfg.read_heads + cfg.write_heads, cfg.word_size
    addressing, erase, add = vector.split(
        [heads * head_size(word, cfg.shift_range), cfg.write_heads * word, cfg.write_heads * word], dim=1
    )
    key, strength, gate, shifts, gamma = addressing.view(b, heads, -1).split(
        [word, 1, 1, 2 * cfg.shift_range + 1, 1], dim=2
    )
    return Heads(
        key=key,
        strength=F.softplus(strength.squeeze(2)),
        gate=torch.sigmoid(gate.squeeze(2)),
        shifts=torch.softmax(shifts, dim=2),
        gamma=1 + F.softplus(gamma.squeeze(2)),
        erase=torch.sigmoid(erase.view(b, cfg.write_heads, word)),
        add=add.view(b, cfg.write_heads, word),
    )


class NTM(nn.Module):
    """Controller (LSTM cell or feed-forward) + memory with R read and Hw write heads.
    Input [B,T,in] -> logits [B,T,out]."""

    def __init__(self, input_size: int, output_size: int, cfg: NTMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_read, heads = cfg.read_heads * cfg.word_size, cfg.read_heads + cfg.write_heads
        if cfg.controller == "lstm":
            self.controller: nn.Module = nn.LSTMCell(input_size + n_read, cfg.hidden)
        else:
            self.controller = nn.Sequential(nn.Linear(input_size + n_read, cfg.hidden), nn.ReLU())
        self.heads = nn.Linear(
            cfg.hidden,
            heads * head_size(cfg.word_size, cfg.shift_range) + 2 * cfg.write_heads * cfg.word_size,
        )
        self.output = nn.Linear(cfg.hidden + n_read, output_size)
        # learned initial state (bias initialization): read vectors, and weightings focused on slot 0
        self.initial_reads = nn.Parameter(torch.zeros(cfg.read_heads, cfg.word_size))
        focus = torch.zeros(heads, cfg.memory_slots)
        focus[:, 0] = INITIAL_FOCUS
        self.initial_weight_logits = nn.Parameter(focus)

    def initial_state(self, batch: int, device: torch.device) -> NTMState:
        weights = torch.softmax(self.initial_weight_logits, dim=1).expand(batch, -1, -1)
        memory = torch.full((batch, self.cfg.memory_slots, self.cfg.word_size), 1e-6, device=device)
        reads = self.initial_reads.expand(batch, -1, -1)
        return NTMState(memory, weights[:, : self.cfg.read_heads], weights[:, self.cfg.read_heads :], reads)

    def time_step(
        self, x: torch.Tensor, state: NTMState, hidden: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, NTMState, tuple[torch.Tensor, torch.Tensor] | None, dict[str, torch.Tensor]]:
        """One time step: input [B,in] -> (logits [B,out], memory state, controller state, trace)."""
        controller_in = torch.cat([x, state.reads.flatten(1)], dim=1)
        if self.cfg.controller == "lstm":
            hidden = self.controller(controller_in, hidden)
            h = hidden[0]
        else:
            h = self.controller(controller_in)
        if self.cfg.clip:
            h = h.clamp(-self.cfg.clip, self.cfg.clip)
        p = split_heads(self.heads(h), self.cfg)
        r = self.cfg.read_heads
        ww = address(
            state.memory, state.write_weights, p.key[:, r:], p.strength[:, r:], p.gate[:, r:],
            p.shifts[:, r:], p.gamma[:, r:],
        )  # fmt: skip
        memory = write(state.memory, ww, p.erase, p.add)
        wr = address(
            memory, state.read_weights, p.key[:, :r], p.strength[:, :r], p.gate[:, :r], p.shifts[:, :r],
            p.gamma[:, :r],
        )  # fmt: skip
        reads = read(memory, wr)
        logits = self.output(torch.cat([h, reads.flatten(1)], dim=1))
        trace = {"write_weights": ww, "read_weights": wr, "adds": p.add, "reads": reads}
        return logits, NTMState(memory, wr, ww, reads), hidden, trace

    def compile_step(self) -> None:
        """``torch.compile`` one time step (one graph for every sequence length); the state dict stays."""
        self.time_step = torch.compile(self.time_step)  # type: ignore[method-assign]

    def forward(
        self, inputs: torch.Tensor, record: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return unroll(self, inputs, record)
