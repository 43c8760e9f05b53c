"""Chapter 9's UNREAL (`unreal-minatar`) and its baseline (`a3c-minatar`): the auxiliary tasks' targets and
samples on hand-made inputs, replay seeing what acting saw, exact resume (in process, then through SIGTERM),
and `fdl train`, `fdl eval` and `fdl play --record` of both agents."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from conftest import fdl_in_process, read_summary, run_dirs

from fdlcli import config
from fdlcli.engine.seed import seed_everything
from fdlcli.errors import ConfigError
from fdlcli.experiments._rl import make_env
from fdlcli.experiments.dqn import ReplayBuffer
from fdlcli.experiments.unreal import (
    UNREALTask,
    last_inputs,
    pixel_change,
    pixel_control_targets,
    sample_reward_frames,
)

# a small agent on 2 environments whose replay buffer fills after 20 steps of each
SMALL = [
    "trainer.num_envs=2", "trainer.buffer_size=40", "trainer.replay_length=5", "trainer.replay_batch=2",
    "model.hidden=[32]", "model.lstm=32", "trainer.eval_episodes=2", "trainer.log_every=10",
    "trainer.histograms=false", "trainer.max_episode_steps=200",
]  # fmt: skip


def small(*overrides: str) -> list[str]:
    """SMALL with ``overrides`` in place of its values for the same keys."""
    keys = {override.split("=")[0] for override in overrides}
    return [*(o for o in SMALL if o.split("=")[0] not in keys), *overrides]


def test_minatar_episodes_depend_on_their_seed_and_actions_only():
    """MinAtar's sticky actions repeat the previous action, which it keeps across resets: an episode must
    not depend on what the environment played before (SeededEnvs replays episodes on resume)."""
    env = make_env("MinAtar/Breakout-v1", 300, frame_stack=1)
    actions = np.random.default_rng(0).integers(0, 3, 300)
    played = []
    for before in ([], [2] * 5, [1, 0, 2]):  # different histories before the seeded reset
        env.reset(seed=1)
        for action in before:
            env.step(action)
        trajectory = [env.reset(seed=7)[0]]
        for action in actions:
            obs, _, terminated, truncated, _ = env.step(int(action))
            trajectory.append(obs)
            if terminated or truncated:
                break
        played.append(np.stack(trajectory))
    env.close()
    assert len(played[0]) > 1 and all(np.array_equal(played[0], other) for other in played[1:])


def test_pixel_change_is_the_mean_absolute_change_of_each_cell():
    frames = torch.zeros(1, 2, 2, 4, 2)  # batch x time+1 x height x width x channels
    frames[0, 1, 0, 0, 0] = 1.0  # one of two channels changes: 0.5 at that pixel
    frames[0, 1, 1, 3, :] = 1.0  # both change: 1.0
    frames[0, 0, 1, 3, :] = 0.0
    assert pixel_change(frames, 2).tolist() == [[[[0.5 / 4, 1.0 / 4]]]]  # 2x2 cells: the mean over 4
    per_pixel = pixel_change(frames, 1)[0, 0]
    assert per_pixel[0, 0] == 0.5 and per_pixel[1, 3] == 1.0 and per_pixel.sum() == 1.5


def test_pixel_control_targets_are_n_step_q_learning_per_cell():
    """Three steps of two environments, 1x2 cells, gamma 0.5. Env 0 terminates at t=1 (no bootstrap) and
    takes a reset step at t=2 (its target: its own max Q); env 1 is truncated at t=0, so it bootstraps
    from max Q of the final observation (the reset step t=1), and its last step from max Q(s_3)."""
    pseudo = torch.tensor([[[1.0, 0.0], [2.0, 2.0]], [[0.0, 2.0], [7.0, 7.0]], [[1.0, 1.0], [0.0, 4.0]]])
    terminated = torch.tensor([[False, False], [True, False], [False, False]])
    valid = torch.tensor([[True, True], [True, False], [False, True]])
    best = torch.tensor(
        [
            [[9.0, 9.0], [9.0, 9.0]],
            [[9.0, 9.0], [6.0, 8.0]],
            [[5.0, 6.0], [9.0, 9.0]],
            [[3.0, 4.0], [2.0, 2.0]],
        ]
    )
    targets = pixel_control_targets(pseudo[:, :, None], terminated, valid, best[:, :, None], 0.5)
    assert targets[:, 0, 0].tolist() == [[1.0, 1.0], [0.0, 2.0], [5.0, 6.0]]
    assert targets[:, 1, 0].tolist() == [[5.0, 6.0], [6.0, 8.0], [1.0, 5.0]]


def _filled_buffer() -> tuple[ReplayBuffer, dict[tuple[int, int], tuple[int, bool, float]]]:
    """20 rows of 2 environments after 30 steps (wrapped): episodes of 5 real steps and a reset step; a
    frame holds 10 t + env; rare rewards, +1 and -1. Also what each (t, env) was: since start, real, reward."""
    buffer = ReplayBuffer(40, 2, (1,), torch.float32, 1)
    since, ended, truth = np.zeros(2, dtype=np.int64), np.zeros(2, dtype=bool), {}
    for t in range(30):
        real = ~ended
        terminated = real & (since == 4)
        rewards = np.array([1.0 if (t + e) % 7 == 0 else -1.0 if (t + e) % 11 == 0 else 0.0 for e in (0, 1)])
        rewards = rewards * real
        for e in (0, 1):
            truth[t, e] = (int(since[e]), bool(real[e]), float(rewards[e]))
        frames = np.array([[10.0 * t + e] for e in (0, 1)], dtype=np.float32)
        buffer.add(frames, since.copy(), np.zeros(2, dtype=np.int64), rewards, terminated, real)
        since, ended = np.where(real, since + 1, 0), terminated
    return buffer, truth


def test_reward_prediction_samples_are_half_rewarding_and_within_one_episode():
    assert sample_reward_frames(ReplayBuffer(40, 2, (1,), torch.float32, 1), 4, torch.Generator()) is None
    buffer, truth = _filled_buffer()
    frames, classes = sample_reward_frames(buffer, 4000, torch.Generator().manual_seed(0))
    codes = frames[:, :, 0].round().long()
    times, envs = codes // 10, codes % 10
    assert (envs == envs[:, :1]).all() and (times.diff(dim=1) == 1).all()  # consecutive, one environment
    assert times.min() >= 10  # rows still stored (the buffer wrapped after 20)
    for t, e, kind in zip(times[:, -1].tolist(), envs[:, 0].tolist(), classes.tolist(), strict=True):
        since, real, reward = truth[t, e]
        assert real and since >= 2  # the three frames lie in one episode, the last one's step is real
        assert kind == {0.0: 0, 1.0: 1, -1.0: 2}[reward]
    rewarding = (classes != 0).float().mean().item()
    assert 0.45 < rewarding < 0.55 and {1, 2} <= set(classes.tolist())  # rare in the buffer, half sampled


def _task(*overrides: str) -> UNREALTask:
    cfg = config.validate(config.compose("unreal-minatar", small(*overrides)))
    seed_everything(cfg.seed)
    task = UNREALTask(cfg, torch.device("cpu"), None)
    task.setup()
    task.train_model = task.model
    return task


def test_replayed_windows_see_what_acting_saw():
    """Unrolled from the replay buffer (last actions and rewards rebuilt from the rows, the state zeroed
    where episodes start), the network computes the very logits and values acting computed, across
    episode ends (truncated after 6 steps) and their reset steps."""
    torch.set_num_threads(1)
    task = _task("trainer.t_max=16", "trainer.max_episode_steps=6", "trainer.buffer_size=64")
    actor = task.make_actor()
    try:
        with torch.no_grad():
            rollout = actor.rollout(task.model)
    finally:
        actor.close()
    buffer = task.buffer
    columns = [getattr(buffer, name)[:16].T for name in ("actions", "rewards", "since_start")]
    actions, rewards, since_start = columns
    starts = since_start == 0
    assert starts[:, 0].all() and starts[:, 1:].any() and not buffer.valid[:16].all()  # resets inside
    obs = buffer.frames[:16].transpose(0, 1)
    with torch.no_grad():
        hidden = task.model.unroll(obs, *last_inputs(actions, rewards, starts), starts)
        torch.testing.assert_close(task.model.policy(hidden), rollout.logits.transpose(0, 1))
        torch.testing.assert_close(task.model.value(hidden).squeeze(-1), rollout.values.T)


def _train(task: UNREALTask, position: int, steps: int) -> int:
    """``steps`` steps of the loop: the task's step, then the loop's update of its loss."""
    for _ in range(steps):
        out = task.train_step(position, position)
        task.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(task.model.parameters(), task.trainer.grad_clip)
        task.optimizer.step()
        position += out.advance
    return position


def test_a_resumed_task_continues_exactly():
    """A task rebuilt from what a checkpoint holds (weights, optimizer, torch RNG, its state through
    torch.load(weights_only=True), the replay buffer's arrays) continues exactly as the original."""
    torch.set_num_threads(1)
    original = _task()
    try:
        position = _train(original, 0, 6)  # the buffer is full from the 4th step on: aux losses learn
        buffer = io.BytesIO()
        torch.save(original.state_dict(), buffer)
        saved = (
            copy.deepcopy(original.model.state_dict()), copy.deepcopy(original.optimizer.state_dict()),
            torch.get_rng_state(), buffer.getvalue(), {k: v.copy() for k, v in original.save_arrays().items()},
        )  # fmt: skip
        end = _train(original, position, 6)
    finally:
        original.close()
    assert original.window_parts[3:].abs().min() > 0  # pixel control, reward prediction, value replay
    resumed = _task()
    try:
        weights, optimizer, rng, state, arrays = saved
        resumed.model.load_state_dict(weights)
        resumed.optimizer.load_state_dict(optimizer)
        torch.set_rng_state(rng)
        resumed.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        resumed.load_arrays(arrays)
        assert _train(resumed, position, 6) == end
    finally:
        resumed.close()
    assert resumed.tracker.returns == original.tracker.returns and resumed.updates == original.updates
    assert torch.equal(resumed.window_parts, original.window_parts)
    for name, value in original.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name


def test_unreal_refuses_what_it_cannot_do_in_one_line():
    for override, words in [
        ("trainer.mode=a3c", "trainer.mode"),
        ("trainer.aux=[pc,pc]", "trainer.aux"),
        ("trainer.aux=[reward]", "trainer.aux"),
        ("trainer.replay_length=30", "trainer.buffer_size"),
    ]:
        with pytest.raises(ConfigError) as refused:
            config.validate(config.compose("unreal-minatar", small(override)))
        assert words in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("name", ["a3c-minatar", "unreal-minatar"])
def test_train_evaluate_and_play(name, env, capsys):
    """Each new agent trains through `fdl train`, evaluates with `fdl eval` and plays and records with
    `fdl play --record` (in this process: a subprocess would cost seconds of start each)."""
    length = ["trainer.total_steps=200", "trainer.eval_every=100", "trainer.eval_episodes=1"]
    overrides = (
        small(*length) if name == "unreal-minatar" else ["trainer.num_envs=2", "model.hidden=[32]", *length]
    )
    code, err = fdl_in_process(["train", name, *overrides], capsys)
    assert code == 0, err
    (run,) = run_dirs(env, name)
    assert read_summary(run)["steps"] >= 200
    code, err = fdl_in_process(["eval", str(run)], capsys)
    assert code == 0 and (run / "eval-best-test.json").is_file(), err
    code, err = fdl_in_process(["play", str(run), "-n", "1", "--record", "--format", "gif"], capsys)
    assert code == 0, err
    (video,) = (run / "artifacts").glob("play-*.gif")
    assert video.stat().st_size > 1000
