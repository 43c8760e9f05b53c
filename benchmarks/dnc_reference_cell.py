"""The Differentiable Neural Computer (Graves et al., Nature 2016; the book's chapter 8), batched.

Every memory operation is a pure function on batched tensors (first dimension: the batch) so that each can
be checked against the straightforward loop it replaces (fdlcli/models/dnc_reference.py) and timed
against it (benchmarks/dnc_step.py). Shapes: B batch, N memory slots, W word size, R read heads.

One time step, in the paper's order:
1. retention psi = prod_i (1 - f_i w^r_i)  (free gates release what the heads read last step)
2. usage u = (u + w^w - u * w^w) * psi     (last step's writes raise usage)
3. allocation a: slots sorted by usage; a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i] (sort + cumprod)
4. write weighting w^w = g^w (g^a a + (1 - g^a) c^w), c^w the content weighting of the write key
5. memory M = M * (1 - w^w e^T) + w^w v^T  (erase, then add)
6. temporal links L[i, j] = (1 - w^w_i - w^w_j) L[i, j] + w^w_i p_j, zero diagonal; precedence
   p = (1 - sum w^w) p + w^w
7. read weightings: modes pi (backward, content, forward) mix b = L^T w^r, c^r and f = L w^r
8. read vectors r = w^r M, fed to the output layer now and to the controller at the next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6  # keeps cosine similarity finite and the allocation products away from exact zeros


@dataclass
class DNCConfig:
    controller: str = "lstm"  # lstm | feedforward
    hidden: int = 256  # controller units
    memory_slots: int = 256  # N
    word_size: int = 64  # W
    read_heads: int = 4  # R
    clip: float = 20.0  # controller outputs clipped to [-clip, clip] (DeepMind's implementation); 0 = off

    def check(self) -> str | None:
        if self.controller not in ("lstm", "feedforward"):
            return f"model.controller={self.controller!r}; choose from: lstm, feedforward"
        if min(self.hidden, self.memory_slots, self.word_size, self.read_heads) <= 0:
            return "model.hidden, memory_slots, word_size and read_heads must be positive"
        if self.clip < 0:
            return f"model.clip={self.clip} must be >= 0"
        return None


# --------------------------------------------------------------------------------------------------
# Memory operations (vectorized; loops over memory slots only in dnc_reference.py).


def content_weighting(memory: torch.Tensor, keys: torch.Tensor, strengths: torch.Tensor) -> torch.Tensor:
    """Softmax over slots of strength * cosine(key, M[i]). memory [B,N,W], keys [B,H,W], strengths [B,H]
    -> [B,H,N]."""
    dot = keys @ memory.transpose(1, 2)  # [B,H,N]
    norms = keys.norm(dim=2, keepdim=True) * memory.norm(dim=2).unsqueeze(1)
    return torch.softmax(strengths.unsqueeze(2) * dot / (norms + EPS), dim=2)


def retention(free_gates: torch.Tensor, read_weights: torch.Tensor) -> torch.Tensor:
    """psi [B,N] from free gates [B,R] and the previous read weightings [B,R,N]."""
    return torch.prod(1 - free_gates.unsqueeze(2) * read_weights, dim=1)


def update_usage(usage: torch.Tensor, write_weights: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    return (usage + write_weights - usage * write_weights) * psi


def allocation(usage: torch.Tensor) -> torch.Tensor:
    """Allocation weighting [B,N]: the least used slots first, each weighted by how free it is and by how
    used the slots before it are (a sort and an exclusive cumulative product, no loop over slots)."""
    usage = EPS + (1 - EPS) * usage
    sorted_usage, order = usage.sort(dim=1)
    ones = torch.ones_like(sorted_usage[:, :1])
    before = torch.cumprod(torch.cat([ones, sorted_usage[:, :-1]], dim=1), dim=1)  # exclusive product
    return torch.zeros_like(usage).scatter(1, order, (1 - sorted_usage) * before)


def write_weighting(
    content: torch.Tensor, alloc: torch.Tensor, write_gate: torch.Tensor, alloc_gate: torch.Tensor
) -> torch.Tensor:
    """content, alloc [B,N]; gates [B,1]."""
    return write_gate * (alloc_gate * alloc + (1 - alloc_gate) * content)


def write_memory(
    memory: torch.Tensor, write_weights: torch.Tensor, erase: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """memory [B,N,W], write_weights [B,N], erase and values [B,W]."""
    ww = write_weights.unsqueeze(2)
    return memory * (1 - ww * erase.unsqueeze(1)) + ww * values.unsqueeze(1)


def update_links(link: torch.Tensor, precedence: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    """L[i,j]: how much slot i was written right after slot j. link [B,N,N], precedence and write [B,N]."""
    wi, wj = write_weights.unsqueeze(2), write_weights.unsqueeze(1)
    new = (1 - wi - wj) * link + wi * precedence.unsqueeze(1)
    eye = torch.eye(link.shape[1], dtype=link.dtype, device=link.device)
    return new * (1 - eye)


def update_precedence(precedence: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    return (1 - write_weights.sum(dim=1, keepdim=True)) * precedence + write_weights


def directional_weights(link: torch.Tensor, read_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(backward, forward) [B,R,N]: f = L w (the slots written after the ones read), b = L^T w."""
    forward = read_weights @ link.transpose(1, 2)
    backward = read_weights @ link
    return backward, forward


def read_weighting(
    modes: torch.Tensor, backward: torch.Tensor, content: torch.Tensor, forward: torch.Tensor
) -> torch.Tensor:
    """modes [B,R,3] (softmax over backward, content, forward)."""
    return modes[..., 0:1] * backward + modes[..., 1:2] * content + modes[..., 2:3] * forward


# --------------------------------------------------------------------------------------------------
# The module.


class MemoryState(NamedTuple):
    memory: torch.Tensor  # [B,N,W]
    usage: torch.Tensor  # [B,N]
    link: torch.Tensor  # [B,N,N]
    precedence: torch.Tensor  # [B,N]
    read_weights: torch.Tensor  # [B,R,N]
    write_weights: torch.Tensor  # [B,N]
    read_vectors: torch.Tensor  # [B,R,W]


class Interface(NamedTuple):
    read_keys: torch.Tensor  # [B,R,W]
    read_strengths: torch.Tensor  # [B,R]
    write_key: torch.Tensor  # [B,1,W]
    write_strength: torch.Tensor  # [B,1]
    erase: torch.Tensor  # [B,W]
    write_vector: torch.Tensor  # [B,W]
    free_gates: torch.Tensor  # [B,R]
    alloc_gate: torch.Tensor  # [B,1]
    write_gate: torch.Tensor  # [B,1]
    read_modes: torch.Tensor  # [B,R,3]


def oneplus(x: torch.Tensor) -> torch.Tensor:
    return 1 + F.softplus(x)


def interface_size(word: int, heads: int) -> int:
    return heads * word + 3 * word + 5 * heads + 3


def split_interface(vector: torch.Tensor, word: int, heads: int) -> Interface:
    """Cut the controller's interface vector [B, interface_size] into its (squashed) parts."""
    sizes = [heads * word, heads, word, 1, word, word, heads, 1, 1, 3 * heads]
    rk, rs, wk, ws, erase, wv, free, ga, gw, modes = vector.split(sizes, dim=1)
    b = vector.shape[0]
    return Interface(
        read_keys=rk.view(b, heads, word),
        read_strengths=oneplus(rs),
        write_key=wk.view(b, 1, word),
        write_strength=oneplus(ws),
        erase=torch.sigmoid(erase),
        write_vector=wv,
        free_gates=torch.sigmoid(free),
        alloc_gate=torch.sigmoid(ga),
        write_gate=torch.sigmoid(gw),
        read_modes=torch.softmax(modes.view(b, heads, 3), dim=2),
    )


def memory_step(state: MemoryState, face: Interface) -> tuple[MemoryState, dict[str, torch.Tensor]]:
    """One write-then-read step of the memory; also returns what the visualization plots."""
    psi = retention(face.free_gates, state.read_weights)
    usage = update_usage(state.usage, state.write_weights, psi)
    alloc = allocation(usage)
    write_content = content_weighting(state.memory, face.write_key, face.write_strength).squeeze(1)
    ww = write_weighting(write_content, alloc, face.write_gate, face.alloc_gate)
    memory = write_memory(state.memory, ww, face.erase, face.write_vector)
    link = update_links(state.link, state.precedence, ww)
    precedence = update_precedence(state.precedence, ww)
    backward, forward = directional_weights(link, state.read_weights)
    read_content = content_weighting(memory, face.read_keys, face.read_strengths)
    wr = read_weighting(face.read_modes, backward, read_content, forward)
    read_vectors = wr @ memory
    new = MemoryState(memory, usage, link, precedence, wr, ww, read_vectors)
    trace = {
        "write_weights": ww,
        "read_weights": wr,
        "usage": usage,
        "free_gates": face.free_gates,
        "alloc_gate": face.alloc_gate.squeeze(1),
        "write_gate": face.write_gate.squeeze(1),
    }
    return new, trace


class DNC(nn.Module):
    """Controller (LSTM cell or feed-forward) + memory. Input [B,T,in] -> logits [B,T,out].

    The controller sees the input and the previous step's read vectors; the output layer sees the
    controller's output and this step's read vectors (the paper's y = W_y h + W_r r)."""

    def __init__(self, input_size: int, output_size: int, cfg: DNCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_read = cfg.read_heads * cfg.word_size
        if cfg.controller == "lstm":
            self.controller: nn.Module = nn.LSTMCell(input_size + n_read, cfg.hidden)
        else:
            self.controller = nn.Sequential(nn.Linear(input_size + n_read, cfg.hidden), nn.ReLU())
        self.interface = nn.Linear(cfg.hidden, interface_size(cfg.word_size, cfg.read_heads))
        self.output = nn.Linear(cfg.hidden + n_read, output_size)

    def initial_state(self, batch: int, device: torch.device) -> MemoryState:
        n, w, r = self.cfg.memory_slots, self.cfg.word_size, self.cfg.read_heads
        zeros = lambda *shape: torch.zeros(batch, *shape, device=device)  # noqa: E731
        # a small constant memory: cosine similarity of an all-zero memory is undefined
        return MemoryState(
            torch.full((batch, n, w), 1e-6, device=device),
            zeros(n),
            zeros(n, n),
            zeros(n),
            zeros(r, n),
            zeros(n),
            zeros(r, w),
        )

    def time_step(
        self, x: torch.Tensor, state: MemoryState, hidden: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, MemoryState, tuple[torch.Tensor, torch.Tensor] | None, dict[str, torch.Tensor]]:
        """One time step: input [B,in] -> (logits [B,out], memory state, controller state, trace)."""
        controller_in = torch.cat([x, state.read_vectors.flatten(1)], dim=1)
        if self.cfg.controller == "lstm":
            hidden = self.controller(controller_in, hidden)
            h = hidden[0]
        else:
            h = self.controller(controller_in)
        if self.cfg.clip:
            h = h.clamp(-self.cfg.clip, self.cfg.clip)
        face = split_interface(self.interface(h), self.cfg.word_size, self.cfg.read_heads)
        state, trace = memory_step(state, face)
        logits = self.output(torch.cat([h, state.read_vectors.flatten(1)], dim=1))
        return logits, state, hidden, trace

    def compile_step(self) -> None:
        """``torch.compile`` one time step, not the whole sequence: the loop over time stays in Python, so
        one graph serves every sequence length (bAbI stories vary) instead of one unrolled graph each.
        The parameters stay where they are, so the state dict (and checkpoints) do not change."""
        self.time_step = torch.compile(self.time_step)  # type: ignore[method-assign]

    def forward(
        self, inputs: torch.Tensor, record: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        batch, steps, _ = inputs.shape
        state = self.initial_state(batch, inputs.device)
        hidden = None
        outputs, traces = [], []
        for t in range(steps):
            logits, state, hidden, trace = self.time_step(inputs[:, t], state, hidden)
            outputs.append(logits)
            if record:
                traces.append({k: v.detach() for k, v in trace.items()})
        logits = torch.stack(outputs, dim=1)
        if not record:
            return logits, None
        return logits, {k: torch.stack([tr[k] for tr in traces], dim=1) for k in traces[0]}
