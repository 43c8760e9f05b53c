"""What the chapter-9 agents share: environments, the solve criterion, evaluation episodes, ``fdl play``.

Both agents (``policy_gradient.py`` and ``dqn.py``) act greedily by taking the arg-max of their network's
output (action probabilities or Q-values), so one evaluation routine serves both: ``fdl eval RUN`` and
the periodic evaluation during training play ``eval_episodes`` episodes with ``eval_epsilon`` exploration,
and ``fdl play`` plays, renders and records episodes with the same code.

gymnasium 1.x semantics used throughout: an episode ends when ``terminated`` (the MDP ended: no
bootstrapping) or ``truncated`` (a time limit: bootstrap from the final observation) is set; vector
environments reset an ended sub-environment on the *next* ``step`` call (next-step autoreset), which
returns the first observation of the new episode with reward 0 and ignores the action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fdlcli.config import RunConfig, TrainerConfig
from fdlcli.engine.checkpoint import CheckpointManager, CheckpointRef
from fdlcli.engine.devices import configure_threads, resolve_device
from fdlcli.engine.session import Session
from fdlcli.errors import ConfigError
from fdlcli.registry import ExperimentSpec, register
from fdlcli.runs import Run


@dataclass
class RLTrainerConfig(TrainerConfig):
    """Keys every RL experiment adds to ``trainer`` (``epochs``, ``monitor``, the data group: unused)."""

    env: str = "CartPole-v1"
    max_episode_steps: int = 0  # 0 = the environment's own limit (CartPole-v1: 500)
    solve_return: float = 475.0  # CartPole-v1 is solved at an average return of 475 ...
    solve_window: int = 100  # ... over this many consecutive training episodes
    stop_when_solved: bool = True
    eval_episodes: int = 10  # episodes per evaluation (during training, at the end, and `fdl eval`)
    eval_epsilon: float = 0.0  # exploration during evaluation (Atari: 0.05 so a stuck agent still fires)

    def check(self) -> str | None:
        if self.solve_window <= 0 or self.eval_episodes <= 0:
            return "trainer.solve_window and trainer.eval_episodes must be positive"
        if not 0.0 <= self.eval_epsilon <= 1.0:
            return f"trainer.eval_epsilon={self.eval_epsilon} is not a probability"
        if self.max_episode_steps < 0:
            return "trainer.max_episode_steps must not be negative"
        return None


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def make_env(
    env_id: str, max_episode_steps: int = 0, frame_stack: int = 4, render_mode: str | None = None
) -> Any:
    """One environment; Atari ones get the DQN preprocessing (84x84 grey, frame skip 4, noop starts, a stack
    of ``frame_stack`` frames; the stack repeats the first frame at an episode start)."""
    import gymnasium as gym

    kwargs: dict[str, Any] = {"render_mode": render_mode}
    if max_episode_steps:
        kwargs["max_episode_steps"] = max_episode_steps
    if not is_atari(env_id):
        try:
            return gym.make(env_id, **kwargs)
        except gym.error.Error as exc:
            raise ConfigError(f"cannot make environment {env_id!r}: {exc}") from None
    try:
        import ale_py
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
    except ImportError as exc:
        raise ConfigError(
            f"{env_id} needs the Atari packages ({exc.name} is missing): pip install 'fdlcli[atari]'"
        ) from None
    gym.register_envs(ale_py)
    try:
        # frameskip=1 in the emulator: AtariPreprocessing skips frames itself (and max-pools the last two);
        # no sticky actions, as in the DQN papers and the book.
        env = gym.make(env_id, frameskip=1, repeat_action_probability=0.0, **kwargs)
    except gym.error.Error as exc:
        raise ConfigError(f"cannot make environment {env_id!r}: {exc}") from None
    env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
    return FrameStackObservation(env, frame_stack, padding_type="reset")


def make_vector_env(env_id: str, num_envs: int, max_episode_steps: int = 0, frame_stack: int = 4) -> Any:
    """``num_envs`` copies stepped in this process (the CPUs are better spent on learning than on IPC)."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    def thunk() -> Any:
        return make_env(env_id, max_episode_steps, frame_stack)

    return SyncVectorEnv([thunk] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)


def epsilon_greedy(
    greedy: torch.Tensor, epsilon: float, n_actions: int, rng: np.random.Generator
) -> np.ndarray:
    """Replace each greedy action by a uniformly random one with probability ``epsilon``."""
    actions = greedy.cpu().numpy()
    if epsilon > 0:
        explore = rng.random(len(actions)) < epsilon
        actions = np.where(explore, rng.integers(0, n_actions, len(actions)), actions)
    return actions


@dataclass
class EpisodeTracker:
    """Training-episode statistics and the solve criterion: mean return over ``window`` episodes."""

    window: int
    solve_return: float
    episodes: int = 0
    env_steps: int = 0
    returns: list[float] = field(default_factory=list)  # last ``window`` returns, oldest first
    solved_at: dict[str, int] | None = None  # {"episodes": .., "env_steps": ..} when first solved

    def add(self, episode_return: float) -> bool:
        """Record one finished episode; True when this episode solves the task for the first time."""
        self.episodes += 1
        self.returns = [*self.returns, episode_return][-self.window :]
        if self.solved_at is None and len(self.returns) == self.window and self.average >= self.solve_return:
            self.solved_at = {"episodes": self.episodes, "env_steps": self.env_steps}
            return True
        return False

    @property
    def average(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def state(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes,
            "env_steps": self.env_steps,
            "returns": torch.tensor(self.returns, dtype=torch.float64),
            "solved_at": self.solved_at,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.episodes, self.env_steps = int(state["episodes"]), int(state["env_steps"])
        self.returns = [float(r) for r in state["returns"].tolist()]
        self.solved_at = state["solved_at"]


# --------------------------------------------------------------------------------------------------
# Checkpoints and evaluations inside a training session (both agents' loops).


def restore(
    session: Session, net: nn.Module, optimizer: torch.optim.Optimizer, tracker: EpisodeTracker
) -> dict[str, Any] | None:
    """On resume, load the latest checkpoint into ``net``, ``optimizer`` and ``tracker`` and return its
    trainer state (the loop takes its own counters from it); on a fresh start save the step-0 weights."""
    checkpoints, writer = session.checkpoints, session.writer
    latest = checkpoints.latest() if session.run.resume else None
    if latest is None:
        writer.rewind(0, 0)  # a resumed run killed before its first checkpoint starts over
        checkpoints.save_initial(net)
        return None
    checkpoints.load_weights(net, latest, session.device)
    saved = checkpoints.load_state(latest)
    optimizer.load_state_dict(saved["optimizer"])
    tracker.load(saved["tracker"])
    session.seconds_before = saved["train_seconds"]
    writer.rewind(saved["metrics_lines"], saved["step"])
    return saved


def save_checkpoint(
    session: Session,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    tracker: EpisodeTracker,
    step: int,
    reason: str,
    **counters: Any,
) -> CheckpointRef:
    """Weights (safetensors) and a ``weights_only`` trainer state: optimizer, episode statistics, the
    loop's own ``counters`` (numbers, strings, lists and dicts of them) and the metrics position."""
    state = {
        "optimizer": optimizer.state_dict(),
        "tracker": tracker.state(),
        "metrics_lines": session.writer.lines,
        "train_seconds": session.train_seconds,
        "reason": reason,
        **counters,
    }
    return session.checkpoints.save(net, state, step)


def evaluate_during_training(
    session: Session, net: nn.Module, step: int, episodes: int, best: float | None
) -> tuple[dict[str, float], float, bool]:
    """Evaluation episodes (the same seeds every time, so evaluations compare); logs them and returns
    (metrics, best mean return so far, whether this one is the best)."""
    run, trainer = session.run, session.run.config.trainer
    metrics = episode_metrics(
        play_episodes(
            net, trainer.env, trainer.eval_episodes, seed=run.config.seed + 1_000_000,
            epsilon=trainer.eval_epsilon, max_episode_steps=trainer.max_episode_steps, device=session.device,
        )
    )  # fmt: skip
    session.writer.log(metrics, step, episodes)
    value = metrics["eval/return_mean"]
    improved = best is None or value > best
    return metrics, value if improved else best, improved


# --------------------------------------------------------------------------------------------------
# Playing episodes with a trained network (evaluation, fdl eval, fdl play).


@dataclass
class Episode:
    ret: float
    length: int


@torch.no_grad()
def play_episodes(
    net: nn.Module,
    env_id: str,
    episodes: int,
    *,
    seed: int,
    epsilon: float = 0.0,
    max_episode_steps: int = 0,
    device: torch.device | str = "cpu",
    render_mode: str | None = None,
    on_frame: Callable[[np.ndarray], None] | None = None,
) -> list[Episode]:
    """Play ``episodes`` episodes one after another (seeded, so an evaluation is repeatable)."""
    env = make_env(env_id, max_episode_steps, render_mode=render_mode)
    rng = np.random.default_rng(seed)
    n_actions = int(env.action_space.n)
    was_training = net.training
    net.eval()
    results = []
    try:
        for index in range(episodes):
            obs, _ = env.reset(seed=seed + index)
            total, length, done = 0.0, 0, False
            while not done:
                if on_frame is not None:
                    on_frame(env.render())
                q = net(torch.as_tensor(np.asarray(obs)[None], device=device))
                action = int(epsilon_greedy(q.argmax(dim=1), epsilon, n_actions, rng)[0])
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                length += 1
                done = terminated or truncated
            if on_frame is not None:
                on_frame(env.render())
            results.append(Episode(total, length))
    finally:
        env.close()
        net.train(was_training)
    return results


def episode_metrics(episodes: list[Episode], prefix: str = "eval") -> dict[str, float]:
    returns = np.array([e.ret for e in episodes])
    return {
        f"{prefix}/return_mean": float(returns.mean()),
        f"{prefix}/return_std": float(returns.std()),
        f"{prefix}/return_min": float(returns.min()),
        f"{prefix}/return_max": float(returns.max()),
        f"{prefix}/length_mean": float(np.mean([e.length for e in episodes])),
        f"{prefix}/episodes": float(len(episodes)),
    }


# Networks of the RL experiments by experiment name, so `fdl play` and `fdl eval` can rebuild them.
NETWORKS: dict[str, Callable[[RunConfig], nn.Module]] = {}


def load_network(run: Run, which: str, device: torch.device) -> nn.Module:
    build = NETWORKS.get(run.config.name)
    if build is None:
        raise ConfigError(f"{run.config.name} is not a reinforcement-learning experiment")
    checkpoints = CheckpointManager(run.checkpoint_dir, run.config.name)
    ref = checkpoints.resolve(which)
    net = build(run.config).to(device)
    checkpoints.load_weights(net, ref, device)
    return net


def evaluate_run(run: Run, which: str, split: str) -> dict[str, float]:
    """``fdl eval RUN``: evaluation episodes of a checkpoint (the data split does not apply to RL)."""
    trainer = run.config.trainer
    device = resolve_device(trainer.device)
    configure_threads(trainer.threads)
    net = load_network(run, which, device)
    # seeds past the ones training evaluations used, so this is a fresh sample of episodes
    episodes = play_episodes(
        net,
        trainer.env,
        trainer.eval_episodes,
        seed=run.config.seed + 10_000_000,
        epsilon=trainer.eval_epsilon,
        max_episode_steps=trainer.max_episode_steps,
        device=device,
    )
    metrics = episode_metrics(episodes)
    run.write_eval(which, which, metrics, "episodes")
    return metrics


def register_rl(build_network: Callable[[RunConfig], nn.Module], **spec_fields: Any) -> ExperimentSpec:
    NETWORKS[spec_fields["name"]] = build_network
    return register(ExperimentSpec(custom_evaluate=evaluate_run, **spec_fields))
