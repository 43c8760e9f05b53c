"""Chapter 9: deep Q-learning, one code path for ``dqn-breakout`` (pixels) and ``dqn-cartpole`` (checks).

Book (TF 1.x): Breakout frames preprocessed to 84x84 grey, a stack of the last 4, the DQN convolutional
network (32 8x8/4, 64 4x4/2, 64 3x3/1, fc 512), a prediction and a periodically synced target network,
experience replay of 50,000 transitions, epsilon annealing, a clipped (Huber) error, Adam lr 1e-4, gamma
0.98, batch 32. The book shows an upward reward trend over 1,000 episodes; good play takes days.

What this module adds for speed on small machines: ``num_envs`` environments stepped together (one
batched forward per step), and a replay buffer that stores each 84x84 frame once (uint8) instead of four
times in stacked observations: an observation's stack is rebuilt at sampling time from the rows before
it, stopping at the episode's first frame exactly like ``FrameStackObservation(padding_type="reset")``.

Transitions under next-step autoreset (``SeededEnvs``): the step that ends an episode returns the final
observation; the next step of that environment is a reset step (action ignored, reward 0) returning the
new episode's first observation. The buffer stores every returned observation in its environment's
column, marks steps taken from a final observation as invalid, and bootstraps a truncated episode (a
time limit) from its final observation but a terminated one not at all.

One step of the engine's loop is one step of all environments with the 0..k updates it brings (one per
``train_every`` agent steps) and advances the counter by its real agent steps. Resume is exact: the
checkpoint holds both networks, the optimizer, the counters, the exploration RNG and the replay sampler's
state, the episodes in progress (each environment's episode seed and its actions so far, replayed on
resume) and, beside the newest checkpoint only, the replay buffer (``save_arrays``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.config import RunConfig
from fdlcli.engine.task import StepOutput
from fdlcli.errors import CheckpointError, ConfigError
from fdlcli.experiments._rl import (
    NATURE_FEATURES,
    RLTask,
    RLTrainerConfig,
    SeededEnvs,
    epsilon_greedy,
    is_atari,
    make_trainer_env,
    mlp_layers,
    nature_layers,
)
from fdlcli.registry import ExperimentSpec, register


@dataclass
class QNetworkConfig:
    network: str = "mlp"  # mlp (flat observations) | nature (the book's convolutional network, Atari)
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # mlp only
    NETWORKS: ClassVar[tuple[str, ...]] = ("mlp", "nature")

    def check(self) -> str | None:
        if self.network not in self.NETWORKS:
            return f"model.network={self.network!r}; choose from: {', '.join(self.NETWORKS)}"
        if any(width <= 0 for width in self.hidden):
            return f"model.hidden={self.hidden} must list positive layer widths"
        return None


@dataclass
class DQNTrainerConfig(RLTrainerConfig):
    total_steps: int = 100_000  # agent steps, summed over the environments (Atari: 4 frames each)
    num_envs: int = 4
    frame_stack: int = 4  # Atari: the DQN stack of frames; flat observations: stacked when > 1
    buffer_size: int = 50_000  # transitions
    batch_size: int = 32
    gamma: float = 0.98
    learning_starts: int = 1_000  # agent steps of experience before the first update
    train_every: int = 4  # agent steps per gradient update
    target_update_every: int = 1_000  # agent steps between copies of the online network into the target
    target_tau: float = 1.0  # 1: copy (the book); < 1: move the target this far towards the online net
    epsilon_start: float = 1.0
    epsilon_end: float = 0.1
    epsilon_anneal_steps: int = 100_000  # linear, in agent steps
    double: bool = False  # Double DQN targets (not in the book)
    clip_rewards: bool = False  # learn from sign(reward), as the DQN papers do on Atari
    eval_every: int = 10_000  # agent steps between evaluations (each also writes a checkpoint)
    log_every: int = 500  # updates per logged window of loss, Q-values and speeds

    def check(self) -> str | None:
        positive = (
            self.total_steps, self.num_envs, self.frame_stack, self.buffer_size, self.batch_size,
            self.train_every, self.target_update_every, self.epsilon_anneal_steps, self.eval_every,
        )  # fmt: skip
        if min(positive) <= 0:
            return "trainer step counts, sizes and intervals must be positive"
        if self.buffer_size < 2 * self.num_envs * self.frame_stack or self.learning_starts < 0:
            return "trainer.buffer_size is too small for num_envs and frame_stack"
        if not 0 < self.target_tau <= 1:
            return f"trainer.target_tau={self.target_tau} must lie in (0, 1]"
        if not (0 <= self.epsilon_end <= 1 and 0 <= self.epsilon_start <= 1 and 0 < self.gamma <= 1):
            return "trainer.epsilon_start/epsilon_end must lie in [0, 1] and gamma in (0, 1]"
        return super().check()

    def epsilon(self, step: int) -> float:
        fraction = min(1.0, step / self.epsilon_anneal_steps)
        return self.epsilon_start + fraction * (self.epsilon_end - self.epsilon_start)


# --------------------------------------------------------------------------------------------------
# Networks.


class NatureQNetwork(nn.Module):
    """The book's (and the Nature DQN paper's) network for a stack of 84x84 frames (uint8 in)."""

    def __init__(self, frames: int, n_actions: int) -> None:
        super().__init__()
        self.net = nn.Sequential(*nature_layers(frames), nn.Linear(NATURE_FEATURES, n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # channels-last frames take oneDNN's faster convolutions on CPU (the update ~20% cheaper, measured);
        # the weights keep their layout, so checkpoints do not change
        return self.net(obs.contiguous(memory_format=torch.channels_last).float() / 255.0)


class MLPQNetwork(nn.Sequential):
    def __init__(self, n_inputs: int, hidden: list[int], n_actions: int) -> None:
        widths = [n_inputs, *hidden]
        super().__init__(*mlp_layers(n_inputs, hidden), nn.Linear(widths[-1], n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs.float().flatten(1))  # a stack of observations: one vector


class DQNAgent(nn.Module):
    """The online network (what acts: ``forward``) and its target copy, saved together."""

    def __init__(self, online: nn.Module, target: nn.Module) -> None:
        super().__init__()
        self.online, self.target = online, target
        self.sync_target()
        self.target.requires_grad_(False)

    @torch.no_grad()
    def sync_target(self, tau: float = 1.0) -> None:
        """Copy the online weights into the target (tau 1), or move the target a fraction tau towards them."""
        for target, online in zip(self.target.parameters(), self.online.parameters(), strict=True):
            target.lerp_(online, tau)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.online(obs)


def build_agent(config: RunConfig) -> DQNAgent:
    trainer: DQNTrainerConfig = config.trainer
    env = make_trainer_env(trainer)
    shape, n_actions = env.observation_space.shape, int(env.action_space.n)
    env.close()

    def network() -> nn.Module:
        if config.model.network == "nature":
            if len(shape) != 3 or shape[1:] != (84, 84):
                raise ConfigError(
                    f"model.network=nature needs 84x84 frame stacks, {trainer.env} gives {shape}"
                )
            return NatureQNetwork(shape[0], n_actions)
        return MLPQNetwork(int(np.prod(shape)), config.model.hidden, n_actions)

    return DQNAgent(network(), network())


# --------------------------------------------------------------------------------------------------
# Replay memory.


class ReplayBuffer:
    """Transitions of ``num_envs`` environments, time-major (row = time, column = environment).

    Row r of column e holds the observation the environment returned at that time (for frame stacks:
    its newest frame only), the action taken from it, the reward and ``terminated`` flag of that step,
    the number of steps since its episode began, and whether that step was a real one. Row r + 1 holds
    the next observation, so nothing is stored twice.
    """

    def __init__(
        self, capacity: int, num_envs: int, frame_shape: tuple[int, ...], dtype: torch.dtype, stack: int
    ) -> None:
        self.rows, self.num_envs, self.stack = capacity // num_envs, num_envs, stack
        self.frames = torch.zeros((self.rows, num_envs, *frame_shape), dtype=dtype)
        self.actions = torch.zeros((self.rows, num_envs), dtype=torch.int64)
        self.rewards = torch.zeros((self.rows, num_envs), dtype=torch.float32)
        self.terminated = torch.zeros((self.rows, num_envs), dtype=torch.bool)
        self.valid = torch.zeros((self.rows, num_envs), dtype=torch.bool)
        self.since_start = torch.zeros((self.rows, num_envs), dtype=torch.int64)
        self.row, self.full = 0, False

    def __len__(self) -> int:
        return (self.rows if self.full else self.row) * self.num_envs

    def add(
        self,
        frames: np.ndarray,
        since_start: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        valid: np.ndarray,
    ) -> None:
        r = self.row
        self.frames[r] = torch.from_numpy(np.asarray(frames))
        self.since_start[r] = torch.from_numpy(since_start)
        self.actions[r] = torch.from_numpy(actions)
        self.rewards[r] = torch.from_numpy(rewards.astype(np.float32))
        self.terminated[r] = torch.from_numpy(terminated)
        self.valid[r] = torch.from_numpy(valid)
        self.row = (r + 1) % self.rows
        self.full = self.full or self.row == 0

    FIELDS = ("frames", "actions", "rewards", "terminated", "valid", "since_start")

    def arrays(self) -> dict[str, np.ndarray]:
        """The filled rows and the write position, for the checkpoint (``Task.save_arrays``)."""
        filled = self.rows if self.full else self.row
        arrays = {name: getattr(self, name)[:filled].numpy() for name in self.FIELDS}
        return {**arrays, "row": np.array(self.row), "full": np.array(self.full)}

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        """Take back :meth:`arrays`."""
        row, full = int(arrays.get("row", -1)), bool(arrays.get("full", False))
        filled = self.rows if full else row
        for name in self.FIELDS:
            stored, array = getattr(self, name), arrays.get(name)
            if array is None or not 0 <= row < self.rows or array.shape != (filled, *stored.shape[1:]):
                raise CheckpointError(
                    f"the checkpoint's replay buffer ({name}) does not fit this config; resume with the "
                    "trainer.buffer_size, num_envs and env the run was trained with"
                )
            stored[:filled] = torch.from_numpy(array)
        self.row, self.full = row, full

    def observations(self, rows: torch.Tensor, envs: torch.Tensor, extra: int = 0) -> torch.Tensor:
        """The (stacked) observations at (rows, envs); a stack never reaches into the previous episode.
        ``extra`` more frames follow each stack (the rows after it, same episode)."""
        if self.stack == 1 and not extra:
            return self.frames[rows, envs]
        # the index arithmetic and the gather in numpy, on views of the same memory: numpy copies each
        # 84x84 frame as one block where torch's index kernel goes element by element (measured ~4x faster)
        rows_np, envs_np = rows.numpy(), envs.numpy()
        # oldest frame first, as FrameStackObservation orders; then the frames after
        back = np.arange(self.stack - 1, -extra - 1, -1)
        offsets = np.minimum(back[None, :], self.since_start.numpy()[rows_np, envs_np][:, None])
        frames = self.frames.numpy()[(rows_np[:, None] - offsets) % self.rows, envs_np[:, None]]
        return torch.from_numpy(frames)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Uniform over the valid transitions whose next observation and frame history are stored."""
        filled = self.rows if self.full else self.row
        oldest = self.row if self.full else 0
        # when the buffer has wrapped, the oldest stack-1 rows' histories are already overwritten; the
        # newest row has no next observation yet
        low = self.stack - 1 if self.full else 0
        rows_list, envs_list, found = [], [], 0
        while found < batch_size:
            offsets = torch.randint(low, filled - 1, (2 * batch_size,), generator=generator)
            rows = (oldest + offsets) % self.rows
            envs = torch.randint(0, self.num_envs, (2 * batch_size,), generator=generator)
            keep = self.valid[rows, envs]
            rows_list.append(rows[keep])
            envs_list.append(envs[keep])
            found += int(keep.sum())
        rows = torch.cat(rows_list)[:batch_size]
        envs = torch.cat(envs_list)[:batch_size]
        transitions = (self.actions[rows, envs], self.rewards[rows, envs], self.terminated[rows, envs])
        if self.stack == 1:
            return self.frames[rows, envs], *transitions, self.frames[(rows + 1) % self.rows, envs]
        # a valid step stays in its episode, so the next stack is this one shifted by the next frame:
        # one gather of stack + 1 frames serves both
        frames = self.observations(rows, envs, extra=1)
        return frames[:, :-1], *transitions, frames[:, 1:]


def newest_frames(obs: np.ndarray, stacked: bool) -> np.ndarray:
    return obs[:, -1] if stacked else obs


# --------------------------------------------------------------------------------------------------
# Learning.


def td_loss(
    agent: DQNAgent, batch: tuple[torch.Tensor, ...], gamma: float, double: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Huber loss between Q(s, a) and r + gamma max_a' Q_target(s', a') (no bootstrap past termination)."""
    obs, actions, rewards, terminated, next_obs = batch
    with torch.no_grad():
        next_q = agent.target(next_obs)
        if double:  # the online network picks the action, the target network values it
            best = agent.online(next_obs).argmax(dim=1, keepdim=True)
            next_value = next_q.gather(1, best).squeeze(1)
        else:
            next_value = next_q.max(dim=1).values
        target = rewards + gamma * (~terminated).float() * next_value
    q = agent.online(obs).gather(1, actions.unsqueeze(1)).squeeze(1)
    return F.smooth_l1_loss(q, target), q.detach().mean()


class DQNTask(RLTask):
    """DQN in the engine's loop: a step is one step of every environment and the updates it brings."""

    fused_optimizer = True  # one update per 4 agent steps: the optimizer's per-parameter overhead shows
    recurrent = False  # DRQN: the acting network carries a state, so it must see every observation

    @classmethod
    def build_network(cls, config: RunConfig) -> nn.Module:
        return build_agent(config)

    def trained_parameters(self) -> Any:
        return self.model.online.parameters()

    def setup(self) -> None:
        super().setup()
        trainer: DQNTrainerConfig = self.config.trainer
        self.trainer = trainer
        self.stacked = is_atari(trainer.env) or trainer.frame_stack > 1  # observations with a stack axis
        self.updates = 0
        self.loss_fn = td_loss  # compiled by trainer.compile=true (compile)
        self.steps_done = 0  # the loop's counter after the latest step (agent steps)
        # exploration and replay sampling: their own RNG streams, carried by the checkpoint
        self.rng = np.random.default_rng([self.config.seed, 0])
        self.sampler = torch.Generator().manual_seed(self.config.seed * 1_000_003)
        # the logging window (updates since train/cost was last logged) and the speed clocks
        self.window_q = torch.zeros((), dtype=torch.float64, device=self.device)
        self.window_updates = 0
        self.window_closes = False
        self.clock = (time.monotonic(), time.process_time(), 0)
        # the environments and the replay buffer: built when training starts (fdl eval/play need neither)
        self.envs: SeededEnvs | None = None
        self.buffer: ReplayBuffer | None = None
        self.buffer_missing = False  # resumed from a checkpoint whose replay buffer did not load

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.online.parameters())
        return f"{self.trainer.env}: {self.trainer.num_envs} environments, Q-network of {params:,} parameters"

    def compile(self) -> None:
        # one graph for the whole TD loss (the frames' conversion, both networks' forwards, the max and the
        # Huber loss; AOTAutograd compiles its backward too): ~8% off a CPU update of batch 32, where
        # compiling the two networks alone took ~5% off (measured, 1 thread). Acting stays eager: its batch
        # is the few environments that act greedily, a different size every step.
        self.loss_fn = torch.compile(td_loss)

    def total_steps(self) -> int:
        return self.trainer.total_steps

    def _start(self, state: dict[str, Any] | None = None) -> None:
        """Build the environments and the (empty) replay buffer; start the first episodes, or with
        ``state`` replay the episodes in progress of a checkpoint."""
        trainer = self.trainer
        self.envs = SeededEnvs(
            trainer.env, trainer.num_envs, self.config.seed, trainer.max_episode_steps, trainer.frame_stack,
            trainer.hide_velocity,
        )  # fmt: skip
        self.n_actions = int(self.envs.single_action_space.n)
        space = self.envs.single_observation_space
        frame_shape = space.shape[1:] if self.stacked else space.shape
        dtype = torch.uint8 if space.dtype == np.uint8 else torch.float32
        stack = trainer.frame_stack if self.stacked else 1
        self.buffer = ReplayBuffer(trainer.buffer_size, trainer.num_envs, frame_shape, dtype, stack)
        if state is None:
            self.obs = self.envs.reset()
            self.since_start = np.zeros(trainer.num_envs, dtype=np.int64)
            self.episode_return = np.zeros(trainer.num_envs)
        else:
            self.obs = self.envs.load_state_dict(state["envs"])
            self.since_start = state["since_start"].numpy().copy()
            self.episode_return = state["episode_return"].numpy().copy()
        self.clock = (time.monotonic(), time.process_time(), self.steps_done)

    def train_step(self, step: int, index: int) -> StepOutput:
        if self.envs is None:
            self._start()
        if self.buffer_missing:
            raise CheckpointError("the checkpoint this run resumes from has no replay buffer (arrays.npz)")
        assert self.envs is not None and self.buffer is not None
        trainer, tracker = self.trainer, self.tracker
        self.epsilon = epsilon = trainer.epsilon(step)

        chosen: torch.Tensor | Callable[[np.ndarray], torch.Tensor]
        if self.recurrent:  # a recurrent network sees every observation, to carry its state
            with torch.inference_mode():
                chosen = self.act_values(self.obs).argmax(dim=1)
        else:  # a feed-forward one runs only when some environment acts greedily, on those alone
            chosen = self.greedy_actions
        actions = epsilon_greedy(chosen, epsilon, self.n_actions, self.rng, count=trainer.num_envs)
        final = self.envs.ended.copy()  # these environments' step is a reset step: no transition
        next_obs, reward, terminated, truncated = self.envs.step(actions)
        real = ~final
        learn_reward = np.sign(reward) if trainer.clip_rewards else reward
        frames = newest_frames(self.obs, self.stacked)
        self.buffer.add(frames, self.since_start, actions, learn_reward, terminated, real)
        after = step + int(real.sum())
        tracker.env_steps = after
        self.episode_return += reward * real
        for i in np.flatnonzero((terminated | truncated) & real):
            self.episode_ended(float(self.episode_return[i]), step=after)
            self.episode_return[i] = 0.0
        self.since_start = np.where(final, 0, self.since_start + 1)
        self.obs = next_obs

        # ---- learning: one update per train_every agent steps, once enough experience is stored ----
        losses = []
        if after >= trainer.learning_starts:
            for _ in range(after // trainer.train_every - step // trainer.train_every):
                losses.append(self.update())
        if after // trainer.target_update_every > step // trainer.target_update_every:
            self.model.sync_target(trainer.target_tau)
        before_updates = self.updates - len(losses)
        self.window_closes = self.updates // trainer.log_every > before_updates // trainer.log_every
        self.steps_done = after
        cost = torch.stack(losses).sum() if losses else None
        return StepOutput(cost=cost, weight=float(len(losses)), advance=after - step)

    @torch.inference_mode()
    def greedy_actions(self, acting: np.ndarray) -> torch.Tensor:
        """The greedy actions of the environments in the mask ``acting``: one batched forward on their
        observations only (while epsilon is near 1, one or two of them: the reference loop's cost)."""
        return self.act_values(self.obs[acting]).argmax(dim=1)

    @torch.no_grad()
    def act_values(self, obs: np.ndarray) -> torch.Tensor:
        """The online network's Q-values of the environments' current observations (what they act on)."""
        return self.model(torch.as_tensor(obs, device=self.device))

    def sampled_loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The TD loss of a minibatch sampled from the replay buffer, and its mean Q(s, a)."""
        assert self.buffer is not None
        trainer = self.trainer
        batch = [t.to(self.device) for t in self.buffer.sample(trainer.batch_size, self.sampler)]
        return self.loss_fn(self.model, batch, trainer.gamma, trainer.double)

    def update(self) -> torch.Tensor:
        """One gradient step on a sampled minibatch; returns its (detached) loss."""
        trainer, agent = self.trainer, self.model
        loss, q_mean = self.sampled_loss()  # under the loop's autocast
        with torch.autocast(self.device.type, enabled=False):  # backward and step in full precision
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if trainer.grad_clip:
                nn.utils.clip_grad_norm_(agent.online.parameters(), trainer.grad_clip)
            self.optimizer.step()
        self.updates += 1
        self.window_q += q_mean.double()
        self.window_updates += 1
        return loss.detach().float()

    def log_due(self, step: int) -> bool:
        return self.window_closes  # every log_every updates

    def window_metrics(self, cost: float) -> dict[str, float]:
        now, cpu_now, _ = clock = (time.monotonic(), time.process_time(), self.steps_done)
        started, cpu_started, steps_then = self.clock
        steps = self.steps_done - steps_then
        metrics = {
            "train/q_mean": self.window_q.item() / max(1, self.window_updates),
            "train/epsilon": self.epsilon,
            "train/return_avg": self.tracker.average,
            "train/steps_per_s": steps / max(1e-9, now - started),
            # per CPU second too: the figure that stays meaningful on a shared, loaded machine
            "train/steps_per_cpu_s": steps / max(1e-9, cpu_now - cpu_started),
        }
        self.window_q.zero_()
        self.window_updates, self.clock = 0, clock
        return metrics

    # ---- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {
            **super().state_dict(),
            "updates": self.updates,
            "steps_done": self.steps_done,
            "rng": self.rng.bit_generator.state,
            "sampler": self.sampler.get_state(),
            "window_q": self.window_q.item(),
            "window_updates": self.window_updates,
        }
        if self.envs is not None:  # the episodes in progress
            state.update(
                envs=self.envs.state_dict(self.obs),
                since_start=torch.from_numpy(self.since_start.copy()),
                episode_return=torch.from_numpy(self.episode_return.copy()),
            )
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.updates, self.steps_done = int(state["updates"]), int(state["steps_done"])
        self.rng.bit_generator.state = state["rng"]
        self.sampler.set_state(state["sampler"])
        self.window_q.fill_(float(state["window_q"]))
        self.window_updates = int(state["window_updates"])
        if "envs" in state:  # saved after the first step: the replay buffer (load_arrays) comes too
            self._start(state)
            self.buffer_missing = True

    def save_arrays(self) -> dict[str, np.ndarray]:
        return self.buffer.arrays() if self.buffer is not None else {}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        if self.buffer is None:
            raise CheckpointError("the checkpoint holds a replay buffer but no environment state")
        self.buffer.load(arrays)
        self.buffer_missing = False

    # ---- the end --------------------------------------------------------------------------------------

    def summary_fields(self) -> dict[str, Any]:
        return {"updates": self.updates, **super().summary_fields()}

    def finish(self, artifacts: Path) -> dict[str, Any]:
        if self.envs is not None:
            self.envs.close()
        return {}


_COMMON = dict(chapter=9, model_config=QNetworkConfig, trainer_config=DQNTrainerConfig, task=DQNTask)
register(
    ExperimentSpec(
        name="dqn-breakout",
        dataset="ALE/Breakout-v5",
        book_result="upward reward trend over 1,000 episodes",
        description="DQN from pixels: Nature conv net, replay, target network, Huber loss. Measured on 2 CPU "
        "cores (AVX-512), bf16: 1M agent steps in ~2 h, greedy score 61.8 (docs/RESULTS.md)",
        **_COMMON,
    )
)
register(
    ExperimentSpec(
        name="dqn-cartpole",
        dataset="CartPole-v1",
        book_result="(not in the book: a quick check of the DQN code)",
        description="the dqn-breakout code path on CartPole, MLP Q-network",
        **_COMMON,
    )
)
