"""Chapter 9: A3C (Mnih et al. 2016) and its synchronous form A2C, one experiment (``trainer.mode``).

The algorithm (the paper's algorithm S3, advantage actor-critic): an actor-learner plays ``t_max`` steps
with its policy pi(a|s), computes n-step returns R_t = r_t + gamma r_{t+1} + ... + gamma^k V(s_{t+k}),
and descends  -log pi(a_t|s_t) (R_t - V(s_t))  +  value_coef (R_t - V(s_t))^2  -  entropy_coef H(pi(.|s_t))
(the advantage is a constant in the policy term; the entropy bonus keeps the policy from collapsing
early). One network with a policy head (action logits: what acts, and what ``fdl play`` takes the
arg-max of) and a value head on a shared body: an MLP (CartPole), the Nature DQN convolutional network
(Breakout, 84x84x4 frames, as in ``dqn-breakout``) or MinAtar's small one (10x10 grids, ``a3c-minatar``,
the baseline of ``unreal-minatar``).

``trainer.mode=a3c``, the paper: ``num_envs`` worker processes (torch.multiprocessing), each an
actor-learner with its own environment whose episodes are seeded from (seed, worker, episode). Before
each rollout a worker copies the shared parameters into its own network, computes its gradients there
and applies them to the shared parameters (Hogwild: shared memory, no locks) through an optimizer whose
statistics live in shared memory too (the paper's shared RMSProp; any ``optim``). The engine's loop
stays the owner of checkpoints, SIGTERM, evaluation and logging: one step of the loop lets every worker
make ``updates_per_step`` updates and collects their reports (losses, finished episodes) as they come;
between steps the workers wait, so evaluations and checkpoints see still weights and optimizer
statistics. A checkpoint holds them with the counters and each worker's sampling RNG and episode in
progress (its seed and actions so far, replayed on resume), so a resumed run continues from exactly the
state it stopped in. The interleaving of the workers' updates is up to the operating system's scheduler,
however, so an A3C run is not repeatable, interrupted or not (and a shared optimizer's step count may
lose increments to races, as Hogwild allows).

``trainer.mode=a2c``: the synchronous form (one learner, ``num_envs`` environments stepped together,
one update per ``t_max`` steps of all of them, through the loop's own update). Everything it depends on
is in the checkpoint, so on the CPU a resumed A2C run is exactly an uninterrupted one.

``optim.schedule`` (linear or cosine decay, warm-up): the learning rate is a function of the agent step.
A2C takes it from the loop at every update; the A3C workers get the rate of the loop step's first agent
step with each command to run, so it moves in steps of ``num_envs x t_max x updates_per_step`` agent
steps (1,000 for a3c-breakout) and a resumed run continues on the same rates.

Environments follow ``SeededEnvs``' next-step autoreset: the step after an episode ended is a reset step
(action ignored, reward 0) that takes no part in the loss; it lets a time-limit truncation bootstrap
from the value of the final observation while a termination does not bootstrap at all.
"""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.config import RunConfig
from fdlcli.engine.devices import autocast
from fdlcli.engine.optim import build_optimizer, scheduled_lr, set_lr
from fdlcli.engine.task import StepOutput
from fdlcli.errors import CheckpointError, ConfigError, FdlError
from fdlcli.experiments._rl import (
    NATURE_FEATURES,
    RLTask,
    RLTrainerConfig,
    SeededEnvs,
    grid_conv_layers,
    make_trainer_env,
    mlp_layers,
    nature_layers,
)
from fdlcli.experiments.dqn import QNetworkConfig
from fdlcli.registry import ExperimentSpec, register

MODES = ("a3c", "a2c")


@dataclass
class ActorCriticConfig(QNetworkConfig):
    """The body: ``network=mlp`` (``hidden`` widths), ``nature`` (Atari frames) or ``minatar`` (MinAtar's
    convolution, then ``hidden`` widths); a policy head and a value head sit on top of it.
    ``shared_body=false`` gives the value head a body of its own (on CartPole the value loss's large early
    gradients through a shared MLP body, and the clipping of their joint norm, slow the policy down)."""

    shared_body: bool = True
    NETWORKS: ClassVar[tuple[str, ...]] = ("mlp", "nature", "minatar")


@dataclass
class A3CTrainerConfig(RLTrainerConfig):
    mode: str = "a3c"  # a3c: asynchronous worker processes | a2c: one synchronous learner
    total_steps: int = 500_000  # agent steps, summed over the environments (Atari: 4 frames each)
    num_envs: int = 4  # a3c: worker processes, one environment each | a2c: environments stepped together
    t_max: int = 5  # steps per environment between updates (the n of the n-step returns)
    gamma: float = 0.99
    entropy_coef: float = 0.01
    value_coef: float = 0.5
    updates_per_step: int = 25  # a3c: updates of each worker per step of the loop (they pause between)
    frame_stack: int = 4  # Atari only
    clip_rewards: bool = False  # learn from sign(reward) (Atari)
    eval_every: int = 10_000  # agent steps between evaluations (each also writes a checkpoint)
    log_every: int = 100  # updates per logged window of losses, entropy and speed

    def check(self) -> str | None:
        if self.mode not in MODES:
            return f"trainer.mode={self.mode!r}; choose from: {', '.join(MODES)}"
        counts = (self.total_steps, self.num_envs, self.t_max, self.updates_per_step, self.frame_stack)
        if min(*counts, self.eval_every, self.log_every) <= 0:
            return "trainer step counts, sizes and intervals must be positive"
        if not 0 < self.gamma <= 1 or self.entropy_coef < 0 or self.value_coef < 0:
            return "trainer.gamma must lie in (0, 1] and entropy_coef, value_coef must not be negative"
        return super().check()


# --------------------------------------------------------------------------------------------------
# The network.


class ActorCritic(nn.Module):
    """Observations -> (action logits, state value) through one body; ``forward`` gives the logits alone
    (the greedy action is their arg-max: evaluation, ``fdl play``)."""

    def __init__(
        self,
        body: list[nn.Module],
        features: int,
        n_actions: int,
        pixels: bool,
        value_body: list[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.pixels = pixels  # uint8 frames are scaled to [0, 1]
        self.body = nn.Sequential(*body)
        # None: the value head shares the policy's body (the paper's networks)
        self.value_body = nn.Sequential(*value_body) if value_body is not None else None
        self.policy = nn.Linear(features, n_actions)
        self.value = nn.Linear(features, 1)
        with torch.no_grad():  # a near-uniform first policy: every action gets explored from the start
            self.policy.weight.mul_(0.01)
            self.policy.bias.zero_()

    def inputs(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float()
        return x / 255.0 if self.pixels else x

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.policy(self.body(self.inputs(obs)))

    def policy_and_value(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs(obs)
        hidden = self.body(x)
        value_hidden = hidden if self.value_body is None else self.value_body(x)
        return self.policy(hidden), self.value(value_hidden).squeeze(-1)


def build_actor_critic(config: RunConfig) -> ActorCritic:
    trainer: A3CTrainerConfig = config.trainer
    env = make_trainer_env(trainer)
    shape, n_actions = env.observation_space.shape, int(env.action_space.n)
    env.close()
    if config.model.network == "nature":
        if len(shape) != 3 or shape[1:] != (84, 84):
            raise ConfigError(f"model.network=nature needs 84x84 frame stacks, {trainer.env} gives {shape}")
        value_body = None if config.model.shared_body else nature_layers(shape[0])
        return ActorCritic(nature_layers(shape[0]), NATURE_FEATURES, n_actions, True, value_body)
    if config.model.network == "minatar":  # 0/1 grids: no scaling
        hidden = config.model.hidden

        def grid_body() -> tuple[list[nn.Module], int]:
            conv, n_features = grid_conv_layers(shape, trainer.env)
            return [*conv, *mlp_layers(n_features, hidden)], hidden[-1] if hidden else n_features

        body, features = grid_body()
        value_body = None if config.model.shared_body else grid_body()[0]
        return ActorCritic(body, features, n_actions, False, value_body)
    n_inputs, hidden = int(np.prod(shape)), config.model.hidden
    features = hidden[-1] if hidden else n_inputs
    value_body = None if config.model.shared_body else mlp_layers(n_inputs, hidden)
    return ActorCritic(mlp_layers(n_inputs, hidden), features, n_actions, False, value_body)


# --------------------------------------------------------------------------------------------------
# Acting and the loss (the same code in a worker process and in the A2C learner).


@dataclass
class Rollout:
    """``t_max`` steps of ``N`` environments (time-major, T x N) and what the loss needs of them."""

    logits: torch.Tensor  # T x N x actions, with their graph
    values: torch.Tensor  # T x N, with their graph
    actions: torch.Tensor
    rewards: torch.Tensor  # as learned from (clipped on Atari)
    terminated: torch.Tensor
    valid: torch.Tensor  # False for reset steps
    last_value: torch.Tensor  # N: V of the observations the rollout ended on (no graph)
    steps: int  # agent steps (valid entries)
    episodes: list[tuple[float, int]]  # (return, agent steps into the rollout) of each finished episode


class Actor:
    """``num_envs`` environments played by the policy, ``t_max`` steps at a time. Its episodes are
    seeded from (seed, environment, episode) and its actions sampled from its own RNG, seeded from
    (seed, first environment): both, with the episodes in progress, are its :meth:`state_dict`.

    A recurrent actor (``unreal.RecurrentActor``) overrides :meth:`policy_and_value` and
    :meth:`bootstrap_value` to carry its network's state, and :meth:`observed` to keep what it saw."""

    def __init__(
        self, trainer: A3CTrainerConfig, seed: int, num_envs: int, first_env: int, device: torch.device
    ) -> None:
        self.trainer, self.device = trainer, device
        self.envs = SeededEnvs(
            trainer.env, num_envs, seed, trainer.max_episode_steps, trainer.frame_stack,
            hide_velocity=trainer.hide_velocity, first_index=first_env,
        )  # fmt: skip
        stream = np.random.SeedSequence([seed, 7_919, first_env]).generate_state(1)[0]
        self.sampler = torch.Generator().manual_seed(int(stream))
        self.obs = self.envs.reset()
        self.episode_return = np.zeros(num_envs)

    def policy_and_value(self, net: nn.Module, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Action logits and values of the environments' current observations (with their graph)."""
        return net.policy_and_value(obs)

    def bootstrap_value(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        """V of the observations a rollout ended on (called without a graph)."""
        return net.policy_and_value(obs)[1]

    def observed(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        real: np.ndarray,
    ) -> None:
        """After each step: the observations acted on, the actions, the rewards as learned from, and
        which steps were real (not reset steps)."""

    def rollout(self, net: nn.Module) -> Rollout:
        trainer, envs = self.trainer, self.envs
        logits, values, actions, rewards, terminated, valid = [], [], [], [], [], []
        episodes: list[tuple[float, int]] = []
        steps = 0
        for _ in range(trainer.t_max):
            step_logits, value = self.policy_and_value(net, torch.as_tensor(self.obs, device=self.device))
            probs = F.softmax(step_logits.detach().float(), dim=-1).cpu()
            action = torch.multinomial(probs, 1, generator=self.sampler).squeeze(1)
            real = ~envs.ended  # the others take a reset step: no transition
            acted_on = self.obs
            self.obs, reward, term, trunc = envs.step(action.numpy())
            learned = np.sign(reward) if trainer.clip_rewards else reward
            self.observed(acted_on, action.numpy(), learned, term, real)
            self.episode_return += reward
            for i in range(envs.num_envs):
                steps += int(real[i])
                if real[i] and (term[i] or trunc[i]):
                    episodes.append((float(self.episode_return[i]), steps))
                    self.episode_return[i] = 0.0
            logits.append(step_logits)
            values.append(value)
            actions.append(action)
            rewards.append(torch.as_tensor(learned))
            terminated.append(torch.as_tensor(term))
            valid.append(torch.as_tensor(real))
        with torch.no_grad():
            last_value = self.bootstrap_value(net, torch.as_tensor(self.obs, device=self.device))
        device = self.device
        return Rollout(
            torch.stack(logits), torch.stack(values), torch.stack(actions).to(device),
            torch.stack(rewards).float().to(device), torch.stack(terminated).to(device),
            torch.stack(valid).to(device), last_value, steps, episodes,
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {
            "envs": self.envs.state_dict(self.obs),
            "sampler": self.sampler.get_state(),
            "episode_return": torch.from_numpy(self.episode_return.copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.obs = self.envs.load_state_dict(state["envs"])
        self.sampler.set_state(state["sampler"])
        self.episode_return = state["episode_return"].numpy().copy()

    def close(self) -> None:
        self.envs.close()


def n_step_returns(
    rewards: torch.Tensor,
    terminated: torch.Tensor,
    valid: torch.Tensor,
    values: torch.Tensor,
    last_value: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """R_t = r_t + gamma R_{t+1}, from R_T = V(s_T); no bootstrap past a termination. A reset step's R is
    the value of the final observation it starts from, so the step that ended its episode by a time
    limit (truncation) bootstraps from that value."""
    returns = torch.empty_like(rewards)
    running = last_value.float()
    for t in range(len(rewards) - 1, -1, -1):
        running = torch.where(valid[t], rewards[t] + gamma * (~terminated[t]) * running, values[t])
        returns[t] = running
    return returns


def actor_critic_loss(rollout: Rollout, trainer: A3CTrainerConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of a rollout and its parts (policy loss, value loss, entropy), means over real steps."""
    values = rollout.values.float()
    returns = n_step_returns(
        rollout.rewards, rollout.terminated, rollout.valid, values.detach(), rollout.last_value, trainer.gamma
    )
    log_probs = F.log_softmax(rollout.logits.float(), dim=-1)
    chosen = log_probs.gather(-1, rollout.actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    advantage = returns - values.detach()
    mask = rollout.valid.float()
    count = mask.sum().clamp(min=1.0)
    policy_loss = -(chosen * advantage * mask).sum() / count
    value_loss = ((returns - values).pow(2) * mask).sum() / count
    mean_entropy = (entropy * mask).sum() / count
    loss = policy_loss + trainer.value_coef * value_loss - trainer.entropy_coef * mean_entropy
    return loss, torch.stack([policy_loss, value_loss, mean_entropy]).detach()


# --------------------------------------------------------------------------------------------------
# A3C's worker processes.


def share_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Put the optimizer's statistics in shared memory (created first on a fresh optimizer: torch makes
    them at the first step), so that every worker's steps read and move the same ones."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not optimizer.state:  # a zero-gradient step creates the state; the weights are put back
        saved = [p.detach().clone() for p in params]
        for p in params:
            p.grad = torch.zeros_like(p)
        optimizer.step()
        with torch.no_grad():
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)
                p.grad = None
        for state in optimizer.state.values():  # as fresh: the zero gradient moved no statistic but "step"
            if torch.is_tensor(state.get("step")):
                state["step"].zero_()
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value):
                value.share_memory_()


def _state_bytes(state: dict[str, Any]) -> bytes:
    """A worker's state as torch.save bytes, read back with ``weights_only=True`` (never unpickled)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _worker_main(
    index: int,
    config: RunConfig,
    shared: ActorCritic,
    optimizer_state: list[dict[str, Any]],
    conn: Connection,
    stop: Any,
    saved_state: bytes | None,
    parent: int,
) -> None:
    """One A3C actor-learner: waits for the main process's commands and reports every update."""
    # Ctrl-C, `timeout` and Slurm signal the whole process group: the main process checkpoints and then
    # stops the workers itself (a worker whose main process was killed stops on its own: orphaned())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        worker = _Worker(index, config, shared, optimizer_state, conn, stop, parent)
        if saved_state is not None:
            worker.actor.load_state_dict(torch.load(io.BytesIO(saved_state), weights_only=True))
        worker.serve()
    except Exception:  # reported to the main process, which stops the run with it
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))


class _Worker:
    def __init__(
        self,
        index: int,
        config: RunConfig,
        shared: ActorCritic,
        optimizer_state: list[dict[str, Any]],
        conn: Connection,
        stop: Any,
        parent: int,
    ) -> None:
        self.trainer: A3CTrainerConfig = config.trainer
        self.precision = self.trainer.precision
        self.shared, self.conn, self.stop, self.parent = shared, conn, stop, parent
        self.local = build_actor_critic(config)  # theta': this worker's copy of the shared weights
        # the rate of each loop step comes with the command to run (``optim.schedule``)
        self.optimizer = build_optimizer(config.optim, shared.parameters(), scheduled=True)
        for param, state in zip(shared.parameters(), optimizer_state, strict=True):
            self.optimizer.state[param] = state  # the shared statistics themselves, not copies
        self.actor = Actor(self.trainer, config.seed, 1, index, torch.device("cpu"))

    def orphaned(self) -> bool:
        return os.getppid() != self.parent  # the main process is gone (killed): stop too

    def serve(self) -> None:
        while not self.stop.is_set() and not self.orphaned():
            if not self.conn.poll(0.5):
                continue
            command = self.conn.recv()
            if command[0] == "run":
                set_lr(self.optimizer, command[2])
                self.run(command[1])
                self.conn.send(("paused",))
            elif command[0] == "state":
                self.conn.send(("state", _state_bytes(self.actor.state_dict())))
            else:  # "stop"
                break
        self.actor.close()

    def run(self, updates: int) -> None:
        trainer, local, shared = self.trainer, self.local, self.shared
        for _ in range(updates):
            if self.stop.is_set() or self.orphaned():
                return
            local.load_state_dict(shared.state_dict())  # synchronize theta' = theta
            with autocast(torch.device("cpu"), self.precision):
                rollout = self.actor.rollout(local)
                loss, parts = actor_critic_loss(rollout, trainer)
            local.zero_grad(set_to_none=True)
            loss.backward()
            if trainer.grad_clip:
                nn.utils.clip_grad_norm_(local.parameters(), trainer.grad_clip)
            for shared_param, local_param in zip(shared.parameters(), local.parameters(), strict=True):
                shared_param.grad = local_param.grad
            self.optimizer.step()  # in place on the shared weights and statistics, without a lock
            self.conn.send(("update", float(loss.detach()), parts.tolist(), rollout.steps, rollout.episodes))


class WorkerPool:
    """The A3C actor-learners, started from the main process's (shared) network and optimizer."""

    def __init__(
        self, config: RunConfig, model: ActorCritic, optimizer: torch.optim.Optimizer, states: list[bytes]
    ) -> None:
        # fork where there is one (a worker starts in milliseconds instead of importing torch again);
        # the workers set their own signal handlers and threads and never touch the parent's other state
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        context = mp.get_context(method)
        model.share_memory()
        share_optimizer_state(optimizer)
        optimizer_state = [optimizer.state[p] for p in model.parameters()]
        self.stop = context.Event()
        self.conns: list[Connection] = []
        self.processes: list[Any] = []
        for index in range(config.trainer.num_envs):
            ours, theirs = context.Pipe()
            saved = states[index] if states else None
            process = context.Process(
                target=_worker_main, name=f"a3c-worker-{index}", daemon=True,
                args=(index, config, model, optimizer_state, theirs, self.stop, saved, os.getpid()),
            )  # fmt: skip
            process.start()
            theirs.close()
            self.conns.append(ours)
            self.processes.append(process)

    def _died(self, index: int) -> FdlError:
        process = self.processes[index]
        process.join(1.0)
        return FdlError(f"A3C worker {index} died (exit code {process.exitcode})")

    def _send(self, index: int, command: tuple) -> None:
        try:
            self.conns[index].send(command)
        except OSError:
            raise self._died(index) from None

    def _receive(self, index: int) -> tuple:
        """The next message of worker ``index``; a worker that failed or died stops the run."""
        try:
            message = self.conns[index].recv()
        except (EOFError, OSError):
            raise self._died(index) from None
        if message[0] == "error":
            last = message[1].strip().splitlines()[-1]
            raise FdlError(f"A3C worker {index} failed: {last}")
        return message

    def run(self, updates: int, lr: float, on_update: Callable[[tuple], None]) -> None:
        """Every worker makes ``updates`` updates at learning rate ``lr``; ``on_update(message)`` sees
        each report as it comes."""
        for index in range(len(self.conns)):
            self._send(index, ("run", updates, lr))
        running = set(range(len(self.conns)))
        while running:
            ready = wait([self.conns[i] for i in running], timeout=1.0)
            if not ready:  # nothing for a second: is every worker still there?
                for i in running:
                    if not self.processes[i].is_alive() and not self.conns[i].poll():
                        raise self._died(i)
                continue
            for conn in ready:
                index = self.conns.index(conn)
                message = self._receive(index)
                if message[0] == "paused":
                    running.discard(index)
                else:
                    on_update(message)

    def states(self) -> list[bytes]:
        """Each (paused) worker's actor state."""
        for index in range(len(self.conns)):
            self._send(index, ("state",))
        return [self._receive(index)[1] for index in range(len(self.conns))]

    def close(self) -> None:
        """Stop the workers: ask, wait a little, then terminate; no process outlives the pool."""
        self.stop.set()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        deadline = time.monotonic() + 5.0
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join()
        for conn in self.conns:
            conn.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


# --------------------------------------------------------------------------------------------------
# The task.


class ActorCriticTask(RLTask):
    """A3C or A2C in the engine's loop; the counter counts agent steps.

    a2c: a step is one rollout of every environment and the update the loop makes from its loss.
    a3c: a step is ``updates_per_step`` updates of every worker, reported to this process."""

    # bf16 autocast of the network (the workers run under it too); the lr schedule (A2C: the loop's; A3C:
    # the workers', set at each loop step); no compile: each A3C worker would compile its own copy
    supports = frozenset({"precision", "schedule", "checkpoint_every"})
    # the parts of the loss that each update reports (logged as train/<part>, means over the window)
    PARTS: ClassVar[tuple[str, ...]] = ("policy_loss", "value_loss", "entropy")

    @classmethod
    def check_config(cls, config: RunConfig) -> str | None:
        trainer = config.trainer
        if trainer.mode == "a3c" and trainer.device != "cpu":
            return (
                f"trainer.mode=a3c runs its workers on the CPU (Hogwild shared memory), not "
                f"trainer.device={trainer.device}: set trainer.device=cpu, or use trainer.mode=a2c"
            )
        return None

    @classmethod
    def build_network(cls, config: RunConfig) -> nn.Module:
        return build_actor_critic(config)

    def setup(self) -> None:
        super().setup()
        self.trainer: A3CTrainerConfig = self.config.trainer
        self.updates = 0
        self.epsilon = 0.0  # actions are sampled from the policy: no epsilon
        # the logging window: the parts of the loss (PARTS) summed over its updates
        self.window_parts = torch.zeros(len(self.PARTS), dtype=torch.float64)
        self.window_updates = 0
        self.window_closes = False
        self.clock = (time.monotonic(), 0)
        self.steps_done = 0
        # built when training starts (fdl eval/play need none): the A2C actor or the A3C workers
        self.actor: Actor | None = None
        self.pool: WorkerPool | None = None
        self.actor_state: dict[str, Any] | None = None  # a2c, from a checkpoint
        self.worker_states: list[bytes] = []  # a3c, from a checkpoint

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        trainer = self.trainer
        how = (
            f"{trainer.num_envs} worker processes, one environment each"
            if trainer.mode == "a3c"
            else f"{trainer.num_envs} environments stepped together"
        )
        return f"{trainer.env}, {trainer.mode.upper()}: {how}; actor-critic of {params:,} parameters"

    def total_steps(self) -> int:
        return self.trainer.total_steps

    def train_step(self, step: int, index: int) -> StepOutput:
        updates_before, every = self.updates, self.trainer.log_every
        out = self._a3c_step(step) if self.trainer.mode == "a3c" else self._a2c_step(step)
        self.window_closes = self.updates // every > updates_before // every
        self.steps_done = step + out.advance
        return out

    def make_actor(self) -> Actor:
        """The A2C actor: every environment, stepped in this process."""
        return Actor(self.trainer, self.config.seed, self.trainer.num_envs, 0, self.device)

    def a2c_loss(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of an A2C update and its PARTS (detached)."""
        return actor_critic_loss(rollout, self.trainer)

    def _a2c_step(self, step: int) -> StepOutput:
        if self.actor is None:
            self.actor = self.make_actor()
            if self.actor_state is not None:
                self.actor.load_state_dict(self.actor_state)
        model = self.train_model if self.train_model is not None else self.model
        rollout = self.actor.rollout(model)
        loss, parts = self.a2c_loss(rollout)
        self._record(step, rollout.steps, parts.cpu(), rollout.episodes)
        return StepOutput(loss=loss, advance=rollout.steps)

    def _a3c_step(self, step: int) -> StepOutput:
        trainer = self.trainer
        if self.pool is None:
            self.pool = WorkerPool(self.config, self.model, self.optimizer, self.worker_states)  # type: ignore[arg-type]
        per_update = trainer.num_envs * trainer.t_max
        updates = min(trainer.updates_per_step, math.ceil((trainer.total_steps - step) / per_update))
        # the loop sets the rate only where it makes the update (A2C); here the workers do, and the main
        # process's optimizer (whose statistics they share) shows it to train/lr
        lr = scheduled_lr(self.config.optim, step, trainer.total_steps)
        set_lr(self.optimizer, lr)  # type: ignore[arg-type]
        position, losses = step, []

        def on_update(message: tuple) -> None:
            nonlocal position
            _, loss, parts, steps, episodes = message
            losses.append(loss)
            self._record(position, steps, torch.tensor(parts), episodes)
            position += steps

        self.pool.run(max(1, updates), lr, on_update)
        return StepOutput(cost=float(np.sum(losses)), weight=float(len(losses)), advance=position - step)

    def _record(self, step: int, steps: int, parts: torch.Tensor, episodes: list[tuple[float, int]]) -> None:
        """One update's figures into the window, and its finished episodes at the agent step they ended."""
        self.updates += 1
        self.window_parts += parts.double()
        self.window_updates += 1
        for episode_return, offset in episodes:
            self.tracker.env_steps = step + offset
            self.episode_ended(episode_return, step=step + offset)
        self.tracker.env_steps = step + steps

    def log_due(self, step: int) -> bool:
        return self.window_closes  # every log_every updates

    def window_metrics(self, cost: float) -> dict[str, float]:
        now = time.monotonic()
        started, steps_then = self.clock
        parts = (self.window_parts / max(1, self.window_updates)).tolist()
        metrics = {
            **{f"train/{name}": value for name, value in zip(self.PARTS, parts, strict=True)},
            "train/return_avg": self.tracker.average,
            "train/steps_per_s": (self.steps_done - steps_then) / max(1e-9, now - started),
        }
        self.window_parts.zero_()
        self.window_updates, self.clock = 0, (now, self.steps_done)
        return metrics

    def after_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        tracker = self.tracker
        self.message(
            f"  {tracker.episodes} episodes, average training return {tracker.average:.1f} "
            f"(last {len(tracker.returns)}), {self.updates} updates"
        )

    # ---- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {
            **super().state_dict(),
            "updates": self.updates,
            "steps_done": self.steps_done,
            "window_parts": self.window_parts.clone(),
            "window_updates": self.window_updates,
        }
        if self.actor is not None:
            state["actor"] = self.actor.state_dict()
        if self.pool is not None:  # the workers wait between steps: their states are those of now
            self.worker_states = self.pool.states()
        if self.worker_states:
            state["workers"] = [
                torch.load(io.BytesIO(data), weights_only=True) for data in self.worker_states
            ]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.updates, self.steps_done = int(state["updates"]), int(state["steps_done"])
        self.window_parts.copy_(state["window_parts"])
        self.window_updates = int(state["window_updates"])
        self.clock = (time.monotonic(), self.steps_done)
        mode, workers = self.trainer.mode, state.get("workers")
        if ("actor" in state and mode == "a3c") or (workers and mode == "a2c"):
            raise CheckpointError(
                f"the checkpoint was written in the other mode than trainer.mode={mode}; resume with the "
                "trainer.mode the run was trained with"
            )
        self.actor_state = state.get("actor")
        if workers:
            if len(workers) != self.trainer.num_envs:
                raise CheckpointError(
                    f"the checkpoint holds {len(workers)} A3C workers, the config {self.trainer.num_envs}; "
                    f"resume with trainer.num_envs={len(workers)}"
                )
            self.worker_states = [_state_bytes(worker) for worker in workers]

    # ---- the end --------------------------------------------------------------------------------------

    def summary_fields(self) -> dict[str, Any]:
        return {"mode": self.trainer.mode, "updates": self.updates, **super().summary_fields()}

    def finish(self, artifacts: Path) -> dict[str, Any]:
        self.close()
        return {}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.actor is not None:
            self.actor.close()
            self.actor = None


_COMMON = dict(
    chapter=9,
    model_config=ActorCriticConfig,
    model_group="actor-critic",
    trainer_config=A3CTrainerConfig,
    task=ActorCriticTask,
)
register(
    ExperimentSpec(
        name="a3c-cartpole",
        dataset="CartPole-v1",
        book_result="(A3C is described, not run, in the book)",
        description="A3C: worker processes, shared RMSProp, n-step advantage actor-critic (trainer.mode=a2c)",
        **_COMMON,
    )
)
register(
    ExperimentSpec(
        name="a3c-breakout",
        dataset="ALE/Breakout-v5",
        book_result="(A3C is described, not run, in the book)",
        description="A3C from pixels: Nature conv net body, policy and value heads (trainer.mode=a2c)",
        **_COMMON,
    )
)
register(
    ExperimentSpec(
        name="a3c-minatar",
        dataset="MinAtar/Breakout-v1",
        book_result="(A3C is described, not run, in the book)",
        description="A2C/A3C on MinAtar's 10x10 Breakout: the baseline of unreal-minatar (trainer.mode=a3c)",
        **_COMMON,
    )
)
