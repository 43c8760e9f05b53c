"""Chapter 9: deep Q-learning, one code path for ``dqn-breakout`` (pixels) and ``dqn-cartpole`` (checks).

Book (TF 1.x): Breakout frames preprocessed to 84x84 grey, a stack of the last 4, the DQN convolutional
network (32 8x8/4, 64 4x4/2, 64 3x3/1, fc 512), a prediction and a periodically synced target network,
experience replay of 50,000 transitions, epsilon annealing, a clipped (Huber) error, Adam lr 1e-4, gamma
0.98, batch 32. The book shows an upward reward trend over 1,000 episodes; good play takes days.

What this module adds for speed on small machines: ``num_envs`` environments stepped together (one
batched forward per step), and a replay buffer that stores each 84x84 frame once (uint8) instead of four
times in stacked observations: an observation's stack is rebuilt at sampling time from the rows before
it, stopping at the episode's first frame exactly like ``FrameStackObservation(padding_type="reset")``.

Transitions under gymnasium 1.x next-step autoreset: the step that ends an episode returns the final
observation; the next ``step`` call of that sub-environment is a reset step (action ignored, reward 0)
returning the new episode's first observation. The buffer stores every returned observation in its
environment's column, marks steps taken from a final observation as invalid, and bootstraps a
truncated episode (a time limit) from its final observation but a terminated one not at all.

Resume restores the online and target networks, the optimizer, the step and update counters (so the
epsilon schedule continues where it was), the episode statistics and the evaluation history. It does not
restore the replay buffer (50,000 Atari frames are 350 MB) or the episodes in progress: the environments
restart and learning waits for ``learning_starts`` fresh steps, so a resumed run is not bit-identical to
an uninterrupted one (``pg-cartpole``, which keeps no buffer, is).
"""

from __future__ import annotations

import time
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
    is_atari,
    make_env,
    make_vector_env,
    register_rl,
    restore,
    save_checkpoint,
)
from fdlcli.runs import Run


@dataclass
class QNetworkConfig:
    network: str = "mlp"  # mlp (flat observations) | nature (the book's convolutional network, Atari)
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # mlp only

    def check(self) -> str | None:
        if self.network not in ("mlp", "nature"):
            return f"model.network={self.network!r}; choose from: mlp, nature"
        if any(width <= 0 for width in self.hidden):
            return f"model.hidden={self.hidden} must list positive layer widths"
        return None


@dataclass
class DQNTrainerConfig(RLTrainerConfig):
    total_steps: int = 100_000  # agent steps, summed over the environments (Atari: 4 frames each)
    num_envs: int = 4
    frame_stack: int = 4  # Atari only
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


class MLPQNetwork(nn.Sequential):
    def __init__(self, n_inputs: int, hidden: list[int], n_actions: int) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(n_inputs, width), nn.ReLU()]
            n_inputs = width
        super().__init__(*layers, nn.Linear(n_inputs, n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return super().forward(obs.float())


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
    env = make_env(trainer.env, frame_stack=trainer.frame_stack)
    shape, n_actions = env.observation_space.shape, int(env.action_space.n)
    env.close()

    def network() -> nn.Module:
        if config.model.network == "nature":
            if len(shape) != 3 or shape[1:] != (84, 84):
                raise ValueError(
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

    def observations(self, rows: torch.Tensor, envs: torch.Tensor) -> torch.Tensor:
        """The (stacked) observations at (rows, envs); a stack never reaches into the previous episode."""
        if self.stack == 1:
            return self.frames[rows, envs]
        back = torch.arange(self.stack - 1, -1, -1)  # oldest frame first, as FrameStackObservation orders
        offsets = torch.minimum(back[None, :], self.since_start[rows, envs][:, None])
        return self.frames[(rows[:, None] - offsets) % self.rows, envs[:, None]]

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
        next_rows = (rows + 1) % self.rows
        return (
            self.observations(rows, envs),
            self.actions[rows, envs],
            self.rewards[rows, envs],
            self.terminated[rows, envs],
            self.observations(next_rows, envs),
        )


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


@dataclass
class Counters:
    step: int = 0  # agent steps (real ones, summed over environments)
    updates: int = 0
    best: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def train(run: Run) -> dict[str, Any]:
    cfg = run.config
    trainer: DQNTrainerConfig = cfg.trainer
    with run_session(run) as session:
        device, checkpoints, writer = session.device, session.checkpoints, session.writer
        seed_everything(cfg.seed)
        agent = build_agent(cfg).to(device)
        optimizer = build_optimizer(cfg.optim, agent.online.parameters())
        tracker = EpisodeTracker(trainer.solve_window, trainer.solve_return)
        counters = Counters()
        saved = restore(session, agent, optimizer, tracker)
        if saved is not None:
            counters = Counters(saved["step"], saved["updates"], saved["best"], saved["history"])
            session.message(f"resumed at step {counters.step}; the replay buffer refills before learning")

        def save(reason: str) -> CheckpointRef:
            extra = {"updates": counters.updates, "best": counters.best, "history": counters.history}
            return save_checkpoint(session, agent, optimizer, tracker, counters.step, reason, **extra)

        n = trainer.num_envs
        stacked = is_atari(trainer.env)
        envs = make_vector_env(trainer.env, n, trainer.max_episode_steps, trainer.frame_stack)
        n_actions = int(envs.single_action_space.n)
        frame_space = envs.single_observation_space
        frame_shape = frame_space.shape[1:] if stacked else frame_space.shape
        dtype = torch.uint8 if frame_space.dtype == np.uint8 else torch.float32
        buffer = ReplayBuffer(
            trainer.buffer_size, n, frame_shape, dtype, trainer.frame_stack if stacked else 1
        )

        # a resumed run restarts its environments (and exploration RNG) from seeds tied to its step
        rng = np.random.default_rng([cfg.seed, counters.step])
        sampler = torch.Generator().manual_seed(cfg.seed * 1_000_003 + counters.step)
        obs, _ = envs.reset(seed=cfg.seed * 1_000_003 + counters.step)
        since_start = np.zeros(n, dtype=np.int64)
        final = np.zeros(n, dtype=bool)  # obs is the last of an episode: the next step is a reset step
        episode_return = np.zeros(n)
        learn_from = counters.step + trainer.learning_starts
        progress = session.start_progress(trainer.total_steps, counters.step, value_name="loss")
        loss_sum, q_sum, window = 0.0, 0.0, 0
        clock, cpu_clock, clock_step = time.monotonic(), time.process_time(), counters.step

        def done() -> bool:
            return counters.step >= trainer.total_steps or (
                trainer.stop_when_solved and tracker.solved_at is not None
            )

        while not done():
            epsilon = trainer.epsilon(counters.step)
            with torch.no_grad():
                q_values = agent(torch.as_tensor(obs, device=device))
            actions = epsilon_greedy(q_values.argmax(dim=1), epsilon, n_actions, rng)
            next_obs, reward, terminated, truncated, _ = envs.step(actions)
            real = ~final
            learn_reward = np.sign(reward) if trainer.clip_rewards else reward
            buffer.add(newest_frames(obs, stacked), since_start, actions, learn_reward, terminated, real)
            before = counters.step
            counters.step += int(real.sum())
            episode_return += reward * real
            ended = (terminated | truncated) & real
            for i in np.flatnonzero(ended):
                tracker.env_steps = counters.step
                if tracker.add(float(episode_return[i])):
                    session.message(
                        f"solved: average return {tracker.average:.1f} over {tracker.window} episodes "
                        f"after {tracker.episodes} episodes, {counters.step} agent steps"
                    )
                writer.log({"train/return": float(episode_return[i])}, counters.step, tracker.episodes)
                episode_return[i] = 0.0
            since_start = np.where(final, 0, since_start + 1)
            final, obs = ended, next_obs

            # ---- learning: one update per train_every agent steps, once enough experience is stored ----
            if counters.step >= learn_from:
                for _ in range(counters.step // trainer.train_every - before // trainer.train_every):
                    batch = [t.to(device) for t in buffer.sample(trainer.batch_size, sampler)]
                    loss, q_mean = td_loss(agent, batch, trainer.gamma, trainer.double)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if trainer.grad_clip:
                        nn.utils.clip_grad_norm_(agent.online.parameters(), trainer.grad_clip)
                    optimizer.step()
                    counters.updates += 1
                    loss_sum, q_sum, window = loss_sum + loss.detach(), q_sum + q_mean, window + 1
                    if counters.updates % trainer.log_every == 0:
                        loss_value = float(loss_sum) / window
                        session.check_finite(loss_value, counters.step)
                        window_steps = counters.step - clock_step
                        speed = window_steps / max(1e-9, time.monotonic() - clock)
                        # per CPU second too: the figure that stays meaningful on a shared, loaded machine
                        cpu_speed = window_steps / max(1e-9, time.process_time() - cpu_clock)
                        writer.log(
                            {
                                "train/loss": loss_value,
                                "train/q_mean": float(q_sum) / window,
                                "train/epsilon": epsilon,
                                "train/return_avg": tracker.average,
                                "train/steps_per_s": speed,
                                "train/steps_per_cpu_s": cpu_speed,
                            },
                            counters.step,
                            tracker.episodes,
                        )
                        loss_sum, q_sum, window = 0.0, 0.0, 0
                        clock, cpu_clock, clock_step = time.monotonic(), time.process_time(), counters.step
                        progress.update(counters.step, loss_value)
            if counters.step // trainer.target_update_every > before // trainer.target_update_every:
                agent.sync_target(trainer.target_tau)
            session.stop_if_requested(save)

            if counters.step // trainer.eval_every > before // trainer.eval_every or done():
                metrics, counters.best, improved = evaluate_during_training(
                    session, agent, counters.step, tracker.episodes, counters.best
                )
                counters.history.append(
                    {"step": counters.step, "episodes": tracker.episodes, "epsilon": epsilon, **metrics}
                )
                ref = save("evaluation")
                if improved:
                    checkpoints.mark_best(ref, "eval/return_mean", counters.best, tracker.episodes)
                run.write_summary(summary(run, tracker, counters, session.train_seconds, "running"))
                session.message(
                    f"step {counters.step}: {tracker.episodes} episodes, "
                    f"average return {tracker.average:.1f} (last {len(tracker.returns)}), "
                    f"epsilon {epsilon:.3f}, evaluation "
                    f"{metrics['eval/return_mean']:.1f}" + ("  *" if improved else "")
                )
        envs.close()
        result = summary(run, tracker, counters, session.train_seconds, "completed")
        run.write_summary(result)
        solved = tracker.solved_at
        session.message(
            (f"solved after {solved['episodes']} episodes, {solved['env_steps']} agent steps" if solved else
             f"{tracker.episodes} episodes in {counters.step} agent steps, "
             f"average return {tracker.average:.1f}")
            + f"; run dir {run.path}"
        )  # fmt: skip
        return result


def summary(
    run: Run, tracker: EpisodeTracker, counters: Counters, seconds: float, status: str
) -> dict[str, Any]:
    return {
        "experiment": run.config.name,
        "status": status,
        "steps": counters.step,
        "updates": counters.updates,
        "episodes": tracker.episodes,
        "solved": tracker.solved_at is not None,
        "solved_at": tracker.solved_at,
        "train_return_avg": tracker.average,
        "train_seconds": round(seconds, 2),
        "final": counters.history[-1] if counters.history else {},
        "best": {"metric": "eval/return_mean", "value": counters.best},
        "history": counters.history,
    }


_COMMON = dict(chapter=9, model_config=QNetworkConfig, trainer_config=DQNTrainerConfig, custom_train=train)
register_rl(
    build_agent,
    name="dqn-breakout",
    dataset="ALE/Breakout-v5",
    book_result="upward reward trend over 1,000 episodes",
    description="DQN from pixels: Nature conv net, replay, target network, Huber loss",
    **_COMMON,
)
register_rl(
    build_agent,
    name="dqn-cartpole",
    dataset="CartPole-v1",
    book_result="(not in the book: a quick check of the DQN code)",
    description="the dqn-breakout code path on CartPole, MLP Q-network",
    **_COMMON,
)
