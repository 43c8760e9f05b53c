"""The Differentiable Neural Computer (Graves et al., Nature 2016; the book's chapter 8), batched.

Every memory operation is a pure function on batched tensors (first dimension: the batch) so that each can
be checked against the straightforward loop it replaces (fdlcli/models/dnc_reference.py) and timed
against it (benchmarks/dnc_step.py). Shapes: B batch, N memory slots, W word size, R read heads.

One time step, in the paper's order:
1. retention psi = prod_i (1 - f_i w^r_i)  (free gates release what the heads read last step)
2. usage u = (u + w^w - u * w^w) * psi     (last step's writes raise usage)
3. allocation a: slots sorted by usage; a[phi_j] = (1 - u[phi_j]) prod_{i<j} u[phi_i] (sorted or pairwise)
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

from fdlcli.errors import ConfigError
from fdlcli.models import dnc_native

EPS = 1e-6  # keeps cosine similarity finite and the allocation products away from exact zeros


@dataclass
class DNCConfig:
    controller: str = "lstm"  # lstm | feedforward
    hidden: int = 256  # controller units
    memory_slots: int = 256  # N
    word_size: int = 64  # W
    read_heads: int = 4  # R
    clip: float = 20.0  # controller outputs clipped to [-clip, clip] (DeepMind's implementation); 0 = off
    # how the time loop runs: native = the unrolled sequence one autograd node, the memory step and the
    # LSTM's elementwise part C++ forward and backward (dnc_native.py: CPU, float32, LSTM controller;
    # built on first use with the system's C++ compiler); torch = tensor operations per time step
    # (torch.compile'd with trainer.compile=true); auto = native where it applies and builds, torch
    # otherwise (bf16 autocast, a GPU, the feed-forward controller, trainer.compile=true)
    kernel: str = "auto"

    def check(self) -> str | None:
        if self.controller not in ("lstm", "feedforward"):
            return f"model.controller={self.controller!r}; choose from: lstm, feedforward"
        if self.kernel not in ("auto", "native", "torch"):
            return f"model.kernel={self.kernel!r}; choose from: auto, native, torch"
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
    """psi [B,N] from free gates [B,R] and the previous read weightings [B,R,N].

    Under torch.compile a running product over the heads: ``torch.prod``'s backward guards against zero
    factors with cumulative products that inductor cannot fuse (two library calls per time step). Eager,
    ``torch.prod`` (one op; the running product's slices cost more there)."""
    keep = 1 - free_gates.unsqueeze(2) * read_weights
    if not torch.compiler.is_compiling():
        return torch.prod(keep, dim=1)
    psi = keep[:, 0]
    for head in range(1, keep.shape[1]):
        psi = psi * keep[:, head]
    return psi


def update_usage(usage: torch.Tensor, write_weights: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    return (usage + write_weights - usage * write_weights) * psi


def allocation(usage: torch.Tensor) -> torch.Tensor:
    """Allocation weighting [B,N]: the least used slots first, each weighted by how free it is and by how
    used the slots before it are: a[i] = (1 - u[i]) prod_{j before i} u[j], "before" the ascending order of
    usage, ties by slot index (a stable sort, as the loop reference's ``sorted``). The gradient is the
    sort's: the order a constant, d a[i] / d u[j] = a[i] / u[j] for j before i, -prod for j = i.

    Two forms of the same function, each the faster one where it runs: eager, :func:`allocation_sorted`;
    under torch.compile, :func:`allocation_pairwise` (sort, cumprod and scatter are library calls inductor
    cannot fuse, and cumprod's backward adds five more per time step)."""
    usage = EPS + (1 - EPS) * usage
    return allocation_pairwise(usage) if torch.compiler.is_compiling() else allocation_sorted(usage)


def allocation_sorted(usage: torch.Tensor) -> torch.Tensor:
    """The allocation of ``usage`` (already >= EPS) by a stable sort, an exclusive cumulative product and a
    scatter back to the slots."""
    sorted_usage, order = usage.sort(dim=1, stable=True)
    ones = torch.ones_like(sorted_usage[:, :1])
    before = torch.cumprod(torch.cat([ones, sorted_usage[:, :-1]], dim=1), dim=1)  # exclusive product
    return torch.zeros_like(usage).scatter(1, order, (1 - sorted_usage) * before)


def allocation_pairwise(usage: torch.Tensor) -> torch.Tensor:
    """The allocation of ``usage`` (already >= EPS, so every log is finite) without a sort: "j before i" a
    pairwise comparison ([B,N,N], cheap at DNC sizes), the product a masked sum of logs. Elementwise ops and
    one reduction, forward and backward, which inductor fuses with the rest of the time step."""
    n = usage.shape[1]
    index = torch.arange(n, device=usage.device)
    ui, uj = usage.unsqueeze(2), usage.unsqueeze(1)  # [B,N,1] (slot i), [B,1,N] (slot j)
    before = (uj < ui) | ((uj == ui) & (index < index.unsqueeze(1)))  # [B,N,N]: slot j comes before slot i
    log_before = torch.where(before, usage.log().unsqueeze(1), 0.0).sum(dim=2)
    return (1 - usage) * torch.exp(log_before)


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
    wi = write_weights.unsqueeze(2)
    # L - (w_i + w_j) L + w_i p_j, then the diagonal zeroed in place (a baddbmm for the outer product, or a
    # mask multiplied in, each measured slower on the CPU). In place where autograd allows it: neither
    # addcmul's backward nor zeroing needs the output.
    new = torch.addcmul(link, link, wi + write_weights.unsqueeze(1), value=-1).addcmul_(
        wi, precedence.unsqueeze(1)
    )
    new.diagonal(dim1=1, dim2=2).zero_()
    return new


def update_precedence(precedence: torch.Tensor, write_weights: torch.Tensor) -> torch.Tensor:
    return (1 - write_weights.sum(dim=1, keepdim=True)) * precedence + write_weights


def directional_weights(link: torch.Tensor, read_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(backward, forward) [B,R,N]: f = L w (the slots written after the ones read), b = L^T w."""
    forward = read_weights @ link.transpose(1, 2)
    backward = read_weights @ link
    return backward, forward


class LinkStep(torch.autograd.Function):
    """:func:`update_links` and then :func:`directional_weights` of the new links, with the backward written
    out: (link [B,N,N], precedence, write [B,N], read [B,R,N]) -> (new link, backward, forward).

    Autograd's backward of the two, eager or as inductor fuses it, was the largest part of the memory
    step's backward at the dnc-babi size (the [B,N,N] gradient built in several passes, matrix-vector
    products on the slow batched path; ~0.5 ms per time step alone); by hand it is one baddbmm for all
    that reaches the new links, a few passes over [B,N,N] and batched products that keep the long
    dimension last. With G the gradient of the new links (the next step's plus the read-outs'
    g_f^T w^r + w^r^T g_b), diagonal zeroed, and L the old links:
    dL = G (1 - w_i - w_j); dw^w = G p - rowsum(G L) - colsum(G L); dp = w^w^T G;
    dw^r = g_b L_new^T + g_f L_new."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        link: torch.Tensor,
        precedence: torch.Tensor,
        write_weights: torch.Tensor,
        read_weights: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        new = update_links(link, precedence, write_weights)
        backward, forward = directional_weights(new, read_weights)
        ctx.save_for_backward(link, precedence, write_weights, read_weights, new)
        return new, backward, forward

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_new: torch.Tensor,
        grad_backward: torch.Tensor,
        grad_forward: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        link, precedence, ww, reads, new = ctx.saved_tensors  # type: ignore[attr-defined]
        # eager runs this outside autocast (backward() is called after the autocast block), but torch.compile
        # traces it under the forward's autocast, where bmm turns bf16 and the in-place baddbmm_ then fails
        with torch.autocast(new.device.type, enabled=False):
            return _link_step_grads(link, precedence, ww, reads, new, grad_new, grad_backward, grad_forward)


def _link_step_grads(
    link: torch.Tensor,
    precedence: torch.Tensor,
    ww: torch.Tensor,
    reads: torch.Tensor,
    new: torch.Tensor,
    grad_new: torch.Tensor,
    grad_backward: torch.Tensor,
    grad_forward: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:class:`LinkStep`'s backward (its docstring gives the formulas)."""
    # under bf16 autocast the read-outs (batched products) and their gradients are bf16, the links float:
    # the backward in the links' precision (autograd casts each gradient back to its input's dtype)
    grad_backward, grad_forward, reads = (x.to(new.dtype) for x in (grad_backward, grad_forward, reads))
    # the two read-outs' outer products in one [B,N,2R] @ [B,2R,N] product added to the next step's
    left = torch.cat([grad_forward, reads], dim=1).transpose(1, 2)
    grad = torch.baddbmm(grad_new, left, torch.cat([reads, grad_backward], dim=1))
    grad.diagonal(dim1=1, dim2=2).zero_()
    grad_reads = torch.bmm(grad_backward, new.transpose(1, 2)).baddbmm_(grad_forward, new)
    wi = ww.unsqueeze(2)
    grad_link = torch.addcmul(grad, grad, wi + ww.unsqueeze(1), value=-1)
    grad_times_link = grad * link
    # G p as p^T G^T: a [B,1,N] row times the matrix; [B,N,N] @ [B,N,1] is several times slower on CPU
    grad_ww = torch.bmm(precedence.unsqueeze(1), grad.transpose(1, 2)).squeeze(1)
    grad_ww = grad_ww - grad_times_link.sum(dim=2) - grad_times_link.sum(dim=1)
    grad_precedence = torch.bmm(wi.transpose(1, 2), grad).squeeze(1)
    return grad_link, grad_precedence, grad_ww, grad_reads


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
    link, backward, forward = LinkStep.apply(state.link, state.precedence, ww, state.read_weights)
    precedence = update_precedence(state.precedence, ww)
    read_content = content_weighting(memory, face.read_keys, face.read_strengths)
    wr = read_weighting(face.read_modes, backward, read_content, forward)
    # in the memory's dtype: under bf16 autocast the product is bf16, and a state whose dtype changes after
    # the first step would make torch.compile trace the step again (its consumers promote or recast anyway)
    read_vectors = (wr @ memory).to(memory.dtype)
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


class Shared(NamedTuple):
    """What every time step uses: the weights it multiplies by, detached (their gradients are summed over
    the time steps in one matrix product each after the loop, :class:`TimeSummedWeightGrad`)."""

    recurrent: torch.Tensor  # [G, R*W (+ hidden)]: what multiplies [read vectors, h] (G = 4*hidden for LSTM)
    interface: torch.Tensor  # [interface_size, hidden]


class TimeSummedWeightGrad(torch.autograd.Function):
    """The gradient of a weight used at every time step, in one matrix product after the loop.

    ``y_t = b_t + x_t @ W^T`` at every step t, with ``W`` detached inside the loop and ``b`` [B,T,out] the
    part of ``y`` known before the loop, passed through this function unchanged: the gradient reaching
    ``b`` is dL/dy_t for all t at once, and with the inputs ``x_t`` the loop appends to ``inputs``,
    dL/dW = sum_t dL/dy_t^T x_t is one [out, B*T] @ [B*T, in] product instead of T small ones (each also
    added into the gradient). ``b`` comes back as a view, not a copy: adding zeros of its size instead
    cost a fill and an add of [B,T,out] per training step (0.06-0.13 ms per time step at the dnc-babi
    size)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, before: torch.Tensor, weight: torch.Tensor, inputs: list
    ) -> torch.Tensor:
        ctx.inputs = inputs  # type: ignore[attr-defined]
        ctx.weight_dtype = weight.dtype  # type: ignore[attr-defined]
        return before

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple:  # type: ignore[override]
        x = torch.stack(ctx.inputs, dim=1).flatten(0, 1)  # type: ignore[attr-defined]  # [B*T, in]
        grad_weight = grad.flatten(0, 1).t() @ x.to(grad.dtype)
        return grad, grad_weight.to(ctx.weight_dtype), None  # type: ignore[attr-defined]


def cell_step(
    x_gates: torch.Tensor,
    face_bias: torch.Tensor,
    shared: Shared,
    state: MemoryState,
    h: torch.Tensor,
    c: torch.Tensor,
    lstm: bool,
    clip: float,
    word: int,
    heads: int,
    record: bool = False,
) -> tuple[MemoryState, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """One time step after the work done for all steps at once: (state, h, c, controller input, clipped h,
    trace).

    ``x_gates`` [B,G] is this step's input already multiplied by the controller's input weights (plus the
    biases), ``face_bias`` [B,I] the interface's bias: the loop computes both for all steps at once (see
    :class:`TimeSummedWeightGrad`, which they pass through). The LSTM cell is ``nn.LSTMCell``'s (gates i,
    f, g, o); the recurrent ``h`` is the unclipped one, the interface and the output layer see ``h``
    clipped to [-clip, clip]. The trace is empty unless ``record``: in training, the compiled step then has
    no outputs that alias others (each costs the runtime wrapper work at every call). A pure function of
    tensors, so ``torch.compile`` can trace it whole."""
    controller_in = (
        torch.cat([state.read_vectors.flatten(1), h], dim=1) if lstm else state.read_vectors.flatten(1)
    )
    gates = torch.addmm(x_gates, controller_in, shared.recurrent.t())
    if lstm:
        i, f, g, o = gates.chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
    else:
        h = torch.relu(gates)
    out = h.clamp(-clip, clip) if clip else h
    face = split_interface(torch.addmm(face_bias, out, shared.interface.t()), word, heads)
    state, trace = memory_step(state, face)
    return state, h, c, controller_in, out, trace if record else {}


class DNC(nn.Module):
    """Controller (LSTM cell or feed-forward) + memory. Input [B,T,in] -> logits [B,T,out].

    The controller sees the input and the previous step's read vectors; the output layer sees the
    controller's output and this step's read vectors (the paper's y = W_y h + W_r r).

    For speed (the step is overhead-bound: hundreds of small operations per time step) the work that does
    not depend on the recurrence is done once per sequence, batched over all time steps: the controller's
    input projection before the loop and the output layer after it. The parameters are those of
    ``nn.LSTMCell``/``nn.Linear`` as before, so the state dict and old checkpoints are unchanged;
    benchmarks/dnc_reference_cell.py keeps the per-step original, and tests/test_dnc.py checks that both
    compute the same function."""

    def __init__(self, input_size: int, output_size: int, cfg: DNCConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_size = input_size
        n_read = cfg.read_heads * cfg.word_size
        if cfg.controller == "lstm":
            self.controller: nn.Module = nn.LSTMCell(input_size + n_read, cfg.hidden)
        else:
            self.controller = nn.Sequential(nn.Linear(input_size + n_read, cfg.hidden), nn.ReLU())
        self.interface = nn.Linear(cfg.hidden, interface_size(cfg.word_size, cfg.read_heads))
        self.output = nn.Linear(cfg.hidden + n_read, output_size)
        self.step = cell_step
        self.compiled = False  # compile_step() was called

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

    def input_projection(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the controller's input projection plus its biases [B,T,G], the recurrent weight [G, R*W (+
        hidden)]: what multiplies [read vectors, h] at every step). Token ids [B,T] (integers below
        ``input_size``) stand for their one-hot vectors: the projection is then a lookup of the weight's
        columns, the same numbers without the product."""
        k = self.input_size
        if self.cfg.controller == "lstm":
            cell = self.controller
            assert isinstance(cell, nn.LSTMCell)
            weight, bias = cell.weight_ih[:, :k], cell.bias_ih + cell.bias_hh
            recurrent = torch.cat([cell.weight_ih[:, k:], cell.weight_hh], dim=1)
        else:
            linear = self.controller[0]
            weight, bias = linear.weight[:, :k], linear.bias
            recurrent = linear.weight[:, k:]
        if inputs.is_floating_point():
            return F.linear(inputs, weight, bias), recurrent
        # the biases added to the table's rows (V of them), not to every looked-up row (B*T)
        return F.embedding(inputs, weight.t() + bias), recurrent

    def before_loop(
        self, inputs: torch.Tensor, controller_ins: list[torch.Tensor], face_ins: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, Shared]:
        """What does not depend on the recurrence, for all time steps at once: the controller's input
        projection (plus biases) [B,T,G], the interface's bias [B,T,I], and the detached weights of a time
        step, whose gradients come from the inputs the loop appends (detached) to ``controller_ins`` and
        ``face_ins``."""
        x_gates, recurrent = self.input_projection(inputs)
        face_weight = self.interface.weight
        face_bias = self.interface.bias.expand(*inputs.shape[:2], -1)
        if torch.is_grad_enabled():
            x_gates = TimeSummedWeightGrad.apply(x_gates, recurrent, controller_ins)
            face_bias = TimeSummedWeightGrad.apply(face_bias, face_weight, face_ins)
        return x_gates, face_bias, Shared(recurrent.detach(), face_weight.detach())

    def native_applies(self, inputs: torch.Tensor, record: bool) -> bool:
        """Whether this forward runs the native time step (``model.kernel``); ``native`` where it cannot
        apply or build is an error (ConfigError), ``auto`` falls back to the tensor operations."""
        kernel = self.cfg.kernel
        # the recording pass (plots) traces intermediates, and trainer.compile asked for the compiled
        # tensor-operation step (compile_step): tensor operations
        if kernel == "torch" or record or self.compiled:
            return False
        why = None
        if self.cfg.controller != "lstm":
            why = "it has an LSTM controller only"
        elif inputs.device.type != "cpu" or self.interface.weight.dtype != torch.float32:
            why = f"it runs on the CPU in float32 (here {inputs.device.type}, {self.interface.weight.dtype})"
        elif torch.is_autocast_enabled("cpu"):
            why = "it computes in float32 (bf16 autocast is on: trainer.precision=bf16)"
        else:
            try:
                dnc_native.library(self.cfg.memory_slots, self.cfg.word_size, self.cfg.read_heads)
                return True
            except dnc_native.NativeUnavailable as err:
                why = str(err)
        if kernel == "native":
            raise ConfigError(f"model.kernel=native: {why}; use model.kernel=auto or torch")
        return False

    def training_memory_bytes(self, steps: int, batch: int) -> int:
        """What a training minibatch of ``batch`` sequences of ``steps`` keeps for its backward through the
        native kernel (the tensor operations' autograd keeps more); NativeUnavailable without it."""
        cfg, face_size = self.cfg, self.interface.weight.shape[0]
        return dnc_native.training_bytes(
            steps, batch, cfg.memory_slots, cfg.word_size, cfg.read_heads, cfg.hidden, face_size
        )

    def native_forward(self, inputs: torch.Tensor, at: torch.Tensor | None) -> torch.Tensor:
        """forward() through dnc_native.Sequence: the logits (of the ``at`` steps)."""
        cfg = self.cfg
        # time-major: token ids are transposed before the lookup (a [T,B] copy instead of a [T,B,G] one)
        time_major = inputs.t() if not inputs.is_floating_point() else inputs.transpose(0, 1)
        x_gates, recurrent = self.input_projection(time_major)
        out, reads = dnc_native.Sequence.apply(
            x_gates.contiguous(),
            self.interface.bias,
            recurrent,
            self.interface.weight,
            float(cfg.clip),
            cfg.memory_slots,
            cfg.word_size,
            cfg.read_heads,
            torch.is_grad_enabled(),
        )
        features = torch.cat([out, reads], dim=2).transpose(0, 1)  # [B,T,hidden + R*W]
        return self.output(features if at is None else features[at.to(features.device)])

    def compile_step(self) -> None:
        """``torch.compile`` one time step (the whole cell: controller, interface and memory, one graph,
        forward and backward), not the unrolled sequence: the loop over time stays in Python, so one graph
        serves every sequence length (bAbI stories vary). The parameters stay where they are, so the state
        dict (and checkpoints) do not change. With ``model.kernel=auto`` the forward then takes this
        step, not the native kernel (faster on the CPU: chapter 8); ``model.kernel=native`` refuses."""
        if self.cfg.kernel == "native":
            raise ConfigError(
                "trainer.compile=true compiles the tensor-operation step, which model.kernel=native does not "
                "run; use model.kernel=auto or torch, or leave trainer.compile off"
            )
        self.step = torch.compile(cell_step, fullgraph=True, dynamic=False)
        self.compiled = True

    def forward(
        self, inputs: torch.Tensor, record: bool = False, at: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """inputs [B,T,in] (or token ids [B,T]) -> (logits [B,T,out], the trace if ``record``). With
        ``at`` (a boolean mask [B,T]) the logits of those time steps only, [K,out] in the mask's order:
        bAbI's loss looks at the answer steps alone (about one in ten), and the output layer's products
        for the others would be thrown away."""
        if self.native_applies(inputs, record):
            return self.native_forward(inputs, at), None
        batch = inputs.shape[0]
        cfg = self.cfg
        controller_ins: list[torch.Tensor] = []
        face_ins: list[torch.Tensor] = []
        outs, reads, traces = [], [], []
        x_gates, face_bias, shared = self.before_loop(inputs, controller_ins, face_ins)
        state = self.initial_state(batch, inputs.device)
        h = torch.zeros(batch, cfg.hidden, device=inputs.device)
        c = torch.zeros_like(h)
        lstm = cfg.controller == "lstm"
        # unbind, not x_gates[:, t]: the backward of indexing would zero a [B,T,G] gradient at every step;
        # time-major first, so each step's [B,G] has the same strides whatever the story's length (the
        # compiled step guards on strides: one graph per length, then the recompile limit, otherwise)
        steps = x_gates.transpose(0, 1).contiguous().unbind(dim=0)
        for x_t, bias_t in zip(steps, face_bias.unbind(dim=1), strict=True):
            state, h, c, controller_in, out, trace = self.step(
                x_t, bias_t, shared, state, h, c, lstm, cfg.clip, cfg.word_size, cfg.read_heads, record
            )
            controller_ins.append(controller_in.detach())
            face_ins.append(out.detach())
            outs.append(out)
            reads.append(state.read_vectors.flatten(1))
            if record:
                traces.append({k: v.detach() for k, v in trace.items()})
        # the output layer once for all time steps: [B,T,hidden + R*W] -> [B,T,out]
        features = torch.cat([torch.stack(outs, dim=1), torch.stack(reads, dim=1)], dim=2)
        logits = self.output(features if at is None else features[at.to(features.device)])
        if not record:
            return logits, None
        return logits, {k: torch.stack([tr[k] for tr in traces], dim=1) for k in traces[0]}
