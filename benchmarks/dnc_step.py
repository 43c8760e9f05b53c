"""A DNC training step at the dnc-babi size: fdl's DNC against today's reference cell, same stories.

1. The vectorized memory operations of fdlcli/models/dnc.py against the straightforward loops of
   fdlcli/models/dnc_reference.py on one random memory state: the results must agree.
2. One full training step (forward, cross-entropy at the answer steps, backward, gradient clipping at 10,
   Adam, fused as the dnc tasks train) of the dnc-babi model (159-word lexicon, LSTM controller of 256
   units, memory 64 x 32, 4 read heads) on a minibatch of 32 stories of 80 time steps (the mean en-10k
   story is 79 tokens), once with the reference cell (benchmarks/dnc_reference_cell.py: the DNC module as
   it was before issue 20, one ``nn.LSTMCell`` call, interface and output layer per time step, fed one-hot
   vectors) and once with fdl's as ``fdl train dnc-babi`` runs it:
   - ``model.kernel=auto``, which on the CPU in float32 is the native kernel (fdlcli/models/dnc_native.py:
     the whole unrolled sequence one autograd node, the LSTM's elementwise part and the memory step C++,
     the two matrix products of a step torch's); ``--kernel torch`` times the tensor-operation step,
     ``torch.compile``d unless --no-compile;
   - fed token ids, whose input projection is a lookup (``--one-hot``: the reference's one-hot vectors);
   - the logits of the answer steps only, all the loss looks at (``--all-logits``: every step's);
   - denormals flushed unless --no-flush, and glibc keeping freed memory (``keep_freed_memory``, as the
     training session sets it; for both models: it is process-wide).
   Both start from the same weights; the logits at the answer steps and every gradient must agree within
   float tolerance. ``--precision bf16`` runs fdl's step under bf16 autocast (``trainer.precision=bf16``,
   the tensor-operation step; the reference stays fp32): that changes what is computed, so the agreement
   is then checked as relative error norms (logits < 2%, each gradient < 5%), and the ratio is not the
   fp32 one.

Times are process CPU time (the figure that holds on a machine shared with other jobs), on one thread
unless --threads says otherwise; the two steps alternate and each reports its fastest of --repeats (load
from other jobs only ever adds time). The last line is ``ratio <reference step time / fdl step time>``.
The native kernel builds in a few seconds on first use; a first compile (--kernel torch) takes minutes
on a cold cache (neither counted).

    python benchmarks/dnc_step.py [--batch 32] [--steps 80] [--repeats 5] [--threads 1]
                                  [--kernel auto|native|torch] [--no-compile] [--one-hot] [--all-logits]
                                  [--precision 32|bf16] [--floor]

``--floor`` also times the dense matrix products of fdl's step alone, on the same shapes and thread
count: the controller's and the interface's products of each time step (forward, and backward to their
inputs) and the products done once for all time steps (the output layer, at the answer steps unless
--all-logits; the input projection, with --one-hot; the weight gradients). The memory's small products
are left out. So ``reference step / floor`` is the highest ratio a step doing these products could reach
on this CPU, however fast its memory, and the line says how much of the issue's 3x budget (reference /
3) the products leave for the memory, its kernels and the framework's overhead.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from fdlcli.engine.devices import keep_freed_memory
from fdlcli.models import dnc
from fdlcli.models import dnc_reference as loops

sys.path.insert(0, str(Path(__file__).parent))
import dnc_reference_cell as reference  # benchmarks/ is not a package: imported from its folder

LEXICON = 159  # words of the book's bAbI lexicon: the DNC's input and output size


def memory_step(ops: ModuleType, state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """One write-then-read memory step with the functions of ``ops`` (dnc or dnc_reference)."""
    s = state
    psi = ops.retention(s["free"], s["reads"])
    usage = ops.update_usage(s["usage"], s["writes"], psi)
    alloc = ops.allocation(usage)
    content_w = ops.content_weighting(s["memory"], s["write_key"], s["write_strength"])[:, 0]
    ww = ops.write_weighting(content_w, alloc, s["write_gate"], s["alloc_gate"])
    memory = ops.write_memory(s["memory"], ww, s["erase"], s["values"])
    link = ops.update_links(s["link"], s["precedence"], ww)
    precedence = ops.update_precedence(s["precedence"], ww)
    backward, forward = ops.directional_weights(link, s["reads"])
    content_r = ops.content_weighting(memory, s["read_keys"], s["read_strengths"])
    reads = ops.read_weighting(s["modes"], backward, content_r, forward)
    return [usage, alloc, ww, memory, link, precedence, reads]


def random_state(batch: int, n: int, word: int, heads: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def simplex(*shape: int) -> torch.Tensor:
        x = torch.rand(*shape, generator=g)
        return x / (2 * x.sum(dim=-1, keepdim=True))

    return {
        "memory": torch.randn(batch, n, word, generator=g),
        "usage": torch.rand(batch, n, generator=g),
        "link": torch.rand(batch, n, n, generator=g) / n,
        "precedence": simplex(batch, n),
        "reads": simplex(batch, heads, n),
        "writes": simplex(batch, n),
        "free": torch.rand(batch, heads, generator=g),
        "write_key": torch.randn(batch, 1, word, generator=g),
        "write_strength": 1 + torch.rand(batch, 1, generator=g),
        "write_gate": torch.rand(batch, 1, generator=g),
        "alloc_gate": torch.rand(batch, 1, generator=g),
        "erase": torch.rand(batch, word, generator=g),
        "values": torch.randn(batch, word, generator=g),
        "read_keys": torch.randn(batch, heads, word, generator=g),
        "read_strengths": 1 + torch.rand(batch, heads, generator=g),
        "modes": torch.softmax(torch.randn(batch, heads, 3, generator=g), dim=2),
    }


def check_memory_ops() -> None:
    state = random_state(batch=2, n=32, word=16, heads=2)
    for a, b in zip(memory_step(dnc, state), memory_step(loops, state), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    print("memory operations, batch 2, N=32, W 16, R 2: vectorized = loop reference")


class Trainer:
    """One model, its Adam optimizer and the training step of ``BabiTask`` (loss at the answer steps)."""

    def __init__(
        self, model: torch.nn.Module, flush_denormal: bool, precision: str = "32", answers_only: bool = False
    ) -> None:
        self.model = model
        self.answers_only = answers_only  # logits of the answer steps alone (fdl's DNC, as BabiTask asks)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # as SequenceTask's
        self.flush_denormal = flush_denormal
        self.precision = precision

    def forward_backward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Forward and backward of the loss; returns the logits of the answer steps (what the loss sees)."""
        self.optimizer.zero_grad(set_to_none=True)
        at = targets >= 0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            if self.answers_only:
                logits, _ = self.model(inputs, at=at)
                loss = F.cross_entropy(logits.float(), targets[at])
            else:
                logits, _ = self.model(inputs)
                loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
                logits = logits[at]
        loss.backward()
        return logits.detach().float()

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        torch.set_flush_denormal(self.flush_denormal)  # process-wide: set for each model's own step
        self.forward_backward(inputs, targets)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.optimizer.step()


def cpu_seconds(fn: Callable[[], object]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def dense_products_floor(
    cfg: dnc.DNCConfig, batch: int, steps: int, repeats: int, lookup: bool, answer_rows: int | None
) -> float:
    """CPU seconds (fastest of ``repeats``) of one training step's dense matrix products alone, fp32: see
    ``--floor`` in the module's docstring. Outputs go to preallocated buffers (no allocator time). With
    ``lookup`` the input projection is a lookup (token ids): no products; with ``answer_rows`` the output
    layer's products cover that many rows (the answer steps), not all ``batch * steps``."""
    g = torch.Generator().manual_seed(2)
    hidden, reads = cfg.hidden, cfg.read_heads * cfg.word_size
    gates, face = 4 * hidden, dnc.interface_size(cfg.word_size, cfg.read_heads)
    rows = batch * steps

    def mm(m: int, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.randn(m, k, generator=g), torch.randn(k, n, generator=g), torch.empty(m, n)

    per_step = [  # [B,in] @ [in,out] forward, then the backward to the input: [B,out] @ [out,in]
        mm(batch, reads + hidden, gates),
        mm(batch, hidden, face),
        mm(batch, gates, reads + hidden),
        mm(batch, face, hidden),
    ]
    out_rows = rows if answer_rows is None else answer_rows
    once = [
        mm(out_rows, hidden + reads, LEXICON),  # output layer, its input gradient and weight gradient
        mm(out_rows, LEXICON, hidden + reads),
        mm(LEXICON, out_rows, hidden + reads),
        mm(gates, rows, reads + hidden),  # weight gradients summed over time
        mm(face, rows, hidden),
    ]
    if not lookup:  # the input projection and its weight gradient
        once += [mm(rows, LEXICON, gates), mm(gates, rows, LEXICON)]

    def products() -> None:
        for _ in range(steps):
            for a, b, out in per_step:
                torch.mm(a, b, out=out)
        for a, b, out in once:
            torch.mm(a, b, out=out)

    products()  # warm-up
    return min(cpu_seconds(products) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=80, help="time steps (tokens) per story")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kernel", choices=["auto", "native", "torch"], default="auto", help="model.kernel")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="--kernel torch eager")
    parser.add_argument("--no-flush", dest="flush", action="store_false", help="keep denormals for fdl")
    parser.add_argument("--precision", choices=["32", "bf16"], default="32", help="fdl's step only")
    parser.add_argument("--one-hot", action="store_true", help="fdl's model reads one-hot vectors too")
    parser.add_argument("--all-logits", action="store_true", help="fdl's model: logits of every step")
    parser.add_argument("--floor", action="store_true", help="also time the dense matrix products alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as fdl train's session does, for both models of this process
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s)"
    )
    check_memory_ops()

    torch.manual_seed(0)
    cfg = dnc.DNCConfig(
        controller="lstm", hidden=256, memory_slots=64, word_size=32, read_heads=4, kernel=args.kernel
    )
    shared_fields = {k: v for k, v in vars(cfg).items() if k != "kernel"}  # the reference has no kernels
    ref_model = reference.DNC(LEXICON, LEXICON, reference.DNCConfig(**shared_fields))
    fdl_model = dnc.DNC(LEXICON, LEXICON, copy.deepcopy(cfg))
    fdl_model.load_state_dict(ref_model.state_dict())  # the same parameters: old checkpoints load
    if args.compile and args.kernel == "torch":
        fdl_model.compile_step()
    ref = Trainer(ref_model, flush_denormal=False)
    fdl = Trainer(fdl_model, args.flush, args.precision, answers_only=not args.all_logits)

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, LEXICON, (args.batch, args.steps), generator=g)
    inputs = F.one_hot(tokens, LEXICON).float()
    fdl_inputs = inputs if args.one_hot else tokens
    targets = torch.randint(0, LEXICON, (args.batch, args.steps), generator=g)
    targets[torch.rand(args.batch, args.steps, generator=g) > 0.1] = -1  # ~1 answer step in 10

    # the same function: logits and gradients (compiling happens here, not timed). Not the Adam update: its
    # first step moves every weight by about lr * sign(gradient), so float noise in a gradient near 0 flips it
    start = time.time()
    torch.set_flush_denormal(args.flush)
    fdl_logits = fdl.forward_backward(fdl_inputs, targets)
    torch.set_flush_denormal(False)
    ref_logits = ref.forward_backward(inputs, targets)
    pairs = [("logits", fdl_logits, ref_logits)] + [
        (f"gradient of {name}", p.grad, q.grad)
        for (name, p), q in zip(fdl_model.named_parameters(), ref_model.parameters(), strict=True)
    ]
    for what, a, b in pairs:
        if args.precision == "32":
            rtol, atol = (1e-4, 1e-5) if what == "logits" else (1e-3, 1e-6)
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=what)
        else:  # bf16 rounds every product: the error relative to the fp32 reference's norm
            error = float((a - b).norm() / b.norm())
            assert error < (0.02 if what == "logits" else 0.05), f"{what}: relative error {error:.3f}"
    print(f"logits and gradients agree (first step, compile included: {time.time() - start:.0f} s wall)")

    times: dict[str, list[float]] = {"reference": [], "fdl": []}
    for _ in range(args.repeats):
        times["reference"].append(cpu_seconds(lambda: ref.step(inputs, targets)))
        times["fdl"].append(cpu_seconds(lambda: fdl.step(fdl_inputs, targets)))
    best = {name: min(seconds) for name, seconds in times.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        native = fdl_model.native_applies(fdl_inputs, record=False)
    how = "native" if native else "compiled" if args.compile else "eager"
    how += ", denormals flushed" if args.flush else ""
    how += ", bf16 autocast" if args.precision == "bf16" else ""
    how += ", one-hot" if args.one_hot else ", token ids"
    how += ", all logits" if args.all_logits else ", answer logits"
    print(
        f"training step, batch {args.batch} x {args.steps} time steps, LSTM 256, N 64, W 32, R 4 "
        f"(fastest of {args.repeats}):"
    )
    for name, label in (("reference", "reference cell"), ("fdl", f"fdl ({how})")):
        seconds = best[name]
        print(f"  {label:<58} {seconds:7.3f} s  {1e3 * seconds / args.steps:6.2f} ms per time step")
    if args.floor:
        answer_rows = None if args.all_logits else int((targets >= 0).sum())
        floor = dense_products_floor(cfg, args.batch, args.steps, args.repeats, not args.one_hot, answer_rows)
        ms = 1e3 / args.steps  # seconds per step -> ms per time step
        budget = best["reference"] / 3
        label = "dense matrix products of fdl's step alone (fp32)"
        print(
            f"  {label:<58} {floor:7.3f} s  {ms * floor:6.2f} ms per time step: no cell doing them beats"
            f" ratio {best['reference'] / floor:.2f}; a 3x cell ({ms * budget:.2f} ms) leaves"
            f" {ms * (budget - floor):.2f} ms per time step for everything else"
        )
    print(f"ratio {best['reference'] / best['fdl']:.2f}")


if __name__ == "__main__":
    main()
