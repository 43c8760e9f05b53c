"""What the chapter-9 agents share: environments, the solve criterion, evaluation episodes, the task base.

Both agents (``policy_gradient.py`` and ``dqn.py``) are tasks (:class:`RLTask`) of the engine's one loop
(fdlcli/engine/loop.py), which owns checkpoints, resume, the best checkpoint (``trainer.monitor``, by
default ``eval/return_mean``, max), the summary and ``fdl eval``. Both act greedily by taking the
arg-max of their network's output (action probabilities or Q-values), so one evaluation routine serves
both: the periodic evaluation during training (``evaluate("val")``) and ``fdl eval RUN``
(``evaluate("test")``, fresh episodes) play ``eval_episodes`` episodes with ``eval_epsilon``
exploration, and ``fdl play`` plays, renders and records episodes with the same code.

gymnasium 1.x semantics used throughout: an episode ends when ``terminated`` (the MDP ended: no
bootstrapping) or ``truncated`` (a time limit: bootstrap from the final observation) is set; an ended
environment resets on the *next* step call (next-step autoreset), which returns the first observation of
the new episode with reward 0 and ignores the action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fdlcli.config import RunConfig, TrainerConfig
from fdlcli.engine.optim import build_optimizer
from fdlcli.engine.task import Task
from fdlcli.errors import CheckpointError, ConfigError, UsageError


@dataclass
class RLTrainerConfig(TrainerConfig):
    """Keys every RL experiment adds to ``trainer`` (``epochs`` and the data group do not apply)."""

    monitor: str = "eval/return_mean"  # the best checkpoint: highest mean evaluation return
    monitor_mode: str = "max"
    env: str = "CartPole-v1"
    max_episode_steps: int = 0  # 0 = the environment's own limit (CartPole-v1: 500)
    solve_return: float = 475.0  # CartPole-v1 is solved at an average return of 475 ...
    solve_window: int = 100  # ... over this many consecutive training episodes
    stop_when_solved: bool = True
    eval_episodes: int = 10  # episodes per evaluation (during training, at the end, and `fdl eval`)
    eval_epsilon: float = 0.0  # exploration during evaluation (Atari: 0.05 so a stuck agent still fires)
    # a partially observable CartPole: the agent sees the cart position and pole angle, not their
    # velocities (the POMDP test of the DRQN paper, in the spirit of its flickering Atari frames)
    hide_velocity: bool = False

    def check(self) -> str | None:
        if self.solve_window <= 0 or self.eval_episodes <= 0:
            return "trainer.solve_window and trainer.eval_episodes must be positive"
        if not 0.0 <= self.eval_epsilon <= 1.0:
            return f"trainer.eval_epsilon={self.eval_epsilon} is not a probability"
        if self.max_episode_steps < 0:
            return "trainer.max_episode_steps must not be negative"
        if self.hide_velocity and self.env not in POSITION_ENTRIES:
            return (
                f"trainer.hide_velocity=true: {self.env} has no known velocity entries to hide "
                f"(known: {', '.join(POSITION_ENTRIES)})"
            )
        return None


def is_atari(env_id: str) -> bool:
    return env_id.startswith("ALE/")


def is_minatar(env_id: str) -> bool:
    return env_id.startswith("MinAtar/")  # 10 x 10 x channels boolean grids (``_minatar.py``)


# the entries of a flat observation that are positions (what ``hide_velocity`` keeps)
POSITION_ENTRIES = {"CartPole-v0": (0, 2), "CartPole-v1": (0, 2)}  # cart position, pole angle


def make_env(
    env_id: str,
    max_episode_steps: int = 0,
    frame_stack: int | None = None,
    render_mode: str | None = None,
    hide_velocity: bool = False,
) -> Any:
    """One environment; Atari ones get the DQN preprocessing (84x84 grey, frame skip 4, noop starts, a stack
    of ``frame_stack`` frames, 4 by default; the stack repeats the first frame at an episode start).
    Flat observations are stacked only when ``frame_stack`` > 1 (the last N observations, padded the same
    way); ``hide_velocity`` keeps only their position entries (before stacking). ``max_episode_steps``
    counts agent steps (for Atari: 4 frames each)."""
    import gymnasium as gym
    from gymnasium.wrappers import FrameStackObservation

    if hide_velocity and env_id not in POSITION_ENTRIES:  # Atari included
        raise ConfigError(
            f"trainer.hide_velocity=true: {env_id} has no known velocity entries to hide "
            f"(known: {', '.join(POSITION_ENTRIES)})"
        )
    kwargs: dict[str, Any] = {"render_mode": render_mode}
    if not is_atari(env_id):
        if max_episode_steps:
            kwargs["max_episode_steps"] = max_episode_steps
        try:
            if is_minatar(env_id):
                from fdlcli.experiments import _minatar

                env = _minatar.make(env_id, **kwargs)
            else:
                env = gym.make(env_id, **kwargs)
        except gym.error.Error as exc:
            raise ConfigError(f"cannot make environment {env_id!r}: {exc}") from None
        if hide_velocity:
            env = keep_entries(env, POSITION_ENTRIES[env_id])
        if frame_stack is not None and frame_stack > 1:
            env = FrameStackObservation(env, frame_stack, padding_type="reset")
        return env
    try:
        import ale_py
        from gymnasium.wrappers import AtariPreprocessing, TimeLimit

        from fdlcli.experiments._atari import SeededAtariReset
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
    env = AtariPreprocessing(
        SeededAtariReset(env), noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True
    )
    if max_episode_steps:  # outside the frame skipping, so that it counts agent steps, not frames
        env = TimeLimit(env, max_episode_steps)
    return FrameStackObservation(env, 4 if frame_stack is None else frame_stack, padding_type="reset")


def make_trainer_env(trainer: Any, render_mode: str | None = None) -> Any:
    """The environment an RL run's trainer config describes (its evaluation and ``fdl play`` episodes)."""
    return make_env(
        trainer.env, trainer.max_episode_steps, getattr(trainer, "frame_stack", None), render_mode,
        trainer.hide_velocity,
    )  # fmt: skip


def keep_entries(env: Any, entries: tuple[int, ...]) -> Any:
    """``env`` whose flat observations keep only ``entries`` (a partially observable environment)."""
    import gymnasium as gym

    space = env.observation_space
    index = np.array(entries)
    kept = gym.spaces.Box(space.low[index], space.high[index], dtype=space.dtype)
    return gym.wrappers.TransformObservation(env, lambda obs: obs[index], kept)


def mlp_layers(n_inputs: int, hidden: list[int]) -> list[nn.Module]:
    """Linear + ReLU layers of the given widths (the output layer is the caller's)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_inputs, width), nn.ReLU()]
        n_inputs = width
    return layers


NATURE_FEATURES = 512


def nature_layers(frames: int) -> list[nn.Module]:
    """The Nature DQN network up to its 512 features, for a stack of 84x84 frames (scaled to [0, 1] by the
    caller): conv 32 8x8/4, conv 64 4x4/2, conv 64 3x3/1, fc 512, ReLUs between."""
    return [
        nn.Conv2d(frames, 32, 8, stride=4), nn.ReLU(),
        nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
        nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, NATURE_FEATURES), nn.ReLU(),
    ]  # fmt: skip


class ChannelsFirst(nn.Module):
    """Height x width x channels observations (MinAtar's) -> channels x height x width, as convolutions
    take them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def grid_conv_layers(shape: tuple[int, ...], env_id: str) -> tuple[list[nn.Module], int]:
    """The convolution of MinAtar's reference networks (Young & Tian 2019) for height x width x channels
    grids of 0/1 cells: 16 3x3 filters, stride 1, ReLU, flattened. Returns the layers and their number of
    output features."""
    if len(shape) != 3 or min(shape[:2]) < 3:
        raise ConfigError(
            f"model.network=minatar needs height x width x channels grids (MinAtar/...), {env_id} gives "
            f"observations of shape {tuple(shape)}"
        )
    height, width, channels = shape
    layers = [ChannelsFirst(), nn.Conv2d(channels, 16, 3), nn.ReLU(), nn.Flatten()]
    return layers, 16 * (height - 2) * (width - 2)


def make_vector_env(
    env_id: str,
    num_envs: int,
    max_episode_steps: int = 0,
    frame_stack: int | None = None,
    hide_velocity: bool = False,
) -> Any:
    """``num_envs`` copies stepped in this process (the CPUs are better spent on learning than on IPC)."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    def thunk() -> Any:
        return make_env(env_id, max_episode_steps, frame_stack, hide_velocity=hide_velocity)

    return SyncVectorEnv([thunk] * num_envs, autoreset_mode=AutoresetMode.NEXT_STEP)


class SeededEnvs:
    """``num_envs`` environments stepped together, every episode seeded from (seed, environment, episode).

    Next-step autoreset, as gymnasium's vector environments do it, but with a seed per episode: the step
    after an environment's episode ended resets it (its action is ignored, its reward is 0) with the seed
    of its next episode. An environment's state is then a function of its episode's seed and of the
    actions taken since that episode began (sticky actions are off, and Atari's no-op starts draw from
    the RNG that the reset seeds), so a checkpoint holds just those small integer arrays and a resumed
    run replays them to continue the very same episodes (:meth:`load_state_dict`).
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        max_episode_steps: int = 0,
        frame_stack: int | None = None,
        hide_velocity: bool = False,
        first_index: int = 0,
    ) -> None:
        self.envs = [
            make_env(env_id, max_episode_steps, frame_stack, hide_velocity=hide_velocity)
            for _ in range(num_envs)
        ]
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.num_envs, self.seed = num_envs, seed
        # the run-wide index of the first of these environments (A3C: one per worker process, each the
        # environment ``first_index`` of the run), so that no two environments share episode seeds
        self.first_index = first_index
        self.episode = np.zeros(num_envs, dtype=np.int64)  # the episode each environment plays (0-based)
        self.actions: list[list[int]] = [[] for _ in range(num_envs)]  # since that episode began
        self.ended = np.zeros(num_envs, dtype=bool)  # its last step ended the episode: the next resets

    def episode_seed(self, index: int) -> int:
        key = [self.seed, self.first_index + index, int(self.episode[index])]
        return int(np.random.SeedSequence(key).generate_state(1)[0])

    def reset(self) -> np.ndarray:
        """Start every environment's first episode; returns the observations."""
        self.episode[:], self.ended[:] = 0, False
        self.actions = [[] for _ in range(self.num_envs)]
        return np.stack([env.reset(seed=self.episode_seed(i))[0] for i, env in enumerate(self.envs)])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(observations, rewards, terminated, truncated) of one step of every environment."""
        observations = []
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        for i, env in enumerate(self.envs):
            if self.ended[i]:  # a reset step
                self.episode[i] += 1
                self.actions[i] = []
                obs, _ = env.reset(seed=self.episode_seed(i))
            else:
                action = int(actions[i])
                obs, rewards[i], terminated[i], truncated[i], _ = env.step(action)
                self.actions[i].append(action)
            observations.append(obs)
        self.ended = terminated | truncated
        return np.stack(observations), rewards, terminated, truncated

    def state_dict(self, observations: np.ndarray) -> dict[str, Any]:
        """What :meth:`load_state_dict` needs to rebuild the environments, and the observations they
        gave last (to check the replay against)."""
        return {
            "episode": torch.from_numpy(self.episode.copy()),
            "ended": torch.from_numpy(self.ended.copy()),
            "actions": [torch.tensor(actions, dtype=torch.int64) for actions in self.actions],
            "observations": torch.from_numpy(np.array(observations)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> np.ndarray:
        """Reset each environment with its episode's seed and replay that episode's actions; returns the
        observations reached (checked against the saved ones)."""
        if len(state["actions"]) != self.num_envs:
            raise CheckpointError(
                f"the checkpoint holds {len(state['actions'])} environments, the config {self.num_envs}; "
                f"resume with trainer.num_envs={len(state['actions'])}"
            )
        self.episode = state["episode"].numpy().copy()
        self.ended = state["ended"].numpy().copy()
        self.actions = [[int(a) for a in actions.tolist()] for actions in state["actions"]]
        observations = []
        for i, env in enumerate(self.envs):
            obs, _ = env.reset(seed=self.episode_seed(i))
            for action in self.actions[i]:
                obs = env.step(action)[0]
            observations.append(obs)
        replayed = np.stack(observations)
        if not np.array_equal(replayed, state["observations"].numpy()):
            raise CheckpointError(
                "replaying the episodes in progress did not reach the checkpoint's observations "
                "(was the environment or gymnasium changed?)"
            )
        return replayed

    def close(self) -> None:
        for env in self.envs:
            env.close()


def epsilon_greedy(
    greedy: torch.Tensor | Callable[[np.ndarray], torch.Tensor],
    epsilon: float,
    n_actions: int,
    rng: np.random.Generator,
    count: int | None = None,
) -> np.ndarray:
    """Replace each greedy action by a uniformly random one with probability ``epsilon``.

    ``greedy``: the greedy actions, or a function computing them (a network's forward) for the ``count``
    actions' boolean mask of those that act greedily: it is called only when some action is greedy, and
    returns the greedy actions of those alone, so a forward runs on just the observations acted on (while
    epsilon is near 1, seldom and on a few). The random draws are the same either way."""
    count = len(greedy) if count is None else count  # type: ignore[arg-type]
    explore = rng.random(count) < epsilon if epsilon > 0 else np.zeros(count, dtype=bool)
    random_actions = rng.integers(0, n_actions, count) if epsilon > 0 else np.zeros(count, dtype=np.int64)
    if explore.all():
        return random_actions
    if callable(greedy):
        actions = random_actions.copy()
        actions[~explore] = greedy(~explore).cpu().numpy()
        return actions
    return np.where(explore, random_actions, greedy.cpu().numpy())


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
# The task both agents build on.


class RLTask(Task):
    """An agent trained in steps by the engine's loop. Subclasses build the network
    (:meth:`build_network`, also what ``fdl play`` loads weights into), play and learn in ``train_step``,
    report finished episodes with :meth:`episode_ended` and set ``self.epsilon``; this class evaluates,
    keeps the episode statistics and the solve criterion, and says how the run went."""

    unit = "steps"
    # the network runs under bf16 autocast and torch.compile; no data parallelism, no lr schedule (a
    # subclass that declares "schedule" applies it), and no data group (RL runs have no dataset to limit)
    supports = frozenset({"precision", "compile", "checkpoint_every"})
    progress_value = "loss"
    # fdl eval RUN --split ...: seeds of its episodes (val: those of the evaluations during training)
    EVAL_SEEDS: ClassVar[dict[str, int]] = {"val": 1_000_000, "test": 10_000_000}
    fused_optimizer: ClassVar[bool] = False  # build_optimizer(fused=...): many small updates per second

    @classmethod
    def build_network(cls, config: RunConfig) -> nn.Module:
        """The network whose weights a checkpoint holds (``self.model``); its forward maps a batch of
        observations to one score per action, the greedy action being the arg-max."""
        raise NotImplementedError

    def trained_parameters(self) -> Any:
        return self.model.parameters()

    def setup(self) -> None:
        trainer = self.config.trainer
        self.model = self.build_network(self.config).to(self.device)
        self.optimizer = build_optimizer(
            self.config.optim,
            self.trained_parameters(),
            scheduled="schedule" in self.supports,
            fused=self.fused_optimizer,
        )
        self.tracker = EpisodeTracker(trainer.solve_window, trainer.solve_return)
        self.epsilon = float("nan")  # the exploration of the latest step

    # ---- episodes ------------------------------------------------------------------------------------

    def episode_ended(self, episode_return: float, step: int) -> None:
        """A training episode finished (its return is logged at ``step``)."""
        tracker = self.tracker
        if tracker.add(episode_return):
            self.message(
                f"solved: average return {tracker.average:.1f} over {tracker.window} episodes "
                f"after {tracker.episodes} episodes, {tracker.env_steps} agent steps"
            )
        self.log({"train/return": episode_return}, step=step)

    def finished(self) -> bool:
        return self.config.trainer.stop_when_solved and self.tracker.solved_at is not None

    def record_epoch(self) -> int:
        return self.tracker.episodes  # the "epoch" field of an RL run's records counts episodes

    # ---- evaluation ----------------------------------------------------------------------------------

    def evaluate(self, split: str) -> dict[str, float]:
        """``eval_episodes`` episodes (the same seeds every time, so evaluations compare)."""
        if split not in self.EVAL_SEEDS:
            raise UsageError(
                f"--split {split}: a reinforcement-learning run is evaluated on episodes: "
                "test (fresh ones) or val (those of the evaluations during training)"
            )
        trainer = self.config.trainer
        episodes = play_episodes(
            self.model, trainer, trainer.eval_episodes, seed=self.config.seed + self.EVAL_SEEDS[split],
            epsilon=trainer.eval_epsilon, device=self.device,
        )  # fmt: skip
        return episode_metrics(episodes)

    def after_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        tracker = self.tracker
        self.message(
            f"  {tracker.episodes} episodes, average training return {tracker.average:.1f} "
            f"(last {len(tracker.returns)}), epsilon {self.epsilon:.3f}"
        )

    # ---- state and the end ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tracker.load(state["tracker"])

    def summary_fields(self) -> dict[str, Any]:
        tracker = self.tracker
        return {
            "episodes": tracker.episodes,
            "solved": tracker.solved_at is not None,
            "solved_at": tracker.solved_at,
            "train_return_avg": tracker.average,
        }

    def done_message(self, summary: dict[str, Any]) -> str:
        tracker, solved = self.tracker, self.tracker.solved_at
        if solved:
            return f"solved after {solved['episodes']} episodes, {solved['env_steps']} agent steps"
        return (
            f"not solved: {tracker.episodes} episodes in {tracker.env_steps} agent steps, "
            f"average return {tracker.average:.1f}"
        )


# --------------------------------------------------------------------------------------------------
# Playing episodes with a trained network (evaluation, fdl eval, fdl play).


@dataclass
class Episode:
    ret: float
    length: int


@torch.no_grad()
def play_episodes(
    net: nn.Module,
    trainer: RLTrainerConfig,
    episodes: int,
    *,
    seed: int,
    epsilon: float = 0.0,
    device: torch.device | str = "cpu",
    render_mode: str | None = None,
    on_frame: Callable[[np.ndarray], None] | None = None,
) -> list[Episode]:
    """Play ``episodes`` episodes of the run's environment one after another (seeded, so an evaluation is
    repeatable). A recurrent network (one with ``initial_state(batch)`` and ``step(obs, state)`` returning
    (scores, state), DRQN) carries its state from step to step and starts each episode from zero; one that
    also takes the last action and reward as inputs (UNREAL) has ``feedback(state, action, reward)``, which
    puts them into its state after each step."""
    env = make_trainer_env(trainer, render_mode)
    rng = np.random.default_rng(seed)
    n_actions = int(env.action_space.n)
    recurrent = hasattr(net, "initial_state")
    feedback = getattr(net, "feedback", None)
    was_training = net.training
    net.eval()
    results = []
    try:
        for index in range(episodes):
            obs, _ = env.reset(seed=seed + index)
            state = net.initial_state(1) if recurrent else None
            total, length, done = 0.0, 0, False
            while not done:
                if on_frame is not None:
                    on_frame(env.render())
                batch = torch.as_tensor(np.asarray(obs)[None], device=device)
                if recurrent:
                    q, state = net.step(batch, state)
                else:
                    q = net(batch)
                action = int(epsilon_greedy(q.argmax(dim=1), epsilon, n_actions, rng)[0])
                obs, reward, terminated, truncated, _ = env.step(action)
                if feedback is not None:
                    state = feedback(state, action, float(reward))
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
