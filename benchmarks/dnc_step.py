"""DNC step time against memory size, and the vectorized memory operations against the loop reference.

1. Training step time (forward + backward) of the DNC module (LSTM controller of 256 units, word size 64,
   4 read heads, a minibatch of 16 sequences of 50 steps) for 16 to 256 memory slots: the link matrix
   makes a step O(N^2) in the slots.
2. One full memory step (retention, usage, allocation, write weighting, write, links, precedence,
   directional and read weightings) computed by fdlcli/models/dnc.py and by the straightforward loops of
   fdlcli/models/dnc_reference.py on the same random state, in one process; the results must agree and
   the last line is ``ratio <loop time / vectorized time>``.

Times are process CPU time (the figure that holds on a machine shared with other jobs), on one thread
unless --threads says otherwise.

    python benchmarks/dnc_step.py [--slots 16 32 64 128 256] [--ref-slots 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from types import ModuleType

import torch

from fdlcli.models import dnc
from fdlcli.models import dnc_reference as ref


def cpu_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats


def step_times(slots: list[int], batch: int, steps: int) -> None:
    print(f"training step (forward + backward), batch {batch} x {steps} steps, LSTM 256, W 64, R 4:")
    for n in slots:
        torch.manual_seed(0)
        cfg = dnc.DNCConfig(hidden=256, memory_slots=n, word_size=64, read_heads=4)
        model = dnc.DNC(159, 159, cfg)
        inputs = torch.randn(batch, steps, 159)

        def train_step(model: dnc.DNC = model, inputs: torch.Tensor = inputs) -> None:
            model.zero_grad(set_to_none=True)
            model(inputs)[0].sum().backward()

        seconds = cpu_time(train_step, repeats=2)
        print(f"  N={n:4d}  {seconds:7.3f} s per minibatch  {1000 * seconds / steps:7.2f} ms per time step")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--ref-slots", type=int, default=32, help="memory slots of the loop comparison")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {cpu}, {args.threads} thread(s)")
    step_times(args.slots, args.batch, args.steps)

    state = random_state(batch=2, n=args.ref_slots, word=16, heads=2)
    fast = memory_step(dnc, state)
    slow = memory_step(ref, state)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    vectorized = cpu_time(lambda: memory_step(dnc, state), repeats=50)
    loops = cpu_time(lambda: memory_step(ref, state), repeats=1)
    print(
        f"one memory step, batch 2, N={args.ref_slots}, W 16, R 2 (results agree): vectorized "
        f"{1e3 * vectorized:.3f} ms, loop reference {1e3 * loops:.1f} ms"
    )
    print(f"ratio {loops / vectorized:.1f}")


if __name__ == "__main__":
    main()
