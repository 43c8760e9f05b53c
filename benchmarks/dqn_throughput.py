"""dqn-breakout collection plus learning, through fdl's loop, against a plain single-environment loop.

fdl: ``trainer.num_envs`` Breakout environments stepped together (one batched forward per step on the
observations of the environments that act greedily, none when all explore), the frames-once uint8
replay (stacks gathered with numpy), one update of batch 32 per 4 agent steps (fused Adam,
channels-last convolutions); ``--compile`` adds ``trainer.compile=true`` (the TD loss compiled as one
graph: faster per update in isolation, measured no faster in the loop, so off by default). The
reference is the usual CleanRL-style script in one process: one environment, one forward per greedy
step, a replay that stores each transition's observation and next observation as full 4x84x84 stacks,
the same network, loss, optimizer (torch's default Adam), update rate and epsilon schedule, in eager
PyTorch. Both are timed in steady state, after learning starts (fdl: its own per-window rates with the
first window dropped, which holds any compile and inductor's compile workers, the only subprocesses), as
agent steps (4 frames each) per second of process CPU time (all threads), the figure that holds on a
machine shared with other jobs; wall-clock rates are printed beside it (and give the ratio on a GPU,
where kernels run asynchronously). Run it with this checkout's fdlcli importable (PYTHONPATH=. or an
editable install of it): a script's directory, not the current one, leads sys.path.

``--precision bf16`` trains fdl's side with ``trainer.precision=bf16`` (bf16 autocast of the update, as the
1M-step dqn-breakout run of docs/chapter9.md trained); ``--reference-precision bf16`` wraps the reference's
forwards and loss in the same autocast. Both default to fp32, and the header says which pair was compared.

``--reference-network`` chooses the reference's network: ``reference`` (the default) is fdl's NatureQNetwork
as it was when issue 20 set the target, copied below, so that fdl's own changes to its network cannot speed
the reference up as well (its channels-last frames once did); ``fdl`` gives the reference today's network.

``--floor`` (CPU) also says how far any loop could go: it counts the update's floating-point operations
(two forwards of batch 32, one backward: weight gradients of every layer, input gradients of all but the
first), times this core's fp32 matrix-product peak (a 1024 x 1024 x 1024 product) and fdl's updates in
its loop (CPU time, median), and prints the ratio fdl would reach if its update ran at that peak while the
rest of its agent step (environments, replay, acting, bookkeeping) stayed as measured.

    python benchmarks/dqn_throughput.py [--steps 2000] [--num-envs 8] [--device cpu|cuda] [--compile]
        [--precision fp32|bf16] [--reference-precision fp32|bf16] [--reference-network reference|fdl]
        [--floor]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdlcli import config as fdl_config
from fdlcli.engine.loop import train
from fdlcli.experiments._rl import make_env
from fdlcli.experiments.dqn import DQNTask, NatureQNetwork
from fdlcli.runs import Run, read_metrics

LEARNING_STARTS = 500


class ReferenceQNetwork(nn.Module):
    """fdl's NatureQNetwork as it was when issue 20 was filed (commit 97e6119^), verbatim: the reference
    loop's network. A copy, so fdl's later changes to its own network (channels-last frames, ...) cannot
    speed the reference up too; ``--reference-network fdl`` gives the reference today's network instead."""

    def __init__(self, frames: int, n_actions: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(frames, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 512), nn.ReLU(),
            nn.Linear(512, n_actions),
        )  # fmt: skip

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float() / 255.0)


class TimedDQNTask(DQNTask):
    """fdl's DQN task, adding up the CPU time of its updates (``--floor`` splits fdl's agent step with it)."""

    update_seconds: ClassVar[list[float]] = []

    def update(self) -> torch.Tensor:
        start = time.process_time()
        loss = super().update()
        TimedDQNTask.update_seconds.append(time.process_time() - start)
        return loss


def fdl_rate(
    steps: int, num_envs: int, device: str, threads: int, compiled: bool, precision: str
) -> tuple[float, float]:
    """(agent steps per CPU second, per wall second) of fdl's training loop."""
    overrides = [
        f"trainer.total_steps={steps + LEARNING_STARTS}",
        f"trainer.learning_starts={LEARNING_STARTS}",
        f"trainer.num_envs={num_envs}",
        "trainer.epsilon_anneal_steps=10000",  # the reference's schedule: both act greedily as often
        "trainer.buffer_size=20000",
        "trainer.eval_every=100000000",
        "trainer.eval_episodes=1",
        "trainer.eval_epsilon=1.0",
        "trainer.max_episode_steps=200",  # bounds the closing evaluation episode (not timed)
        "trainer.log_every=25",
        f"trainer.device={device}",
        f"trainer.threads={threads}",
        f"trainer.compile={str(compiled).lower()}",
        f"trainer.precision={'32' if precision == 'fp32' else precision}",  # fdl names fp32 "32"
    ]
    run_config = fdl_config.validate(fdl_config.compose("dqn-breakout", overrides))
    with tempfile.TemporaryDirectory() as tmp:
        train(TimedDQNTask, Run(path=Path(tmp), config=run_config))
        records = read_metrics(Path(tmp))

    def steady(name: str) -> float:  # the first logging window includes warm-up
        return float(np.mean([r["value"] for r in records if r["name"] == name][1:]))

    return steady("train/steps_per_cpu_s"), steady("train/steps_per_s")


def reference_rate(
    steps: int, device: str, threads: int, precision: str, network: str
) -> tuple[float, float]:
    """(agent steps per CPU second, per wall second) of the plain single-environment loop."""

    def autocast() -> contextlib.AbstractContextManager:
        if precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=device, dtype=torch.bfloat16)

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    env = make_env("ALE/Breakout-v5")
    n_actions = int(env.action_space.n)
    network_class = ReferenceQNetwork if network == "reference" else NatureQNetwork
    online = network_class(4, n_actions).to(device)
    target = network_class(4, n_actions).to(device)
    target.load_state_dict(online.state_dict())
    optimizer = torch.optim.Adam(online.parameters(), lr=1e-4)
    capacity = 20000
    observations = np.zeros((capacity, 4, 84, 84), dtype=np.uint8)
    next_observations = np.zeros((capacity, 4, 84, 84), dtype=np.uint8)
    actions = np.zeros(capacity, dtype=np.int64)
    rewards = np.zeros(capacity, dtype=np.float32)
    dones = np.zeros(capacity, dtype=np.float32)
    obs, _ = env.reset(seed=0)
    cpu = wall = 0.0
    for step in range(steps + LEARNING_STARTS):
        if step == LEARNING_STARTS:
            cpu, wall = time.process_time(), time.perf_counter()
        epsilon = max(0.1, 1.0 - step / 10000)
        if rng.random() < epsilon:
            action = int(rng.integers(n_actions))
        else:
            with torch.no_grad():
                action = int(online(torch.as_tensor(np.asarray(obs)[None], device=device)).argmax())
        next_obs, reward, terminated, truncated, _ = env.step(action)
        i = step % capacity
        observations[i], next_observations[i] = obs, next_obs
        actions[i], rewards[i], dones[i] = action, np.sign(reward), float(terminated)
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()
        if step >= LEARNING_STARTS and step % 4 == 0:
            idx = rng.integers(0, min(step + 1, capacity), 32)
            batch_obs = torch.as_tensor(observations[idx], device=device)
            batch_next = torch.as_tensor(next_observations[idx], device=device)
            with torch.no_grad(), autocast():
                next_value = target(batch_next).max(dim=1).values.float()
                y = torch.as_tensor(rewards[idx], device=device) + 0.98 * next_value * (
                    1 - torch.as_tensor(dones[idx], device=device)
                )
            with autocast():
                q = online(batch_obs).gather(1, torch.as_tensor(actions[idx], device=device)[:, None])
            loss = F.smooth_l1_loss(q.squeeze(1).float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if step % 2500 == 0:
            target.load_state_dict(online.state_dict())
    if device == "cuda":
        torch.cuda.synchronize()
    env.close()
    return steps / (time.process_time() - cpu), steps / (time.perf_counter() - wall)


def update_flops(network: nn.Module, batch: int) -> float:
    """Floating-point operations of one DQN update of ``batch``: the online and the target forward, and
    the backward's weight gradients (every layer) and input gradients (all layers but the first, whose
    input is data), 2 per multiply-add."""
    macs: list[int] = []

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        macs.append(output.numel() * module.weight[0].numel())

    layers = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    with torch.no_grad():
        network(torch.zeros(batch, 4, 84, 84, dtype=torch.uint8))
    for hook in hooks:
        hook.remove()
    forward = sum(macs)
    backward = forward + (forward - macs[0])
    return 2.0 * (2 * forward + backward)


def matmul_peak(threads: int, repeats: int = 20) -> float:
    """This CPU's fp32 matrix-product rate in FLOP/s on ``threads`` threads (best of ``repeats``)."""
    torch.set_num_threads(threads)
    a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        torch.mm(a, b)
        best = min(best, time.process_time() - start)
    return 2 * 1024**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="timed agent steps (after learning starts)")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="fdl with trainer.compile=true")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="fdl's precision")
    parser.add_argument("--reference-precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument(
        "--reference-network",
        choices=["reference", "fdl"],
        default="reference",
        help="the reference loop's network: the issue-time copy above, or fdl's NatureQNetwork of today",
    )
    parser.add_argument(
        "--floor", action="store_true", help="also the ratio an update at this core's peak gives"
    )
    args = parser.parse_args()
    os.environ.setdefault("FDL_RUNS_DIR", tempfile.gettempdir())
    cpus = len(os.sched_getaffinity(0))
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "none"
    print(f"machine: {platform.machine()}, {cpus} CPUs, GPU {gpu}, torch {torch.__version__}")
    print(f"device {args.device}, {args.threads} thread(s), {args.steps} timed agent steps")
    print(f"precision: fdl {args.precision}, reference {args.reference_precision}")
    floor = None
    if args.floor and args.device == "cpu" and args.precision == "fp32":
        floor = update_flops(NatureQNetwork(4, 4), 32), matmul_peak(args.threads)
    fdl_cpu, fdl_wall = fdl_rate(
        args.steps, args.num_envs, args.device, args.threads, args.compile, args.precision
    )
    fdl_name = f"fdl        {args.num_envs} envs, {'compiled' if args.compile else 'eager'}, {args.precision}"
    print(f"{fdl_name}: {fdl_cpu:8.1f} agent steps/CPU s  ({fdl_wall:.1f}/wall s)")
    ref_cpu, ref_wall = reference_rate(
        args.steps, args.device, args.threads, args.reference_precision, args.reference_network
    )
    ref_name = f"reference  one env, eager, {args.reference_precision}, {args.reference_network} network"
    print(f"{ref_name}: {ref_cpu:8.1f} agent steps/CPU s  ({ref_wall:.1f}/wall s)")
    if floor:
        flops, peak = floor
        at_peak = flops / peak
        # fdl's updates in its loop (the first 10 hold warm-up), one per 4 agent steps; the rest is the rest
        update = float(np.median(TimedDQNTask.update_seconds[10:]))
        rest = 1 / fdl_cpu - update / 4
        print(
            f"floor: an update is {flops / 1e9:.2f} GFLOP; this core's fp32 matrix products run at"
            f" {peak / 1e9:.0f} GFLOP/s, so {at_peak * 1e3:.1f} ms at best; fdl's update takes"
            f" {update * 1e3:.1f} ms ({flops / update / 1e9:.0f} GFLOP/s), the rest of its agent step"
            f" {rest * 1e3:.2f} ms: an update at the peak would give ratio"
            f" {(1 / ref_cpu) / (rest + at_peak / 4):.2f}"
        )
    # CPU time is the fair measure on a shared CPU; on a GPU (asynchronous kernels) wall time is
    print(f"ratio {fdl_cpu / ref_cpu if args.device == 'cpu' else fdl_wall / ref_wall:.2f}")


if __name__ == "__main__":
    main()
