"""Chapter 9: UNREAL (Jaderberg et al. 2016, "Reinforcement Learning with Unsupervised Auxiliary Tasks").

The book closes chapter 9 with UNREAL: an A3C agent that also learns, from a small replay buffer of its
recent experience, tasks that need no reward of the environment and shape the same network:

- **pixel control** (``pc``): for each cell of the observation, how much can the agent change it? A head
  on the LSTM's output predicts Q(s, a) per cell (a dueling "deconvolution": value map + advantage maps),
  learned by n-step Q-learning on replayed sequences whose pseudo-reward is the mean absolute change of
  the cell between consecutive observations (:func:`pixel_change`; discount ``pc_gamma``, 0.9 as in the
  paper), bootstrapped from max_a Q of the sequence's last observation;
- **reward prediction** (``rp``): from the convolutional features of three consecutive observations,
  classify the reward that follows them as zero, positive or negative; the samples are skewed so that
  half of them are rewarding (:func:`sample_reward_frames`), since rewards are rare;
- **value function replay** (``vr``): the A3C value loss again, on n-step returns of replayed sequences
  (bootstrapped from the current network's value).

The loss of an update is L_A3C + pc_weight L_PC + rp_weight L_RP + vr_weight value_coef L_VR (L_VR in the
same form as A3C's value loss). Defaults: the paper's lambda_RP = lambda_VR = 1 and pc_gamma 0.9; the
paper sampled lambda_PC log-uniformly from [0.01, 0.1]: 0.05 here, untuned. ``trainer.aux`` names the
tasks that learn (``trainer.aux=[]``: the base agent alone, A2C with the same LSTM network), so each
ablation is one override; every head exists either way, so all variants start from the same weights.

The network (the paper's, scaled to MinAtar's 10x10 grids, ``_minatar.py``): MinAtar's convolution (16
3x3 filters) and a fully connected layer (``model.hidden``), then an LSTM cell of ``model.lstm`` units fed
those features with the last action (one-hot) and the last reward (clipped to [-1, 1]); the policy and
value heads sit on the LSTM's output. Pixel control's cells are ``model.pixel_cell`` x ``pixel_cell``
squares of the grid (1: every grid cell, as a MinAtar cell is already an object; the paper's 4x4 pixel
cells of 84x84 frames are a 20x20 grid).

Why synchronous (A2C, one learner, ``num_envs`` environments stepped together) rather than A3C's worker
processes: on a CPU with few cores asynchronous workers buy nothing, and a synchronous run resumes exactly
(the environments, the LSTM states, the sampling RNGs and, beside the newest checkpoint, the replay buffer
are all in the checkpoint) and is repeatable, so it can be tested and compared seed for seed. The baseline
is the same A2C (``a3c-minatar``: the feed-forward network, ``trainer.mode=a2c``; or this experiment with
``trainer.aux=[]``). A replayed sequence starts its LSTM from a zero state (zeroed again where an episode
starts inside it), as the paper's replay does; the on-policy rollout backpropagates through its
``t_max`` steps from the (detached) state it started in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.config import RunConfig
from fdlcli.engine.task import StepOutput
from fdlcli.errors import CheckpointError, ConfigError
from fdlcli.experiments._rl import grid_conv_layers, make_trainer_env, mlp_layers
from fdlcli.experiments.a3c import (
    A3CTrainerConfig,
    Actor,
    ActorCriticTask,
    Rollout,
    actor_critic_loss,
    n_step_returns,
)
from fdlcli.experiments.dqn import ReplayBuffer
from fdlcli.experiments.drqn import sample_windows
from fdlcli.registry import ExperimentSpec, register

AUX_TASKS = ("pc", "rp", "vr")  # pixel control, reward prediction, value function replay
REWARD_FRAMES = 3  # observations reward prediction sees (the paper's three)
PC_CHANNELS = 32  # pixel control's feature maps before its deconvolution (the paper's 32)

# the LSTM state of a batch and its other inputs: (h, c, last action (-1: none yet), last reward)
State = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass
class UNREALConfig:
    hidden: list[int] = field(default_factory=lambda: [256])  # fully connected layers after the convolution
    lstm: int = 256  # LSTM units (the paper's 256)
    pixel_cell: int = 1  # pixel control: cells of pixel_cell x pixel_cell grid squares

    def check(self) -> str | None:
        if any(width <= 0 for width in self.hidden) or self.lstm <= 0 or self.pixel_cell <= 0:
            return f"model.hidden={self.hidden}, model.lstm and model.pixel_cell must be positive"
        return None


@dataclass
class UNREALTrainerConfig(A3CTrainerConfig):
    mode: str = "a2c"  # synchronous only (the module docstring says why)
    aux: list[str] = field(default_factory=lambda: list(AUX_TASKS))  # the auxiliary tasks that learn
    pc_weight: float = 0.05  # lambda_PC
    rp_weight: float = 1.0  # lambda_RP
    vr_weight: float = 1.0  # lambda_VR
    pc_gamma: float = 0.9  # pixel control's discount
    buffer_size: int = 2_000  # observations of recent experience the auxiliary tasks replay (the paper's)
    # per update: sequences replayed by pixel control and value replay, and samples of reward prediction
    replay_batch: int = 4
    replay_length: int = 20  # learned steps of a replayed sequence (one more observation bootstraps)

    def check(self) -> str | None:
        if self.mode != "a2c":
            return f"trainer.mode={self.mode!r}: UNREAL trains synchronously here; use trainer.mode=a2c"
        unknown = [name for name in self.aux if name not in AUX_TASKS]
        if unknown or len(set(self.aux)) != len(self.aux):
            return f"trainer.aux={self.aux}: list each of {', '.join(AUX_TASKS)} at most once"
        if min(self.pc_weight, self.rp_weight, self.vr_weight) < 0 or not 0 < self.pc_gamma <= 1:
            return "trainer.pc_weight, rp_weight, vr_weight must not be negative and pc_gamma lie in (0, 1]"
        if self.replay_batch <= 0 or self.replay_length <= 0:
            return "trainer.replay_batch and trainer.replay_length must be positive"
        if self.buffer_size // max(1, self.num_envs) < max(self.replay_length + 1, REWARD_FRAMES):
            return (
                f"trainer.buffer_size={self.buffer_size} holds too few steps per environment for "
                f"replay_length={self.replay_length}: at least num_envs x (replay_length + 1)"
            )
        return super().check()


# --------------------------------------------------------------------------------------------------
# The network.


class UNREALNetwork(nn.Module):
    """Convolution -> fully connected -> LSTM (with the last action and reward) -> policy and value; the
    pixel-control head on the LSTM's output and the reward-prediction head on the convolution's.

    Acting: :meth:`act` (logits, value, state) one step at a time; ``fdl play`` and evaluation go through
    :meth:`step` and :meth:`feedback` (``_rl.play_episodes``); learning from replay unrolls sequences with
    :meth:`unroll`."""

    def __init__(
        self, space: Any, n_actions: int, hidden: list[int], lstm: int, cell: int, env_id: str
    ) -> None:
        super().__init__()
        shape = tuple(space.shape)
        conv, conv_features = grid_conv_layers(shape, env_id)
        if shape[0] % cell or shape[1] % cell:
            raise ConfigError(
                f"model.pixel_cell={cell} does not divide the {shape[0]}x{shape[1]} grid of {env_id}"
            )
        # what the replay buffer stores (MinAtar: 0/1 cells as bool)
        self.observation_shape = shape
        self.observation_dtype = torch.from_numpy(np.zeros(0, dtype=space.dtype)).dtype
        self.n_actions, self.pixel_cell = n_actions, cell
        self.grid = (shape[0] // cell, shape[1] // cell)
        self.conv = nn.Sequential(*conv)
        self.fc = nn.Sequential(*mlp_layers(conv_features, hidden))
        features = hidden[-1] if hidden else conv_features
        self.lstm = nn.LSTMCell(features + n_actions + 1, lstm)
        self.policy = nn.Linear(lstm, n_actions)
        self.value = nn.Linear(lstm, 1)
        with torch.no_grad():  # a near-uniform first policy, as a3c's ActorCritic
            self.policy.weight.mul_(0.01)
            self.policy.bias.zero_()
        # pixel control, the paper's head: LSTM output -> 32 maps of half the grid's size -> a stride-2
        # deconvolution to a value map and an advantage map per action over the whole grid (kernel 4 to
        # double an even side, 3 to make an odd one: (n - 1) * 2 - 2 + kernel)
        self.pc_maps = tuple((side + 1) // 2 for side in self.grid)
        kernel = tuple(4 if side % 2 == 0 else 3 for side in self.grid)
        self.pc_fc = nn.Linear(lstm, PC_CHANNELS * self.pc_maps[0] * self.pc_maps[1])
        self.pc_value = nn.ConvTranspose2d(PC_CHANNELS, 1, kernel, stride=2, padding=1)
        self.pc_advantage = nn.ConvTranspose2d(PC_CHANNELS, n_actions, kernel, stride=2, padding=1)
        # reward prediction: three observations' convolutional features -> 128 -> zero, positive, negative
        self.reward_head = nn.Sequential(
            nn.Linear(REWARD_FRAMES * conv_features, 128), nn.ReLU(), nn.Linear(128, 3)
        )

    def initial_state(self, batch: int) -> State:
        device = self.policy.weight.device
        zeros = torch.zeros(batch, self.lstm.hidden_size, device=device)
        return (
            zeros, zeros.clone(), torch.full((batch,), -1, dtype=torch.long, device=device),
            torch.zeros(batch, device=device),
        )  # fmt: skip

    def last_inputs(self, last_action: torch.Tensor, last_reward: torch.Tensor) -> torch.Tensor:
        """The one-hot last action (all zeros for none) and the clipped last reward."""
        known = (last_action >= 0).float()[:, None]
        one_hot = F.one_hot(last_action.clamp(min=0), self.n_actions).float() * known
        return torch.cat([one_hot, last_reward.float().clamp(-1.0, 1.0)[:, None]], dim=1)

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(obs.float()))

    def act(self, obs: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State]:
        """Logits and values of a batch of observations, and the state after them."""
        h, c, last_action, last_reward = state
        inputs = torch.cat([self.features(obs), self.last_inputs(last_action, last_reward)], dim=1)
        h, c = self.lstm(inputs, (h, c))
        h, c = h.float(), c.float()  # the state stays fp32 under autocast
        return self.policy(h), self.value(h).squeeze(-1), (h, c, last_action, last_reward)

    def step(self, obs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        logits, _, state = self.act(obs, state)
        return logits, state

    def feedback(self, state: State, action: int, reward: float) -> State:
        """The state with the action taken and the reward received (the next step's inputs)."""
        h, c, last_action, last_reward = state
        return h, c, torch.full_like(last_action, action), torch.full_like(last_reward, reward)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Action logits of observations each seen from a fresh state (an episode's first)."""
        return self.step(obs, self.initial_state(len(obs)))[0]

    def unroll(
        self, obs: torch.Tensor, last_action: torch.Tensor, last_reward: torch.Tensor, starts: torch.Tensor
    ) -> torch.Tensor:
        """LSTM outputs (batch x time x units) of observation sequences (batch x time x grid) from a zero
        state, zeroed again before each step that ``starts`` marks as an episode's first."""
        batch, steps = obs.shape[:2]
        features = self.features(obs.flatten(0, 1)).reshape(batch, steps, -1)
        last = self.last_inputs(last_action.flatten(), last_reward.flatten()).reshape(batch, steps, -1)
        inputs = torch.cat([features, last.to(features.dtype)], dim=2)
        h, c = self.initial_state(batch)[:2]
        outputs = []
        for t in range(steps):
            keep = (~starts[:, t]).float()[:, None]
            h, c = self.lstm(inputs[:, t], (h * keep, c * keep))
            outputs.append(h)
        return torch.stack(outputs, dim=1)

    def pixel_control(self, hidden: torch.Tensor) -> torch.Tensor:
        """Q-values per cell (N x actions x grid) of LSTM outputs (N x units): value + advantage - mean."""
        maps = F.relu(self.pc_fc(hidden)).reshape(-1, PC_CHANNELS, *self.pc_maps)
        advantage = self.pc_advantage(maps)
        return self.pc_value(maps) + advantage - advantage.mean(dim=1, keepdim=True)

    def reward_prediction(self, frames: torch.Tensor) -> torch.Tensor:
        """Logits of (zero, positive, negative) reward after REWARD_FRAMES observations (N x frames x ...)."""
        return self.reward_head(self.conv(frames.flatten(0, 1).float()).reshape(len(frames), -1))


def build_unreal(config: RunConfig) -> UNREALNetwork:
    trainer, model = config.trainer, config.model
    env = make_trainer_env(trainer)
    space, n_actions = env.observation_space, int(env.action_space.n)
    env.close()
    return UNREALNetwork(space, n_actions, model.hidden, model.lstm, model.pixel_cell, trainer.env)


# --------------------------------------------------------------------------------------------------
# The auxiliary tasks' targets and losses (the replay buffer is DQN's: time-major rows of every
# environment's observations, actions, rewards, terminations, real steps and steps since the episode began).


def pixel_change(frames: torch.Tensor, cell: int) -> torch.Tensor:
    """Pixel control's pseudo-rewards: for frame sequences (batch x time+1 x height x width x channels),
    the absolute change of every pixel and channel between consecutive frames, averaged over the channels
    and over each ``cell`` x ``cell`` square (batch x time x height/cell x width/cell)."""
    x = frames.float()
    change = (x[:, 1:] - x[:, :-1]).abs().mean(dim=-1)
    batch, steps, height, width = change.shape
    pooled = F.avg_pool2d(change.reshape(batch * steps, 1, height, width), cell)
    return pooled.reshape(batch, steps, height // cell, width // cell)


def last_inputs(
    actions: torch.Tensor, rewards: torch.Tensor, starts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last action and reward of each step of replayed windows (batch x time), as acting had them:
    the step before's, none (-1 and 0) at an episode's first step and at the window's first (whose LSTM
    state starts from zero too)."""
    last_action = torch.cat([torch.full_like(actions[:, :1], -1), actions[:, :-1]], 1).masked_fill(starts, -1)
    last_reward = torch.cat([torch.zeros_like(rewards[:, :1]), rewards[:, :-1]], 1).masked_fill(starts, 0.0)
    return last_action, last_reward


def pixel_control_targets(
    pseudo_rewards: torch.Tensor,
    terminated: torch.Tensor,
    valid: torch.Tensor,
    best: torch.Tensor,
    gamma: float,
) -> torch.Tensor:
    """n-step Q-learning targets of every cell (time x batch x grid): R_t = r_t + gamma R_{t+1} from
    R_T = max_a Q(s_T, a) (``best``: time+1 x batch x grid, its last row s_T's), no bootstrap past a
    termination, and a reset step's R its own max_a Q (what a truncated step before it bootstraps from):
    ``a3c.n_step_returns`` with its step masks (time x batch) broadcast over the grid."""
    cells = (..., None, None)
    return n_step_returns(pseudo_rewards, terminated[cells], valid[cells], best[:-1], best[-1], gamma)


def replay_losses(
    net: UNREALNetwork, windows: tuple[torch.Tensor, ...], trainer: UNREALTrainerConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel control's and value replay's losses (each 0 when off) on replayed windows (batch x
    ``replay_length + 1`` rows of ``drqn.sample_windows``): the rows but the last are learned, the last
    only bootstraps; reset steps are left out and no return bootstraps past a termination (``n_step_returns``,
    time-major as it takes them)."""
    obs, actions, rewards, terminated, valid, since_start = windows
    starts = since_start == 0
    hidden = net.unroll(obs, *last_inputs(actions, rewards, starts), starts)
    step_valid, step_terminated = valid[:, :-1].T, terminated[:, :-1].T
    mask = step_valid.float()
    count = mask.sum().clamp(min=1.0)
    pc_loss = vr_loss = hidden.new_zeros((), dtype=torch.float32)
    if "vr" in trainer.aux:
        values = net.value(hidden).squeeze(-1).float().T  # time+1 x batch
        returns = n_step_returns(
            rewards[:, :-1].T, step_terminated, step_valid, values[:-1].detach(), values[-1].detach(),
            trainer.gamma,
        )  # fmt: skip
        vr_loss = ((returns - values[:-1]).pow(2) * mask).sum() / count
    if "pc" in trainer.aux:
        batch, rows = hidden.shape[:2]
        q = net.pixel_control(hidden.flatten(0, 1)).float()
        q = q.reshape(batch, rows, *q.shape[1:]).transpose(0, 1)  # time+1 x batch x actions x grid
        pseudo = pixel_change(obs, net.pixel_cell).transpose(0, 1)
        best = q.detach().max(dim=2).values
        targets = pixel_control_targets(pseudo, step_terminated, step_valid, best, trainer.pc_gamma)
        taken = actions[:, :-1].T[:, :, None, None, None].expand(-1, -1, 1, *q.shape[-2:])
        chosen = q[:-1].gather(2, taken).squeeze(2)
        pc_loss = ((targets - chosen).pow(2).sum(dim=(-2, -1)) * mask).sum() / count
    return pc_loss, vr_loss


def reward_classes(rewards: torch.Tensor) -> torch.Tensor:
    """0: no reward, 1: positive, 2: negative."""
    return torch.where(rewards > 0, 1, torch.where(rewards < 0, 2, 0))


def sample_reward_frames(
    buffer: ReplayBuffer, batch_size: int, generator: torch.Generator, frames: int = REWARD_FRAMES
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Reward prediction's samples: ``frames`` consecutive observations of one episode (batch x frames x
    grid, oldest first) and the class of the reward of the step taken from the last of them. Each sample
    is rewarding with probability 1/2 (the paper's skew; all of one kind while the buffer holds no sample
    of the other). None while the buffer holds no sample at all."""
    filled = buffer.rows if buffer.full else buffer.row
    oldest = buffer.row if buffer.full else 0
    rows = (oldest + torch.arange(filled)) % buffer.rows  # oldest to newest
    eligible = buffer.valid[rows] & (buffer.since_start[rows] >= frames - 1)
    eligible[: frames - 1] = False  # the frames before them are not stored (any more)
    rewarding = buffer.rewards[rows] != 0
    pools = [torch.nonzero(eligible & ~rewarding), torch.nonzero(eligible & rewarding)]  # (age, env) pairs
    if not len(pools[0]) and not len(pools[1]):
        return None
    want_reward = torch.rand(batch_size, generator=generator) < 0.5
    if not len(pools[1]) or not len(pools[0]):
        want_reward.fill_(bool(len(pools[1])))
    picked = torch.empty(batch_size, 2, dtype=torch.long)
    for kind, pool in enumerate(pools):
        chosen = want_reward == bool(kind)
        if chosen.any():
            picked[chosen] = pool[torch.randint(len(pool), (int(chosen.sum()),), generator=generator)]
    ages, envs = picked[:, 0], picked[:, 1]
    window = (oldest + ages[:, None] - torch.arange(frames - 1, -1, -1)) % buffer.rows  # batch x frames
    observations = buffer.frames[window, envs[:, None]]
    return observations, reward_classes(buffer.rewards[(oldest + ages) % buffer.rows, envs])


def reward_prediction_loss(net: UNREALNetwork, frames: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(net.reward_prediction(frames).float(), classes)


# --------------------------------------------------------------------------------------------------
# Acting: A2C's actor with the LSTM state of every environment, storing what it sees in the replay buffer.


class RecurrentActor(Actor):
    """``a3c.Actor`` that carries each environment's LSTM state and last action and reward from step to
    step (fresh where an episode starts), and adds every step to the replay buffer."""

    def __init__(
        self, trainer: UNREALTrainerConfig, seed: int, device: torch.device, net: UNREALNetwork,
        buffer: ReplayBuffer,
    ) -> None:  # fmt: skip
        super().__init__(trainer, seed, trainer.num_envs, 0, device)
        self.state = net.initial_state(trainer.num_envs)
        self.since_start = np.zeros(trainer.num_envs, dtype=np.int64)  # steps into each episode
        self.buffer = buffer

    def acting_state(self) -> State:
        """The state to act from: fresh in environments whose observation is an episode's first."""
        starts = torch.as_tensor(self.since_start == 0, device=self.device)
        keep = (~starts).float()[:, None]
        h, c, last_action, last_reward = self.state
        return h * keep, c * keep, last_action.masked_fill(starts, -1), last_reward.masked_fill(starts, 0.0)

    def rollout(self, net: nn.Module) -> Rollout:
        h, c, last_action, last_reward = self.state
        # backpropagation through time goes back to this rollout's start only
        self.state = (h.detach(), c.detach(), last_action, last_reward)
        return super().rollout(net)

    def policy_and_value(self, net: nn.Module, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, value, self.state = net.act(obs, self.acting_state())
        return logits, value

    def bootstrap_value(self, net: nn.Module, obs: torch.Tensor) -> torch.Tensor:
        return net.act(obs, self.acting_state())[1]  # the state stays: the next rollout acts on obs

    def observed(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        real: np.ndarray,
    ) -> None:
        self.buffer.add(obs, self.since_start, actions, rewards, terminated, real)
        h, c = self.state[:2]
        last_action = torch.as_tensor(actions, device=self.device)
        self.state = (h, c, last_action, torch.as_tensor(rewards, dtype=torch.float32, device=self.device))
        self.since_start = np.where(real, self.since_start + 1, 0)  # after a reset step: an episode's first

    def state_dict(self) -> dict[str, Any]:
        h, c, last_action, last_reward = self.state
        return {
            **super().state_dict(),
            "hidden_h": h.detach().cpu(),
            "hidden_c": c.detach().cpu(),
            "last_action": last_action.cpu(),
            "last_reward": last_reward.cpu(),
            "since_start": torch.from_numpy(self.since_start.copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "hidden_h" not in state:
            raise CheckpointError("the checkpoint holds no LSTM states of the episodes in progress")
        super().load_state_dict(state)
        names = ("hidden_h", "hidden_c", "last_action", "last_reward")
        self.state = tuple(state[name].to(self.device) for name in names)  # type: ignore[assignment]
        self.since_start = state["since_start"].numpy().copy()


# --------------------------------------------------------------------------------------------------
# The task.


class UNREALTask(ActorCriticTask):
    """A2C with the recurrent network, the replay buffer and the auxiliary losses of ``trainer.aux``."""

    PARTS: ClassVar[tuple[str, ...]] = (
        "policy_loss", "value_loss", "entropy", "pixel_control_loss", "reward_prediction_loss",
        "value_replay_loss",
    )  # fmt: skip

    @classmethod
    def build_network(cls, config: RunConfig) -> nn.Module:
        return build_unreal(config)

    def setup(self) -> None:
        super().setup()
        trainer: UNREALTrainerConfig = self.config.trainer
        net: UNREALNetwork = self.model
        self.buffer = ReplayBuffer(
            trainer.buffer_size, trainer.num_envs, net.observation_shape, net.observation_dtype, 1
        )
        # the replay sampler's own RNG stream (in the checkpoint), apart from the actor's
        stream = np.random.SeedSequence([self.config.seed, 104_729]).generate_state(1)[0]
        self.replay_sampler = torch.Generator().manual_seed(int(stream))
        self.buffer_missing = False  # resumed from a checkpoint whose replay buffer did not load

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        trainer = self.trainer
        tasks = ", ".join(trainer.aux) or "none"
        return (
            f"{trainer.env}, UNREAL (A2C, {trainer.num_envs} environments stepped together), auxiliary "
            f"tasks: {tasks}; {params:,} parameters"
        )

    def make_actor(self) -> Actor:
        return RecurrentActor(self.trainer, self.config.seed, self.device, self.model, self.buffer)

    def _a2c_step(self, step: int) -> StepOutput:
        if self.buffer_missing:
            raise CheckpointError("the checkpoint this run resumes from has no replay buffer (arrays.npz)")
        return super()._a2c_step(step)

    def a2c_loss(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        trainer = self.trainer
        loss, parts = actor_critic_loss(rollout, trainer)
        pc_loss, rp_loss, vr_loss = self.auxiliary_losses()
        loss = (
            loss + trainer.pc_weight * pc_loss + trainer.rp_weight * rp_loss
            + trainer.vr_weight * trainer.value_coef * vr_loss
        )  # fmt: skip
        aux_parts = torch.stack([pc_loss, rp_loss, vr_loss]).detach().to(parts.device)
        return loss, torch.cat([parts, aux_parts])

    def auxiliary_losses(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pixel control, reward prediction, value replay) losses from the replay buffer; 0 for a task that
        is off, and for all until the buffer is full (the paper fills it before they start)."""
        trainer, net, device = self.trainer, self.model, self.device
        zero = torch.zeros((), device=device)
        pc_loss = rp_loss = vr_loss = zero
        if not self.buffer.full:
            return pc_loss, rp_loss, vr_loss
        if "pc" in trainer.aux or "vr" in trainer.aux:
            length = trainer.replay_length + 1
            windows = sample_windows(self.buffer, trainer.replay_batch, length, self.replay_sampler)
            pc_loss, vr_loss = replay_losses(net, tuple(t.to(device) for t in windows), trainer)
        if "rp" in trainer.aux:
            sample = sample_reward_frames(self.buffer, trainer.replay_batch, self.replay_sampler)
            if sample is not None:
                rp_loss = reward_prediction_loss(net, sample[0].to(device), sample[1].to(device))
        return pc_loss, rp_loss, vr_loss

    # ---- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "replay_sampler": self.replay_sampler.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.replay_sampler.set_state(state["replay_sampler"])
        self.buffer_missing = "actor" in state  # saved after the first step: load_arrays brings the buffer

    def save_arrays(self) -> dict[str, np.ndarray]:
        started = self.actor is not None or self.actor_state is not None
        return self.buffer.arrays() if started else {}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.buffer.load(arrays)
        self.buffer_missing = False

    def summary_fields(self) -> dict[str, Any]:
        return {**super().summary_fields(), "aux": list(self.trainer.aux)}


register(
    ExperimentSpec(
        name="unreal-minatar",
        chapter=9,
        dataset="MinAtar/Breakout-v1",
        book_result="(UNREAL is described, not run, in the book)",
        description="UNREAL: A2C-LSTM plus pixel control, reward prediction, value replay (trainer.aux)",
        model_config=UNREALConfig,
        model_group="unreal",
        trainer_config=UNREALTrainerConfig,
        task=UNREALTask,
    )
)
