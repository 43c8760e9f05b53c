"""The DNC's native kernel (``model.kernel``): the unrolled sequence forward and backward by hand, the
memory step and the LSTM's elementwise part in C++ (dnc_memory.cpp), float32 on the CPU.

The C++ source ships with the package and is compiled on first use with the system's C++ compiler (the
one ``torch.compile`` needs on the CPU), for this CPU (``-march=native``) and the model's memory sizes,
into a cache folder keyed by the source, the compiler, the flags and the CPU's flags; the build goes to a
temporary file renamed into place, so two processes starting at once cannot load half a library. It is
loaded with ctypes and called with the tensors' data pointers: no Python extension module, no torch
headers (the build takes a second or two).

:class:`Sequence` is what ``dnc.DNC`` trains through; :class:`MemoryStep` is one memory step alone.
tests/test_dnc_native.py checks both against autograd through ``dnc.cell_step`` and ``dnc.memory_step``."""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("dnc_memory.cpp")
# -fno-trapping-math and -fno-math-errno let the compiler vectorize the clamps and the exp; no fast-math:
# IEEE semantics otherwise (NaN and inf propagate as in torch)
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=fast", "-fno-math-errno"]
FLAGS += ["-fno-trapping-math", "-shared", "-fPIC"]


class NativeUnavailable(RuntimeError):
    """No C++ compiler, or the build failed: the caller falls back to the tensor-operation step."""


def _cache_dir() -> Path:
    root = os.environ.get("FDL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fdl"
    )
    return Path(root) / "native"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return torch.backends.cpu.get_cpu_capability()


@cache
def library(n: int, w: int, r: int) -> ctypes.CDLL:
    """The kernels compiled for a memory of ``n`` slots, words of ``w`` and ``r`` read heads (constants
    the compiler specializes the loops for), built on first use (NativeUnavailable if they cannot be)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        raise NativeUnavailable("no C++ compiler found (g++, c++ or clang++; or set CXX)")
    source = SOURCE.read_bytes()
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise NativeUnavailable(f"{compiler} does not run: {err}") from err
    flags = [*FLAGS, f"-DDNC_N={n}", f"-DDNC_W={w}", f"-DDNC_R={r}"]
    key = hashlib.sha256(source + version.encode() + " ".join(flags).encode() + _cpu_flags().encode())
    target = _cache_dir() / f"dnc_memory_{n}x{w}x{r}_{key.hexdigest()[:16]}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            build = subprocess.run(
                [compiler, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True, check=False
            )
            if build.returncode != 0:
                raise NativeUnavailable(f"building {SOURCE.name} failed: {build.stderr.strip()[:500]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    size, ptr, real = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    signatures = {
        "dnc_memory_saved_size": ([size] * 3, size),
        "dnc_memory_forward": ([size] * 4 + [ptr] * 15, None),
        "dnc_memory_backward": ([size] * 4 + [ptr] * 26, None),
        "dnc_lstm_forward": ([size, size, real] + [ptr] * 5, None),
        "dnc_lstm_backward": ([size, size, real] + [ptr] * 9, None),
    }
    for name, (args, result) in signatures.items():
        getattr(lib, name).argtypes = args
        getattr(lib, name).restype = result
    return lib


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _ready(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float().contiguous()


def _rows(t: torch.Tensor) -> tuple[int, int]:
    """(the address of row 0, bytes from a row to the next) of a tensor of contiguous rows along dim 0: the
    loops below address row t by arithmetic, a Python int addition where indexing makes a tensor."""
    return t.data_ptr(), t.stride(0) * t.element_size()


class MemoryStep(torch.autograd.Function):
    """One memory step alone: (raw interface [B,I], memory [B,N,W], usage [B,N], link [B,N,N], precedence
    [B,N], read weights [B,R,N], write weights [B,N]) -> (memory, usage, link, precedence, read weights,
    write weights, read vectors [B,R,W]) of the next time step. What :class:`Sequence` calls at every
    step, on its own for tests and for a model that steps the memory itself."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, face: torch.Tensor, *state: torch.Tensor) -> tuple:  # type: ignore[override]
        face, state = _ready(face), tuple(_ready(t) for t in state)  # type: ignore[assignment]
        (b, n, w), r = state[0].shape, state[4].shape[1]
        lib = library(n, w, r)
        new = (*(torch.empty_like(t) for t in state), face.new_empty(b, r, w))
        saved = face.new_empty(b, lib.dnc_memory_saved_size(n, w, r))
        lib.dnc_memory_forward(
            b, n, w, r, face.data_ptr(), *map(_ptr, state), *map(_ptr, new), saved.data_ptr()
        )
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(face, *state, *new, saved)
        return new

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: torch.Tensor | None) -> tuple:  # type: ignore[override]
        face, *rest = ctx.saved_tensors  # type: ignore[attr-defined]
        state, new, saved = rest[:6], rest[6:13], rest[13]
        (b, n, w), r = state[0].shape, state[4].shape[1]
        out = (torch.empty_like(face), *(torch.empty_like(t) for t in state))
        kept = (new[0], new[2], new[4], new[5])  # memory, link, read and write weights of the new step
        held = [_ready(g) for g in grads]  # held here: a pointer to a freed temporary would dangle
        library(n, w, r).dnc_memory_backward(
            b, n, w, r, face.data_ptr(), *map(_ptr, state), *map(_ptr, kept), saved.data_ptr(),
            *map(_ptr, held), *map(_ptr, out),
        )  # fmt: skip
        return out


def work_shapes(
    batch: int, n: int, w: int, r: int, hidden: int, face_size: int, saved_size: int
) -> list[tuple[int, ...]]:
    """The row shapes of Sequence's working tensors (each kept for every time step, plus one): the memory
    state (memory, usage, links, precedence, read and write weightings), the controller's h and c, its
    input, gates and interface vector, and the memory step's saved intermediates."""
    return [
        (batch, n, w), (batch, n), (batch, n, n), (batch, n), (batch, r, n), (batch, n),
        (batch, hidden), (batch, hidden), (batch, r * w + hidden), (batch, 4 * hidden),
        (batch, face_size), (batch, saved_size),
    ]  # fmt: skip


def training_bytes(steps: int, batch: int, n: int, w: int, r: int, hidden: int, face_size: int) -> int:
    """The float32 bytes a training minibatch of ``steps`` time steps keeps for its backward in Sequence:
    the working tensors, the read vectors and the controller's outputs (builds the library for the size
    of the saved intermediates; NativeUnavailable where it cannot)."""
    saved = library(n, w, r).dnc_memory_saved_size(n, w, r)
    row = sum(math.prod(shape) for shape in work_shapes(batch, n, w, r, hidden, face_size, saved))
    return 4 * ((steps + 1) * (row + batch * r * w) + steps * batch * hidden)


# One spare set of Sequence's working tensors per shape: the next forward takes it back instead of
# allocating ~100 MB of fresh pages per bAbI minibatch, whose first touch (page faults) cost more than the
# memory step itself (measured: 28,000 page faults and +0.4 ms per time step without it). It stays as
# long as the longest sequence seen (a few hundred MB for bAbI's longest stories at batch 32).
_spare: dict[tuple, tuple[int, list[torch.Tensor]]] = {}


def _take(key: tuple, rows: int, shapes: list[tuple[int, ...]], like: torch.Tensor) -> list[torch.Tensor]:
    """Tensors [rows, *shape] for ``shapes``: views of the spare set of ``key`` if it has the rows, else new
    ones (the spare, too short, is dropped)."""
    capacity, tensors = _spare.pop(key, (0, []))
    if capacity < rows:
        # the short spare goes before the new set is allocated, not after: never both at once (at the
        # paper's memory, 256 x 64, both at once were more than a 23 GB machine had)
        tensors.clear()
        tensors = [like.new_empty(rows, *shape) for shape in shapes]
    return [t[:rows] for t in tensors]


def _give(key: tuple, tensors: list[torch.Tensor]) -> None:
    """Keep ``tensors`` (views from _take) as the spare set of ``key`` unless a longer one is kept."""
    bases = [t if t._base is None else t._base for t in tensors]
    if _spare.get(key, (0, []))[0] < bases[0].shape[0]:
        _spare[key] = (bases[0].shape[0], bases)


class Sequence(torch.autograd.Function):
    """The whole unrolled DNC with an LSTM controller, forward and backward by hand: one autograd node for
    all T time steps. Per time step the forward is two matrix products (torch.addmm into preallocated
    rows) and two native calls (the LSTM's elementwise part, the memory step); the backward the same in
    reverse, and the weights' gradients are one matrix product each after the loop.

    Inputs: x_gates [T,B,4H] (the input projection plus the LSTM's biases, time-major, contiguous), the
    interface's bias [I], the recurrent weight [4H, R*W + H] (what multiplies [read vectors, h]), the
    interface's weight [I,H], the clip, the memory's (N, W, R) and whether a backward will follow.
    Outputs: the clipped controller outputs [T,B,H] and the read vectors [T,B,R*W], which the output layer
    takes. The state of every time step lives in one tensor per kind ([T+1, B, ...]), so a step costs no
    allocation and the saved tensors no bookkeeping. dnc.cell_step is the same function in tensor
    operations (tests/test_dnc_native.py)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x_gates: torch.Tensor,
        face_bias: torch.Tensor,
        recurrent: torch.Tensor,
        interface: torch.Tensor,
        clip: float,
        n: int,
        w: int,
        r: int,
        backward: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        steps, batch, gates_size = x_gates.shape
        hidden, face_size = gates_size // 4, interface.shape[0]
        lib = library(n, w, r)
        # the working tensors, [steps + 1, batch, ...] (the state before each step and after the last; the
        # per-step ones use rows 0..steps-1); the outputs are new tensors: they outlive the backward.
        # Evaluation (no backward to come) keeps two rows of state in turn and one of the rest. The caller
        # says which: under torch.no_grad the weights still require grad, so ctx.needs_input_grad would
        # have every evaluation keep all rows (20 GB for 100 test stories at the paper's memory, measured).
        keep = backward and any(ctx.needs_input_grad)
        key = (batch, n, w, r, hidden, face_size, x_gates.dtype, x_gates.device)
        shapes = work_shapes(batch, n, w, r, hidden, face_size, lib.dnc_memory_saved_size(n, w, r))
        work = _take(key, steps + 1 if keep else 2, shapes, x_gates)
        state, (h, c, controller_in, gates, face, saved) = work[:6], work[6:]
        state[0][0].fill_(1e-6)  # dnc.DNC.initial_state's: a small constant memory, the rest zero
        for kind in (*state[1:], h, c):
            kind[0].zero_()
        read_vectors = x_gates.new_zeros(steps + 1, batch, r * w)
        out = x_gates.new_empty(steps, batch, hidden)
        recurrent_t, interface_t = recurrent.t(), interface.t()
        # what the native calls take: the state's (and the read vectors') rows, and the rest's
        state_rows = [_rows(k) for k in (*state, read_vectors)]
        (gates_at, gates_row), (c_at, c_row), (h_at, h_row), (out_at, out_row), (face_at, face_row) = (
            _rows(k) for k in (gates, c, h, out, face)
        )
        saved_at, saved_row = _rows(saved)
        # and torch's products: row views made once
        rv_rows, h_rows = read_vectors.unbind(0), h.unbind(0)
        x_rows, in_rows, gates_rows, out_rows = (k.unbind(0) for k in (x_gates, controller_in, gates, out))
        face_rows = face.unbind(0)
        for t in range(steps):
            # rows: of the state before and after step t, and of step t's own tensors
            now, then, own = (t, t + 1, t) if keep else (t % 2, (t + 1) % 2, 0)
            state_at = [a + now * row for a, row in state_rows[:6]]
            state_after = [a + then * row for a, row in state_rows[:6]]
            state_after.append(state_rows[6][0] + (t + 1) * state_rows[6][1])  # the read vectors: all kept
            torch.cat([rv_rows[t], h_rows[now]], dim=1, out=in_rows[own])
            torch.addmm(x_rows[t], in_rows[own], recurrent_t, out=gates_rows[own])
            lib.dnc_lstm_forward(
                batch, hidden, clip, gates_at + own * gates_row, c_at + now * c_row, h_at + then * h_row,
                c_at + then * c_row, out_at + t * out_row,
            )  # fmt: skip
            torch.addmm(face_bias, out_rows[t], interface_t, out=face_rows[own])
            lib.dnc_memory_forward(
                batch, n, w, r, face_at + own * face_row, *state_at, *state_after, saved_at + own * saved_row
            )
        if not keep:  # evaluation: no backward will come
            _give(key, work)
        else:
            ctx.save_for_backward(recurrent, interface)
            ctx.kept = (key, work, out)  # type: ignore[attr-defined]
            ctx.sizes = (clip, n, w, r)  # type: ignore[attr-defined]
        return out, read_vectors[1:]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        grad_out: torch.Tensor | None,
        grad_reads: torch.Tensor | None,
    ) -> tuple:
        recurrent, interface = ctx.saved_tensors  # type: ignore[attr-defined]
        if not hasattr(ctx, "kept"):
            raise RuntimeError(
                "the DNC's native kernel reuses its working tensors after one backward: no retain_graph "
                "(use model.kernel=torch)"
            )
        key, work, out = ctx.kept  # type: ignore[attr-defined]
        del ctx.kept  # type: ignore[attr-defined]  # a second backward (retain_graph) would find nothing
        state, (h, c, controller_in, gates, face, saved) = work[:6], work[6:]
        clip, n, w, r = ctx.sizes  # type: ignore[attr-defined]
        steps, batch, gates_size = out.shape[0], out.shape[1], gates.shape[2]
        hidden, reads = gates_size // 4, r * w
        lib = library(n, w, r)
        grad_out, grad_reads = _ready(grad_out), _ready(grad_reads)
        grad_gates = gates.new_empty(steps, batch, gates_size)
        grad_face = face.new_empty(steps, batch, face.shape[2])
        # the gradients of the state after step t: None (zero) after the last step, then two sets in turn
        previous: list[int] | None = None
        sets = [[torch.empty_like(s[0]) for s in state] for _ in range(2)]
        grad_rv, grad_clipped = grad_gates.new_zeros(batch, reads), grad_gates.new_empty(batch, hidden)
        grad_h, grad_c = grad_gates.new_zeros(batch, hidden), grad_gates.new_zeros(batch, hidden)
        grad_c_before = torch.empty_like(grad_c)
        grad_in = grad_gates.new_zeros(batch, reads + hidden)  # of step t+1's controller input [rv, h]
        state_rows = [_rows(k) for k in state]
        (face_at, face_row), (saved_at, saved_row), (gates_at, gates_row) = (
            _rows(k) for k in (face, saved, gates)
        )
        (c_at, c_row), (h_at, h_row) = _rows(c), _rows(h)
        (grad_face_at, grad_face_row), (grad_gates_at, grad_gates_row) = _rows(grad_face), _rows(grad_gates)
        set_pointers = [[g.data_ptr() for g in kind] for kind in sets]
        grad_in_rv, grad_in_h = grad_in[:, :reads], grad_in[:, reads:]
        grad_face_rows, grad_gates_rows = grad_face.unbind(0), grad_gates.unbind(0)
        grad_out_rows = None if grad_out is None else grad_out.unbind(0)
        grad_reads_rows = None if grad_reads is None else grad_reads.unbind(0)
        pointers = [grad_rv.data_ptr(), grad_h.data_ptr(), grad_c.data_ptr(), grad_clipped.data_ptr()]
        pointers.append(grad_c_before.data_ptr())
        g_rv, g_h, g_c, g_clipped, g_c_before = pointers
        for t in reversed(range(steps)):
            state_at = [a + t * row for a, row in state_rows]
            memory_after, _, link_after, _, reads_after, writes_after = (
                a + (t + 1) * row for a, row in state_rows
            )
            # read vectors of step t: the output layer's gradient and step t+1's controller's
            if grad_reads_rows is not None:
                torch.add(grad_reads_rows[t], grad_in_rv, out=grad_rv)
            else:
                grad_rv.copy_(grad_in_rv)
            before = set_pointers[t % 2]
            lib.dnc_memory_backward(
                batch, n, w, r, face_at + t * face_row, *state_at, memory_after, link_after, reads_after,
                writes_after, saved_at + t * saved_row, *(previous or [None] * 6), g_rv,
                grad_face_at + t * grad_face_row, *before,
            )  # fmt: skip
            previous = before
            if grad_out_rows is not None:
                torch.addmm(grad_out_rows[t], grad_face_rows[t], interface, out=grad_clipped)
            else:
                torch.mm(grad_face_rows[t], interface, out=grad_clipped)
            grad_h.copy_(grad_in_h)
            lib.dnc_lstm_backward(
                batch, hidden, clip, gates_at + t * gates_row, c_at + t * c_row, c_at + (t + 1) * c_row,
                h_at + (t + 1) * h_row, g_h, g_c, g_clipped, grad_gates_at + t * grad_gates_row, g_c_before,
            )  # fmt: skip
            g_c, g_c_before = g_c_before, g_c
            torch.mm(grad_gates_rows[t], recurrent, out=grad_in)
        flat_gates, flat_face = grad_gates.view(steps * batch, -1), grad_face.view(steps * batch, -1)
        grad_recurrent = flat_gates.t() @ controller_in[:steps].reshape(steps * batch, -1)
        grad_interface = flat_face.t() @ out.view(steps * batch, -1)
        _give(key, work)
        return grad_gates, flat_face.sum(dim=0), grad_recurrent, grad_interface, None, None, None, None, None
