"""What the fastest fp32 DQN update this CPU's kernels allow costs: each part of an update of batch 32 on
the Nature network timed alone, the best of the ways torch offers to compute it, and their sum.

Parts (CPU time, one thread, median of ``--repeats`` after warm-up):

- the input: uint8 frame stacks to channels-last float, twice (online and target network), as fdl does
  it and the fastest alternative measured (convert, then reorder; the scale folded into conv1's weights);
- each convolution's forward (oneDNN, channels-last), twice (online and target);
- each convolution's backward: its input gradient (oneDNN; not for conv1, whose input is data) and its
  weight gradient, oneDNN's or a matrix product on the unfolded input (im2col), whichever is faster;
- the fully connected layer 3136 -> 512: forward twice, its input and weight gradients (MKL);
- the ReLUs forward and backward, and the fused Adam step.

The sum is an update with no framework overhead, each part at its best measured kernel. It prints that
sum, fdl's whole update timed the same way, and, given ``--rest-ms`` (the rest of fdl's agent step,
printed by ``dqn_throughput.py --floor``) and ``--reference-ms`` (the reference loop's time per agent
step), the ratio such an update would give in ``dqn_throughput.py``.

    python benchmarks/dqn_update_parts.py [--repeats 30] [--rest-ms 0.9 --reference-ms 13.4]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fdlcli.engine.devices import keep_freed_memory
from fdlcli.experiments.dqn import DQNAgent, NatureQNetwork, td_loss

BATCH = 32
CL = torch.channels_last
# (name, input channels, output channels, kernel, stride, input size): the Nature network's convolutions
CONVS = [("conv1", 4, 32, 8, 4, 84), ("conv2", 32, 64, 4, 2, 20), ("conv3", 64, 64, 3, 1, 9)]


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median CPU milliseconds of ``fn`` over ``repeats`` calls, after 5 warm-up calls."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return 1e3 * float(np.median(times))


def im2col_weight_grad(x: torch.Tensor, grad: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """A convolution's weight gradient as one matrix product on the unfolded (channels-last) input."""
    b, c, h, w = x.shape
    oh, ow, cout = grad.shape[2], grad.shape[3], grad.shape[1]
    patches = x.permute(0, 2, 3, 1).as_strided(
        (b, oh, ow, kernel, kernel, c), (h * w * c, stride * w * c, stride * c, w * c, c, 1)
    )
    rows = grad.permute(0, 2, 3, 1).reshape(b * oh * ow, cout)
    return rows.t() @ patches.reshape(b * oh * ow, kernel * kernel * c)


def conv_parts(
    name: str, cin: int, cout: int, k: int, s: int, size: int, g: torch.Generator, repeats: int
) -> dict[str, float]:
    """One convolution's parts of an update: forward twice, input and weight gradients, ReLUs."""
    x = torch.rand(BATCH, cin, size, size, generator=g).contiguous(memory_format=CL)
    weight = torch.rand(cout, cin, k, k, generator=g)
    y = F.conv2d(x, weight, stride=s)
    grad = torch.rand(y.shape, generator=g).contiguous(memory_format=CL)

    def backward(mask: list[bool]) -> Callable[[], object]:
        return lambda: torch.ops.aten.convolution_backward(
            grad, x, weight, [cout], [s, s], [0, 0], [1, 1], False, [0, 0], 1, mask
        )

    out = {f"{name} forward x2": 2 * cpu_ms(lambda: F.conv2d(x, weight, stride=s), repeats)}
    if name != "conv1":  # conv1's input is data: no gradient
        out[f"{name} input gradient"] = cpu_ms(backward([True, False, False]), repeats)
    onednn = cpu_ms(backward([False, True, True]), repeats)
    gemm = cpu_ms(lambda: im2col_weight_grad(x, grad, k, s), repeats)
    out[f"{name} weight gradient (oneDNN {onednn:.2f}, im2col {gemm:.2f})"] = min(onednn, gemm)
    out[f"{name} ReLU forward x2 and backward"] = 3 * cpu_ms(lambda: F.relu(y), repeats)
    return out


def parts(repeats: int) -> dict[str, float]:
    """Milliseconds per update of each part at its best measured kernel (and what fdl's input costs)."""
    g = torch.Generator().manual_seed(0)
    out: dict[str, float] = {}
    frames = torch.randint(0, 256, (BATCH, 5, 84, 84), dtype=torch.uint8, generator=g)
    obs = frames[:, :-1]
    out["input (fdl: channels-last uint8, float, / 255)"] = 2 * cpu_ms(
        lambda: obs.contiguous(memory_format=CL).float() / 255.0, repeats
    )
    out["input (float, then channels-last; scale in conv1)"] = 2 * cpu_ms(
        lambda: obs.float().contiguous(memory_format=CL), repeats
    )
    for conv in CONVS:
        out.update(conv_parts(*conv, g, repeats))
    features = torch.rand(BATCH, 3136, generator=g)
    fc = torch.rand(512, 3136, generator=g)
    fc_grad = torch.rand(BATCH, 512, generator=g)
    out["fc forward x2"] = 2 * cpu_ms(lambda: features @ fc.t(), repeats)
    out["fc input gradient"] = cpu_ms(lambda: fc_grad @ fc, repeats)
    out["fc weight gradient"] = cpu_ms(lambda: fc_grad.t() @ features, repeats)
    network = NatureQNetwork(4, 4)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4, fused=True)
    for p in network.parameters():
        p.grad = torch.rand(p.shape, generator=g)
    out["Adam (fused)"] = cpu_ms(optimizer.step, repeats)
    return out


def fdl_update_ms(repeats: int) -> float:
    """fdl's whole update (its network, TD loss and fused Adam) on random frames, timed the same way."""
    g = torch.Generator().manual_seed(0)
    agent = DQNAgent(NatureQNetwork(4, 4), NatureQNetwork(4, 4))
    optimizer = torch.optim.Adam(agent.online.parameters(), lr=1e-4, fused=True)
    frames = torch.randint(0, 256, (BATCH, 5, 84, 84), dtype=torch.uint8, generator=g)
    batch = (
        frames[:, :-1],
        torch.randint(0, 4, (BATCH,), generator=g),
        torch.zeros(BATCH),
        torch.zeros(BATCH, dtype=torch.bool),
        frames[:, 1:],
    )

    def update() -> None:
        loss, _ = td_loss(agent, batch, 0.99, double=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return cpu_ms(update, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rest-ms", type=float, help="the rest of fdl's agent step (dqn_throughput --floor)")
    parser.add_argument("--reference-ms", type=float, help="the reference loop's milliseconds per agent step")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()  # as fdl's training sessions run
    print(f"machine: {platform.machine()}, torch {torch.__version__}, 1 thread, CPU ms per update of 32")
    measured = parts(args.repeats)
    fdl_input = "input (fdl: channels-last uint8, float, / 255)"
    best_input = min(v for k, v in measured.items() if k.startswith("input"))
    for name, ms in measured.items():
        print(f"  {name:<62} {ms:6.2f}")
    best = best_input + sum(v for k, v in measured.items() if not k.startswith("input"))
    fdl = fdl_update_ms(args.repeats)
    print(f"sum of the parts at their best kernels: {best:.1f} ms; fdl's update: {fdl:.1f} ms")
    print(f"  (fdl's input path costs {measured[fdl_input]:.2f} ms of it)")
    if args.rest_ms is not None and args.reference_ms is not None:
        step = best / 4 + args.rest_ms  # one update per 4 agent steps
        print(
            f"an update at the parts' sum gives {step:.2f} ms per agent step:"
            f" ratio {args.reference_ms / step:.2f}"
        )


if __name__ == "__main__":
    main()
