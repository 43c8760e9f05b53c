"""Chapter 9: deep recurrent Q-learning (Hausknecht & Stone 2015) on a partially observable CartPole.

``drqn-cartpole`` sees CartPole's cart position and pole angle only (``trainer.hide_velocity=true``): one
observation does not tell where the pole is going, so a DQN that acts on one observation cannot balance it
for long; a stack of the last observations (``dqn-cartpole trainer.frame_stack=4``) puts the velocities
back within reach of a feed-forward network; DRQN remembers them in an LSTM. (The paper made Atari
partially observable by flickering its frames; this is the same test on a problem a CPU learns in minutes.)

The network: observation -> ``model.hidden`` ReLU layers -> an LSTM cell of ``model.lstm`` units -> one
Q-value per action. Acting carries each environment's LSTM state from step to step and zeroes it when an
episode starts; evaluation and ``fdl play`` do the same (``_rl.play_episodes``).

Learning (everything else is DQN's, ``dqn.DQNTask``: environments, replay storage, target network, Double
DQN, epsilon, logging, exact resume): the paper's *bootstrapped random updates*. A minibatch is
``batch_size`` windows of ``burn_in + sequence_length + 1`` consecutive steps of one environment, sampled
uniformly from the replay buffer (which keeps every environment's steps in time order, so its episodes are
the paper's episode replay). Each window is unrolled from a zero state, as the paper does; the state is
zeroed again wherever an episode starts inside it (then it is exactly the state acting had). The TD errors
of the first ``burn_in`` steps are left out where the zero state is not the true one (the window began
mid-episode): R2D2's burn-in (Kapturowski et al. 2019), with a zero start instead of a stored state.
Why: the hidden velocities are a function of the last two observations, so a few steps of burn-in
recover the state that matters, without storing LSTM states in the replay (which would be stale ones
computed by older weights) and without biasing the first steps' targets.

Exact resume: DQN's checkpoint (networks, optimizer, RNG streams, the episodes in progress replayed, the
replay buffer beside the newest checkpoint) and each environment's LSTM state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.config import RunConfig
from fdlcli.errors import CheckpointError
from fdlcli.experiments._rl import make_trainer_env
from fdlcli.experiments.dqn import DQNAgent, DQNTask, DQNTrainerConfig, ReplayBuffer
from fdlcli.registry import ExperimentSpec, register

State = tuple[torch.Tensor, torch.Tensor]  # an LSTM cell's (h, c)


@dataclass
class RecurrentQNetworkConfig:
    hidden: list[int] = field(default_factory=lambda: [64])  # ReLU layers before the LSTM
    lstm: int = 64  # LSTM units

    def check(self) -> str | None:
        if any(width <= 0 for width in self.hidden) or self.lstm <= 0:
            return f"model.hidden={self.hidden} and model.lstm={self.lstm} must be positive widths"
        return None


@dataclass
class DRQNTrainerConfig(DQNTrainerConfig):
    sequence_length: int = 8  # steps of a window whose TD errors are learned from
    burn_in: int = 4  # steps before them that only rebuild the LSTM state (window begun mid-episode)

    def check(self) -> str | None:
        if self.sequence_length <= 0 or self.burn_in < 0:
            return "trainer.sequence_length must be positive and trainer.burn_in not negative"
        if self.buffer_size // self.num_envs < 2 * self.window:
            return "trainer.buffer_size is too small for num_envs, burn_in and sequence_length"
        if self.learning_starts < self.num_envs * self.window:  # a window needs that many stored rows
            return (
                f"trainer.learning_starts must be at least num_envs x (burn_in + sequence_length + 1) = "
                f"{self.num_envs * self.window} agent steps"
            )
        return super().check()

    @property
    def window(self) -> int:
        """Steps per sampled window: burn-in, the learned steps, and the last one's next observation."""
        return self.burn_in + self.sequence_length + 1


class RecurrentQNetwork(nn.Module):
    """Observation -> ReLU layers -> LSTM cell -> Q-values; one step at a time, or unrolled over windows."""

    def __init__(self, n_inputs: int, hidden: list[int], lstm: int, n_actions: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_inputs, width), nn.ReLU()]
            n_inputs = width
        self.encoder = nn.Sequential(*layers)
        self.cell = nn.LSTMCell(n_inputs, lstm)
        self.head = nn.Linear(lstm, n_actions)

    def initial_state(self, batch: int) -> State:
        zeros = torch.zeros(batch, self.cell.hidden_size, device=self.head.weight.device)
        return zeros, zeros.clone()

    def step(self, obs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Q-values of a batch of observations and the state after them."""
        h, c = self.cell(self.encoder(obs.float().flatten(1)), state)
        return self.head(h), (h.float(), c.float())  # the state stays fp32 under autocast

    def forward(self, obs: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """Unroll over windows ``obs`` (batch x time x ...) from a zero state, zeroed again before each step
        that ``starts`` (batch x time) marks as an episode's first; Q-values batch x time x actions."""
        state = self.initial_state(len(obs))
        values = []
        for t in range(obs.shape[1]):
            keep = (~starts[:, t]).float()[:, None]
            q, state = self.step(obs[:, t], (state[0] * keep, state[1] * keep))
            values.append(q)
        return torch.stack(values, dim=1)


class DRQNAgent(DQNAgent):
    """DQN's online and target pair, with the recurrent network's stepwise interface for acting."""

    def initial_state(self, batch: int) -> State:
        return self.online.initial_state(batch)

    def step(self, obs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        return self.online.step(obs, state)


def build_recurrent_agent(config: RunConfig) -> DRQNAgent:
    env = make_trainer_env(config.trainer)
    n_inputs, n_actions = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
    env.close()

    def network() -> RecurrentQNetwork:
        return RecurrentQNetwork(n_inputs, config.model.hidden, config.model.lstm, n_actions)

    return DRQNAgent(network(), network())


def sample_windows(
    buffer: ReplayBuffer, batch_size: int, length: int, generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """``batch_size`` windows of ``length`` consecutive stored steps of one environment each, uniform over
    the stored history (oldest row to newest; the newest step's next observation is not stored yet, so it
    can only be a window's last). Returns (observations, actions, rewards, terminated, valid, since_start),
    each batch x time (x observation)."""
    filled = buffer.rows if buffer.full else buffer.row
    oldest = buffer.row if buffer.full else 0
    low = buffer.stack - 1 if buffer.full else 0  # the oldest rows' frame histories are overwritten
    starts = torch.randint(low, filled - length + 1, (batch_size,), generator=generator)
    envs = torch.randint(0, buffer.num_envs, (batch_size,), generator=generator)
    rows = (oldest + starts[:, None] + torch.arange(length)) % buffer.rows  # batch x time
    columns = envs[:, None].expand(-1, length)
    obs = buffer.observations(rows.flatten(), columns.flatten())
    return (
        obs.reshape(batch_size, length, *obs.shape[1:]),
        buffer.actions[rows, columns],
        buffer.rewards[rows, columns],
        buffer.terminated[rows, columns],
        buffer.valid[rows, columns],
        buffer.since_start[rows, columns],
    )


def sequence_td_loss(
    agent: DQNAgent, windows: tuple[torch.Tensor, ...], gamma: float, double: bool, burn_in: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Huber loss of Q(s_t, a_t) against r_t + gamma max_a Q_target(s_t+1, a) along windows (both networks
    unrolled over the whole window), over the learned steps: real steps (no reset steps) whose LSTM state
    is the one acting had (the episode began inside the window) or was rebuilt by ``burn_in`` steps."""
    obs, actions, rewards, terminated, valid, since_start = windows
    starts = since_start == 0
    position = torch.arange(obs.shape[1], device=obs.device)
    learned = valid & ((since_start <= position) | (position >= burn_in))
    learned = learned[:, :-1]  # the last step is only the previous one's next observation
    q_all = agent.online(obs, starts)
    with torch.no_grad():
        next_q = agent.target(obs, starts)[:, 1:]
        if double:  # the online network picks the action, the target network values it
            best = q_all[:, 1:].detach().argmax(dim=2, keepdim=True)
            next_value = next_q.gather(2, best).squeeze(2)
        else:
            next_value = next_q.max(dim=2).values
        target = rewards[:, :-1] + gamma * (~terminated[:, :-1]).float() * next_value
    q = q_all[:, :-1].gather(2, actions[:, :-1].unsqueeze(2)).squeeze(2)
    weights = learned.float()
    count = weights.sum().clamp(min=1.0)
    loss = (F.smooth_l1_loss(q.float(), target.float(), reduction="none") * weights).sum() / count
    return loss, ((q.detach().float() * weights).sum() / count)


class DRQNTask(DQNTask):
    """DQN's task with a recurrent Q-network: acting carries LSTM states, updates learn from windows."""

    # no torch.compile: acting steps the LSTM cell one observation at a time, learning unrolls it in Python
    supports = frozenset({"precision", "checkpoint_every"})
    recurrent = True

    @classmethod
    def build_network(cls, config: RunConfig) -> nn.Module:
        return build_recurrent_agent(config)

    def setup(self) -> None:
        super().setup()
        self.hidden: State | None = None  # each environment's LSTM state, built with the environments

    def describe(self) -> str:
        return f"{super().describe()}, windows of {self.trainer.burn_in}+{self.trainer.sequence_length} steps"

    def _start(self, state: dict[str, Any] | None = None) -> None:
        super()._start(state)
        self.hidden = self.model.initial_state(self.trainer.num_envs)
        if state is not None:
            self.hidden = (state["hidden_h"].to(self.device), state["hidden_c"].to(self.device))

    @torch.no_grad()
    def act_values(self, obs: np.ndarray) -> torch.Tensor:
        assert self.hidden is not None
        keep = torch.as_tensor(self.since_start != 0, device=self.device).float()[:, None]  # new episodes
        q, self.hidden = self.model.step(
            torch.as_tensor(obs, device=self.device), (self.hidden[0] * keep, self.hidden[1] * keep)
        )
        return q

    def sampled_loss(self) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.buffer is not None
        trainer = self.trainer
        windows = sample_windows(self.buffer, trainer.batch_size, trainer.window, self.sampler)
        windows = tuple(t.to(self.device) for t in windows)
        return sequence_td_loss(self.model, windows, trainer.gamma, trainer.double, trainer.burn_in)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.hidden is not None and "envs" in state:
            state.update(hidden_h=self.hidden[0].cpu(), hidden_c=self.hidden[1].cpu())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "envs" in state and "hidden_h" not in state:
            raise CheckpointError("the checkpoint holds no LSTM states of the episodes in progress")
        super().load_state_dict(state)


register(
    ExperimentSpec(
        name="drqn-cartpole",
        chapter=9,
        dataset="CartPole-v1, velocities hidden",
        book_result="(not in the book: DRQN, Hausknecht & Stone 2015)",
        description="recurrent Q-network (LSTM) on windows of episode replay; POMDP CartPole",
        model_config=RecurrentQNetworkConfig,
        model_group="qnet-lstm",
        trainer_config=DRQNTrainerConfig,
        task=DRQNTask,
    )
)
