"""Chapter 9: REINFORCE on CartPole (``pg-cartpole``), with the book's eight exploration settings.

Book (TF 1.x companion code): a 4-16-16-2 policy network with a softmax output, Adam lr 1e-3, discounted
returns with gamma 0.98, and one update every 8 episodes on the pooled memory of those episodes
(loss: -mean(log pi(a|s) * G)). Actions come from the policy's most probable action, explored
epsilon-greedily; the book compares greedy, fixed epsilon (0.05, 0.25, 0.5, 0.9) and epsilon annealed
linearly over training (1.0, 0.5 or 0.25 -> 0.001) and finds annealing from 1.0 best. ``explore=sample``
adds textbook REINFORCE (actions sampled from the policy) as a ninth setting.

The 8 episodes of one update all start from the same weights, so they are played at once in an
8-environment vector env (one batched forward per time step instead of 8). Each batch of episodes is
seeded from (seed, batch number) and the exploration RNG likewise, so a checkpoint needs no environment
or RNG state and a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fdlcli.config import RunConfig
from fdlcli.engine.checkpoint import CheckpointRef
from fdlcli.engine.optim import build_optimizer
from fdlcli.engine.seed import seed_everything
from fdlcli.engine.session import run_session
from fdlcli.experiments._rl import (
    EpisodeTracker,
    RLTrainerConfig,
    epsilon_greedy,
    evaluate_during_training,
    make_vector_env,
    register_rl,
    restore,
    save_checkpoint,
)
from fdlcli.runs import Run


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
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_inputs, width), nn.ReLU()]
            n_inputs = width
        layers.append(nn.Linear(n_inputs, n_actions))
        self.net = nn.Sequential(*layers)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs.float())


def env_shape(env_id: str) -> tuple[int, int]:
    """(observation size, number of actions) of a flat-observation environment."""
    from fdlcli.experiments._rl import make_env

    env = make_env(env_id)
    shape = (int(np.prod(env.observation_space.shape)), int(env.action_space.n))
    env.close()
    return shape


def build_policy(config: RunConfig) -> nn.Module:
    n_inputs, n_actions = env_shape(config.trainer.env)
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


def train(run: Run) -> dict[str, Any]:
    cfg = run.config
    trainer: PGTrainerConfig = cfg.trainer
    with run_session(run) as session:
        device, checkpoints, writer = session.device, session.checkpoints, session.writer
        seed_everything(cfg.seed)
        net = build_policy(cfg).to(device)
        optimizer = build_optimizer(cfg.optim, net.parameters())
        tracker = EpisodeTracker(trainer.solve_window, trainer.solve_return)
        batch, best, history = 0, None, []
        saved = restore(session, net, optimizer, tracker)
        if saved is not None:
            batch, best, history = saved["batch"], saved["best"], saved["history"]

        def save(reason: str) -> CheckpointRef:
            counters = {"batch": batch, "best": best, "history": history}
            return save_checkpoint(session, net, optimizer, tracker, tracker.episodes, reason, **counters)

        envs = make_vector_env(trainer.env, trainer.batch_episodes, trainer.max_episode_steps)
        progress = session.start_progress(
            trainer.episodes, tracker.episodes, unit="episode", value_name="mean return"
        )

        def done() -> bool:
            solved = trainer.stop_when_solved and tracker.solved_at is not None
            return tracker.episodes >= trainer.episodes or solved

        while not done():
            epsilon = trainer.epsilon(tracker.episodes)
            batch_seed = cfg.seed * 1_000_003 + batch * trainer.batch_episodes
            obs, actions, rewards, alive = play_batch(net, envs, trainer, batch_seed, epsilon, device)
            returns = discounted_returns(rewards, alive, trainer.gamma)
            if trainer.normalize_returns:
                valid = returns[alive.bool()]
                returns = (returns - valid.mean()) / (valid.std() + 1e-8)
            log_probs = F.log_softmax(net(obs), dim=2).gather(2, actions.unsqueeze(2)).squeeze(2)
            loss = -(log_probs * returns * alive).sum() / alive.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            batch += 1
            session.check_finite(loss.item(), tracker.episodes)

            episode_returns = (rewards * alive).sum(0).tolist()
            for ret, length in zip(episode_returns, alive.sum(0).tolist(), strict=True):
                tracker.env_steps += int(length)
                if tracker.add(ret):
                    session.message(
                        f"solved: average return {tracker.average:.1f} over {tracker.window} episodes "
                        f"after {tracker.episodes} episodes, {tracker.env_steps} environment steps"
                    )
                writer.log({"train/return": ret}, tracker.episodes, 0)
            writer.log(
                {
                    "train/return_avg": tracker.average,
                    "train/loss": loss.item(),
                    "train/epsilon": epsilon,
                    "train/env_steps": float(tracker.env_steps),
                },
                tracker.episodes,
                0,
            )
            progress.update(tracker.episodes, tracker.average)
            session.stop_if_requested(save)

            if batch % math.ceil(trainer.eval_every / trainer.batch_episodes) == 0 or done():
                metrics, best, improved = evaluate_during_training(session, net, tracker.episodes, 0, best)
                history.append({"episodes": tracker.episodes, "env_steps": tracker.env_steps, **metrics})
                ref = save("evaluation")
                if improved:
                    checkpoints.mark_best(ref, "eval/return_mean", best, tracker.episodes)
                run.write_summary(summary(run, tracker, history, best, session.train_seconds, "running"))
                session.message(
                    f"episode {tracker.episodes}: average return {tracker.average:.1f} "
                    f"(last {len(tracker.returns)}), epsilon {epsilon:.3f}, greedy evaluation "
                    f"{metrics['eval/return_mean']:.1f}" + ("  *" if improved else "")
                )
        envs.close()
        result = summary(run, tracker, history, best, session.train_seconds, "completed")
        run.write_summary(result)
        solved = tracker.solved_at
        session.message(
            (f"solved after {solved['episodes']} episodes, {solved['env_steps']} steps" if solved else
             f"not solved in {tracker.episodes} episodes")
            + f"; run dir {run.path}"
        )  # fmt: skip
        return result


def summary(
    run: Run, tracker: EpisodeTracker, history: list[dict[str, Any]], best: float | None, seconds: float,
    status: str,
) -> dict[str, Any]:  # fmt: skip
    return {
        "experiment": run.config.name,
        "status": status,
        "explore": run.config.trainer.explore.name,
        "episodes": tracker.episodes,
        "env_steps": tracker.env_steps,
        "solved": tracker.solved_at is not None,
        "solved_at": tracker.solved_at,
        "train_return_avg": tracker.average,
        "train_seconds": round(seconds, 2),
        "final": history[-1] if history else {},
        "best": {"metric": "eval/return_mean", "value": best},
        "history": history,
    }


register_rl(
    build_policy,
    name="pg-cartpole",
    chapter=9,
    dataset="CartPole-v1",
    book_result="annealed epsilon 1.0->0.001 learns best (fig. 9-6)",
    description="REINFORCE, MLP 4-16-16-2, 8 exploration settings (explore=...)",
    model_config=PolicyConfig,
    trainer_config=PGTrainerConfig,
    custom_train=train,
)
