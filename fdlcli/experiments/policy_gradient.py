"""Chapter 9: REINFORCE on CartPole (``pg-cartpole``), with the book's eight exploration settings.

Book (TF 1.x companion code): a 4-16-16-2 policy network with a softmax output, Adam lr 1e-3, discounted
returns with gamma 0.98, and one update every 8 episodes on the pooled memory of those episodes
(loss: -mean(log pi(a|s) * G)). Actions come from the policy's most probable action, explored
epsilon-greedily; the book compares greedy, fixed epsilon (0.05, 0.25, 0.5, 0.9) and epsilon annealed
linearly over training (1.0, 0.5 or 0.25 -> 0.001) and finds annealing from 1.0 best. ``explore=sample``
adds textbook REINFORCE (actions sampled from the policy) as a ninth setting.

The 8 episodes of one update all start from the same weights, so they are played at once in an
8-environment vector env (one batched forward per time step instead of 8); one step of the engine's loop
is such a batch and its update, and counts its episodes. Each batch of episodes is seeded from (seed,
batch number) and the exploration RNG likewise, so a checkpoint needs no environment or RNG state and a
resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.config import RunConfig
from fdlcli.engine.task import StepOutput
from fdlcli.experiments._rl import (
    RLTask,
    RLTrainerConfig,
    epsilon_greedy,
    make_trainer_env,
    make_vector_env,
    mlp_layers,
)
from fdlcli.registry import ExperimentSpec, register


@dataclass
class PolicyConfig:
    hidden: list[int] = field(default_factory=lambda: [16, 16])

    def check(self) -> str | None:
        if not self.hidden or any(width <= 0 for width in self.hidden):
            return f"model.hidden={self.hidden} must list positive layer widths"
        return None


@dataclass
class ExploreConfig:
    """One exploration setting (conf/explore/*.yaml). Epsilon moves linearly from start to end over
    ``anneal_episodes`` episodes (0: the whole run, as in the book); start == end is a fixed epsilon."""

    name: str = "anneal-1.0"
    policy: str = "argmax"  # argmax: the most probable action (the book) | sample: draw from the policy
    epsilon_start: float = 1.0
    epsilon_end: float = 0.001
    anneal_episodes: int = 0


@dataclass
class PGTrainerConfig(RLTrainerConfig):
    episodes: int = 5000  # at most; training stops earlier once solved (stop_when_solved)
    batch_episodes: int = 8  # episodes per update (played at once in a vector env)
    gamma: float = 0.98
    normalize_returns: bool = False  # the book uses raw discounted returns
    eval_every: int = 200  # episodes between greedy evaluations (each also writes a checkpoint)
    explore: ExploreConfig = field(default_factory=ExploreConfig)

    def check(self) -> str | None:
        explore = self.explore
        if explore.policy not in ("argmax", "sample"):
            return f"trainer.explore.policy={explore.policy!r}; choose from: argmax, sample"
        if not (0 <= explore.epsilon_start <= 1 and 0 <= explore.epsilon_end <= 1):
            return "trainer.explore.epsilon_start and epsilon_end must lie in [0, 1]"
        if min(self.episodes, self.batch_episodes, self.eval_every) <= 0 or not 0 < self.gamma <= 1:
            return "trainer.episodes, batch_episodes and eval_every must be positive and gamma in (0, 1]"
        return super().check()

    def epsilon(self, episode: int) -> float:
        span = self.explore.anneal_episodes or self.episodes
        fraction = min(1.0, episode / span)
        return self.explore.epsilon_start + fraction * (self.explore.epsilon_end - self.explore.epsilon_start)


class PolicyNetwork(nn.Module):
    """Observation -> action logits (the softmax is applied where probabilities are needed)."""

    def __init__(self, n_inputs: int, hidden: list[int], n_actions: int) -> None:
        super().__init__()
        widths = [n_inputs, *hidden]
        self.net = nn.Sequential(*mlp_layers(n_inputs, hidden), nn.Linear(widths[-1], n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float())


def env_shape(trainer: RLTrainerConfig) -> tuple[int, int]:
    """(observation size, number of actions) of the run's flat-observation environment."""
    env = make_trainer_env(trainer)
    shape = (int(np.prod(env.observation_space.shape)), int(env.action_space.n))
    env.close()
    return shape


def build_policy(config: RunConfig) -> nn.Module:
    n_inputs, n_actions = env_shape(config.trainer)
    return PolicyNetwork(n_inputs, config.model.hidden, n_actions)


def discounted_returns(rewards: torch.Tensor, alive: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = r_t + gamma G_{t+1} per environment (columns), counting only steps of the first episode."""
    rewards = rewards * alive
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        returns[t] = running
    return returns


@torch.no_grad()
def play_batch(
    net: nn.Module, envs: Any, trainer: PGTrainerConfig, seed: int, epsilon: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One episode in each sub-environment: observations, actions, rewards and the alive mask (T x N).

    With next-step autoreset a sub-environment whose episode ended starts a new one on the next step;
    its steps after the end are masked out and the batch ends when every sub-environment is done."""
    n = envs.num_envs
    rng = np.random.default_rng(seed)
    sampler = torch.Generator(device=device).manual_seed(seed)
    obs, _ = envs.reset(seed=seed)
    alive = np.ones(n, dtype=bool)
    observations, actions, rewards, masks = [], [], [], []
    while alive.any():
        obs_t = torch.as_tensor(obs, device=device, dtype=torch.float32)
        logits = net(obs_t)
        if trainer.explore.policy == "sample":
            preferred = torch.multinomial(F.softmax(logits, dim=1), 1, generator=sampler).squeeze(1)
        else:
            preferred = logits.argmax(dim=1)
        action = epsilon_greedy(preferred, epsilon, logits.shape[1], rng)
        obs, reward, terminated, truncated, _ = envs.step(action)
        observations.append(obs_t)
        actions.append(torch.as_tensor(action, device=device))
        rewards.append(torch.as_tensor(reward, device=device, dtype=torch.float32))
        masks.append(torch.as_tensor(alive, device=device, dtype=torch.float32))
        alive = alive & ~(terminated | truncated)
    return torch.stack(observations), torch.stack(actions), torch.stack(rewards), torch.stack(masks)


class PolicyGradientTask(RLTask):
    """REINFORCE in the engine's loop: a step plays ``batch_episodes`` episodes and returns the policy
    loss on them (the loop does the update); the counter counts episodes."""

    step_name = "episode"

    @classmethod
    def build_network(cls, config: RunConfig) -> nn.Module:
        return build_policy(config)

    def setup(self) -> None:
        super().setup()
        self.trainer: PGTrainerConfig = self.config.trainer
        self.envs: Any = None  # built when training starts (fdl eval/play need none)

    def total_steps(self) -> int:
        return self.trainer.episodes

    def train_step(self, step: int, index: int) -> StepOutput:
        trainer, tracker = self.trainer, self.tracker
        if self.envs is None:
            self.envs = make_vector_env(
                trainer.env, trainer.batch_episodes, trainer.max_episode_steps,
                hide_velocity=trainer.hide_velocity,
            )  # fmt: skip
        self.epsilon = trainer.epsilon(step)
        # the counter is batches x batch_episodes, so the batch's seed is a function of the step
        batch_seed = self.config.seed * 1_000_003 + step
        obs, actions, rewards, alive = play_batch(
            self.model, self.envs, trainer, batch_seed, self.epsilon, self.device
        )
        returns = discounted_returns(rewards, alive, trainer.gamma)
        if trainer.normalize_returns:
            valid = returns[alive.bool()]
            returns = (returns - valid.mean()) / (valid.std() + 1e-8)
        model = self.train_model if self.train_model is not None else self.model
        log_probs = F.log_softmax(model(obs), dim=2).gather(2, actions.unsqueeze(2)).squeeze(2)
        loss = -(log_probs * returns * alive).sum() / alive.sum()

        episode_returns = (rewards * alive).sum(0).tolist()
        for ret, length in zip(episode_returns, alive.sum(0).tolist(), strict=True):
            tracker.env_steps += int(length)
            self.episode_ended(ret, step=tracker.episodes + 1)
        return StepOutput(loss=loss, advance=len(episode_returns))

    def log_due(self, step: int) -> bool:
        return True  # every batch: its loss beside the training return and epsilon

    def window_metrics(self, cost: float) -> dict[str, float]:
        return {
            "train/return_avg": self.tracker.average,
            "train/epsilon": self.epsilon,
            "train/env_steps": float(self.tracker.env_steps),
        }

    def evaluation_due(self, before: int, after: int) -> bool:
        """Every ceil(eval_every / batch_episodes) batches."""
        batches = after // self.trainer.batch_episodes
        return batches % math.ceil(self.trainer.eval_every / self.trainer.batch_episodes) == 0

    def summary_fields(self) -> dict[str, Any]:
        return {
            "explore": self.trainer.explore.name,
            **super().summary_fields(),
            "env_steps": self.tracker.env_steps,
        }

    def finish(self, artifacts: Path) -> dict[str, Any]:
        if self.envs is not None:
            self.envs.close()
        return {}


register(
    ExperimentSpec(
        name="pg-cartpole",
        chapter=9,
        dataset="CartPole-v1",
        book_result="annealed epsilon 1.0->0.001 learns best (fig. 9-6)",
        description="REINFORCE, MLP 4-16-16-2, 8 exploration settings (explore=...)",
        model_config=PolicyConfig,
        model_group="policy",
        trainer_config=PGTrainerConfig,
        task=PolicyGradientTask,
    )
)
