"""Chapter 9: replay memory against gymnasium's own frame stacks, returns, configs, short real trainings,
exact resume of the agents, bf16 and compile, evaluation episodes and `fdl play`; the partially observable
CartPole and DRQN's windows."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    benchmark_module,
    copy_run,
    fdl,
    fdl_call,
    fdl_in_process,
    metric_records,
    read_summary,
    run_dirs,
)
from safetensors.torch import load_file

from fdlcli.errors import ConfigError
from fdlcli.experiments._rl import EpisodeTracker, epsilon_greedy, make_env, make_vector_env
from fdlcli.experiments.dqn import NatureQNetwork, ReplayBuffer, newest_frames
from fdlcli.experiments.drqn import RecurrentQNetwork, sample_windows, sequence_td_loss
from fdlcli.experiments.policy_gradient import discounted_returns


def _fill(env_id: str, num_envs: int, steps: int, capacity: int, stack: int, stacked: bool, seed: int = 3):
    """Random play into a buffer; returns the buffer and, per (row, env), the observation the env gave."""
    envs = make_vector_env(env_id, num_envs, max_episode_steps=40, frame_stack=stack)
    frame_shape = envs.single_observation_space.shape[1:] if stacked else envs.single_observation_space.shape
    dtype = torch.uint8 if envs.single_observation_space.dtype == np.uint8 else torch.float32
    buffer = ReplayBuffer(capacity, num_envs, frame_shape, dtype, stack if stacked else 1)
    rng = np.random.default_rng(seed)
    obs, _ = envs.reset(seed=seed)
    since, final = np.zeros(num_envs, dtype=np.int64), np.zeros(num_envs, dtype=bool)
    seen: dict[tuple[int, int], np.ndarray] = {}
    info = {"terminated": {}, "truncated_or_final": {}}
    for _ in range(steps):
        actions = rng.integers(0, envs.single_action_space.n, num_envs)
        next_obs, reward, terminated, truncated, _ = envs.step(actions)
        row = buffer.row
        for e in range(num_envs):
            seen[(row, e)] = np.array(obs[e])
            info["terminated"][(row, e)] = bool(terminated[e] and not final[e])
        buffer.add(newest_frames(obs, stacked), since, actions, reward, terminated, ~final)
        ended = (terminated | truncated) & ~final
        since = np.where(final, 0, since + 1)
        final, obs = ended, next_obs
    envs.close()
    return buffer, seen, info


@pytest.mark.parametrize("steps", [60, 130])  # 130 steps wrap the 200-transition buffer
def test_replay_rebuilds_atari_frame_stacks_exactly(steps):
    """Frames are stored once; every sampled stack must equal the stack FrameStackObservation produced,
    across episode starts (max_episode_steps=40 forces many) and after the buffer wraps around."""
    pytest.importorskip("ale_py")
    buffer, seen, info = _fill("ALE/Breakout-v5", 2, steps, capacity=200, stack=4, stacked=True)
    assert buffer.frames.dtype == torch.uint8 and buffer.frames.shape == (100, 2, 84, 84)
    generator = torch.Generator().manual_seed(0)
    obs, _, _, _, next_obs = buffer.sample(64, generator)
    assert obs.shape == (64, 4, 84, 84) and next_obs.shape == obs.shape
    # which (row, env) each sample came from: match against what the environment returned
    produced = {value.tobytes() for value in seen.values()}
    assert all(o.numpy().tobytes() in produced for o in obs), "a sampled stack the env never produced"
    assert all(o.numpy().tobytes() in produced for o in next_obs)
    # and directly: every storable row's rebuilt stack equals the env's stack
    filled = buffer.rows if buffer.full else buffer.row
    oldest = buffer.row if buffer.full else 0
    low = 3 if buffer.full else 0
    for offset in range(low, filled):
        row = (oldest + offset) % buffer.rows
        for e in range(2):
            rebuilt = buffer.observations(torch.tensor([row]), torch.tensor([e]))[0].numpy()
            assert np.array_equal(rebuilt, seen[(row, e)]), (row, e, offset)
            assert bool(buffer.terminated[row, e]) == info["terminated"][(row, e)]


def test_replay_flat_observations_and_next_step_autoreset():
    """CartPole: a transition never pairs a final observation with the next episode's first one."""
    buffer, _, _ = _fill("CartPole-v1", 3, 200, capacity=3000, stack=1, stacked=False)
    obs, _, rewards, _, next_obs = buffer.sample(512, torch.Generator().manual_seed(1))
    assert obs.shape == (512, 4) and rewards.eq(1.0).all()  # reset steps (reward 0) are never sampled
    # consecutive CartPole states differ by one physics step: small changes in position and angle
    assert (next_obs[:, 0] - obs[:, 0]).abs().max() < 0.2
    assert (next_obs[:, 2] - obs[:, 2]).abs().max() < 0.2


def test_seeded_atari_reset_plays_the_episodes_a_rom_reload_does():
    """make_env's seeded resets restore a saved start state instead of reloading the ROM: they must play
    exactly what ale_py's own seeded reset plays (same frames, rewards, ends), also when a seed comes
    back; and trainer.max_episode_steps counts agent steps (4 frames), not emulator frames."""
    pytest.importorskip("ale_py")
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    from fdlcli.experiments._rl import make_env

    fast = make_env("ALE/Breakout-v5", max_episode_steps=60)
    full = FrameStackObservation(
        AtariPreprocessing(
            gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.0),
            noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True,
        ),
        4, padding_type="reset",
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for seed in (5, 17, 5):
        obs, _ = fast.reset(seed=seed)
        assert np.array_equal(obs, full.reset(seed=seed)[0])
        for length in range(1, 61):
            action = int(rng.integers(4))
            got, expected = fast.step(action), full.step(action)
            assert np.array_equal(got[0], expected[0]) and got[1:3] == expected[1:3], (seed, length)
            if got[2] or got[3]:
                break
        assert got[3] and length == 60  # truncated after 60 agent steps (random play lives longer)
    fast.close()
    full.close()


def test_epsilon_greedy_runs_the_network_only_when_some_action_is_greedy():
    calls = []

    def greedy(acting: np.ndarray) -> torch.Tensor:  # the greedy actions of the acting ones only
        calls.append(acting.copy())
        return torch.full((int(acting.sum()),), 3)

    explored = epsilon_greedy(greedy, 1.0, 3, np.random.default_rng(0), count=4)
    assert not calls and explored.max() < 3  # every action random: no forward
    for epsilon in (0.0, 0.5):  # the same actions and random draws as with the greedy actions given
        lazy = epsilon_greedy(greedy, epsilon, 3, rng := np.random.default_rng(1), count=4)
        eager = epsilon_greedy(torch.tensor([3, 3, 3, 3]), epsilon, 3, rng_eager := np.random.default_rng(1))
        assert np.array_equal(lazy, eager) and rng.random() == rng_eager.random()
        assert np.array_equal(calls[-1], lazy == 3)  # the forward saw the greedy environments alone
    assert len(calls) == 2 and calls[0].all() and not calls[1].all()


def test_discounted_returns_stop_at_episode_end():
    rewards = torch.ones(4, 2)
    alive = torch.tensor([[1, 1], [1, 1], [1, 0], [0, 0]], dtype=torch.float32)  # lengths 3 and 2
    returns = discounted_returns(rewards, alive, 0.5)
    assert torch.allclose(returns[:, 0], torch.tensor([1.75, 1.5, 1.0, 0.0]))
    assert torch.allclose(returns[:, 1], torch.tensor([1.5, 1.0, 0.0, 0.0]))


def test_solve_criterion_needs_a_full_window():
    tracker = EpisodeTracker(window=3, solve_return=10)
    assert not tracker.add(20) and not tracker.add(20)  # two episodes: not yet a full window
    tracker.env_steps = 60
    assert tracker.add(20) and tracker.solved_at == {"episodes": 3, "env_steps": 60}
    assert not tracker.add(20)  # solved once


def test_rl_config_errors_are_one_line(env, capsys):
    code, err = fdl_in_process(["train", "pg-cartpole", "explore=nope"], capsys)
    assert code == 2 and "choose from" in err and "anneal-1.0" in err
    code, err = fdl_in_process(["train", "dqn-cartpole", "trainer.epsilon_end=2"], capsys)
    assert code == 2 and "invalid trainer config" in err
    assert "Traceback" not in err


def test_pg_resume_continues_exactly_and_plot_returns(golden_run, env, tmp_path, capsys):
    """A run trained to 24 episodes then resumed to 48 logs exactly what the straight 48-episode golden run
    does (each batch of episodes is seeded from (seed, batch), so a checkpoint needs no RNG or env state;
    epsilon anneals over 48 episodes in both); `fdl plot-returns` draws both runs."""
    golden = golden_run("pg-cartpole")
    full = golden.run
    first = fdl("train", "pg-cartpole", *golden.without("trainer.episodes"), "trainer.episodes=24", env=env)
    assert first.returncode == 0, first.stderr
    (part,) = run_dirs(env, "pg-cartpole")
    resumed = fdl("train", "--resume", str(part), "trainer.episodes=48", env=env)
    assert resumed.returncode == 0, resumed.stderr

    def curve(run):
        return [
            (r["name"], r["step"], r["value"]) for r in metric_records(run) if r["name"].startswith("train/")
        ]

    assert curve(part) == curve(full) and len(curve(full)) == 48 + 4 * 6
    assert read_summary(part)["episodes"] == 48
    # the annealed epsilon continued from where it was
    eps = [r["value"] for r in metric_records(part) if r["name"] == "train/epsilon"]
    assert eps == sorted(eps, reverse=True) and eps[0] == 0.5

    # figure 9-6's plot: one curve per run, from the train/return records
    figure = tmp_path / "returns.png"
    code, out, err = fdl_call(["plot-returns", str(full), str(part), "--out", str(figure)], capsys)
    assert code == 0, err
    # one line per run: the mean of the first and last 100 episodes (here all 48 of each) and the best
    first = float(out.split("mean of the first 48 ")[1].split(",")[0])
    assert out.count("48 episodes; mean of the first 48") == 2 and "best 48-episode mean" in out
    returns = [r["value"] for r in metric_records(part) if r["name"] == "train/return"]
    assert first == pytest.approx(float(np.mean(returns)), abs=0.005)
    from PIL import Image

    assert Image.open(figure).size == (800, 480)
    # --each scatters every episode's return behind the means: the same frame, more drawn
    dotted = tmp_path / "returns-each.png"
    code, _, err = fdl_call(["plot-returns", str(full), str(part), "--each", "--out", str(dotted)], capsys)
    assert code == 0, err
    assert Image.open(dotted).size == (800, 480)
    assert Image.open(dotted).tobytes() != Image.open(figure).tobytes()
    # agents of several experiments (A3C, DQN, REINFORCE at equal time): each curve names its experiment,
    # pg-cartpole's with its exploration setting too
    mixed = tmp_path / "mixed.png"
    dqn = golden_run("dqn-cartpole").run
    code, out, err = fdl_call(
        ["plot-returns", str(full), str(dqn), "--x", "minutes", "--out", str(mixed)], capsys
    )
    assert code == 0, err
    labels = [line.split(":")[0] for line in out.splitlines() if "episodes; mean of the first" in line]
    assert labels[0].startswith("pg-cartpole") and "(" in labels[0] and labels[1].startswith("dqn-cartpole")
    # the same returns against agent steps (each record's step) and wall minutes (meta.json's clock)
    from fdlcli.analysis.returns import training_returns

    episodes, returns = training_returns(part)
    steps, by_steps = training_returns(part, "steps")
    minutes, by_minutes = training_returns(part, "minutes")
    assert list(episodes) == list(range(1, 49)) and list(returns) == list(by_steps) == list(by_minutes)
    records = [r for r in metric_records(part) if r["name"] == "train/return"]
    assert list(steps) == [r["step"] for r in records]
    assert 0 <= minutes[0] <= minutes[-1] < 60


def test_dqn_cartpole_short_run_eval_and_play(golden_run, env, tmp_path, capsys, monkeypatch):
    """The golden dqn-cartpole run (600 steps, learning from step 200, evaluations at 300 and 600; every
    value it logs is pinned by test_golden) has what a run needs; `fdl eval` and `fdl play` work on it."""
    run = copy_run(golden_run("dqn-cartpole").run, tmp_path)  # eval and play write into the run
    summary = read_summary(run)
    assert summary["steps"] >= 600 and summary["updates"] >= 190 and len(summary["history"]) == 2
    names = {r["name"] for r in metric_records(run)}
    assert {"train/return", "train/cost", "train/q_mean", "eval/return_mean"} <= names
    assert (run / "checkpoints" / "best.json").is_file()

    code, out, err = fdl_call(["eval", str(run), "--json"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["eval/episodes"] == 2 and metrics["eval/return_mean"] >= 8  # CartPole lasts >= 8 steps
    # the val split replays the evaluation episodes of training: the best checkpoint scores its best value
    code, out, err = fdl_call(["eval", str(run), "--split", "val", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["eval/return_mean"] == summary["best"]["value"]
    code, err = fdl_in_process(["eval", str(run), "--split", "train"], capsys)  # fails before any work
    assert code == 2 and "evaluated on episodes" in err and "Traceback" not in err

    code, out, err = fdl_call(["play", str(run), "-n", "2", "--record", "--format", "gif"], capsys)
    assert code == 0, err
    assert "mean" in out
    (video,) = (run / "artifacts").glob("play-*.gif")
    assert video.stat().st_size > 1000

    # without the [rl] extra: one line with the install command (None in sys.modules: the import fails
    # as if the package were not installed; test_cli and test_extras hide ale_py and numba from processes)
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "imageio", None)
        code, err = fdl_in_process(["play", str(run), "--record"], capsys)
    assert code == 1
    assert err.strip() == "error: fdl play --record needs imageio: pip install 'fdlcli[rl]'"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "pygame", None)
        code, err = fdl_in_process(["play", str(run), "--record", "--format", "gif"], capsys)
    assert code == 1
    assert err.strip() == "error: fdl play --record of CartPole-v1 needs pygame: pip install 'fdlcli[rl]'"

    code, err = fdl_in_process(["play", str(run), "--render", "human", "--record"], capsys)
    assert code == 2 and "do not combine" in err
    code, err = fdl_in_process(["play", str(run / "nope")], capsys)
    assert code != 0 and "no such run directory" in err


# dqn-breakout's short run on pixels (the ALE, frame stacks, a wrapping buffer) is its golden run:
# test_golden pins every record and the final weights


def test_target_network_copy_and_soft_update():
    from fdlcli.experiments.dqn import DQNAgent, MLPQNetwork

    agent = DQNAgent(MLPQNetwork(4, [8], 2), MLPQNetwork(4, [8], 2))
    online, target = agent.online[0].weight, agent.target[0].weight
    assert torch.equal(online, target) and not target.requires_grad  # synced at construction, frozen
    before = target.detach().clone()
    with torch.no_grad():
        online.add_(1.0)
    agent.sync_target(0.25)
    assert torch.allclose(target, before + 0.25)
    agent.sync_target()
    assert torch.equal(target, online)


# learning from step 100 on, evaluations at 300 and 600, a 240-transition buffer that wraps at step 240
DQN_SHORT = [
    "trainer.total_steps=600", "trainer.learning_starts=100", "trainer.eval_every=300",
    "trainer.eval_episodes=2", "trainer.log_every=10", "trainer.buffer_size=240", "model.hidden=[32,32]",
    "seed=3",
]  # fmt: skip


def _latest(run: Path) -> Path:
    return run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["name"]


def _wait_for_step(run_root: Path, known: list[Path], step: int, process: subprocess.Popen) -> Path:
    """The new run under ``run_root`` once it logged a record past ``step`` (the process still running)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        for run in (r for r in run_root.iterdir() if r not in known and (r / "metrics.jsonl").is_file()):
            records = (run / "metrics.jsonl").read_text().splitlines()
            if any(json.loads(line)["step"] > step for line in records if line.endswith("}")):
                return run
        time.sleep(0.05)
    raise AssertionError(f"the run ended or stalled before step {step}: {process.poll()}")


def _stopped_by_sigterm(env, experiment: str, overrides: list[str], reference: Path, step: int) -> Path:
    """A second run of ``experiment`` stopped by SIGTERM once it has logged past ``step``: its directory."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fdlcli", "train", experiment, *overrides],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    run = _wait_for_step(reference.parent, [reference], step, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    return run


def test_dqn_resume_after_sigterm_is_exact(env):
    """Stopped by SIGTERM mid-run (learning under way, episodes in progress, the replay buffer wrapped)
    and resumed, a DQN run logs exactly what an uninterrupted one does and ends with the same weights:
    the checkpoint carries the replay buffer, both RNG streams and each environment's episode seed and
    actions so far (replayed on resume)."""
    straight = fdl("train", "dqn-cartpole", *DQN_SHORT, env=env)
    assert straight.returncode == 0, straight.stderr
    (reference,) = run_dirs(env, "dqn-cartpole")
    run = _stopped_by_sigterm(env, "dqn-cartpole", DQN_SHORT, reference, 250)
    stopped = _latest(run)
    with np.load(stopped / "arrays.npz", allow_pickle=False) as arrays:
        assert bool(arrays["full"]) and arrays["frames"].shape == (60, 4, 4)  # 240 / 4 envs, wrapped
    assert 250 < int(stopped.name.split("-")[1]) < 600

    resumed = fdl("train", "--resume", str(run), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert metric_records(run) == metric_records(reference)
    assert read_summary(run)["final"] == read_summary(reference)["final"]
    assert read_summary(run)["updates"] == read_summary(reference)["updates"] > 200
    final, expected = (
        load_file(str(_latest(run) / "model.safetensors")),
        load_file(str(_latest(reference) / "model.safetensors")),
    )
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    for each in (run, reference):  # the replay buffer lives beside the newest checkpoint only
        assert [p.parent for p in (each / "checkpoints").glob("*/arrays.npz")] == [_latest(each)]


# --------------------------------------------------------------------------------------------------
# The partially observable CartPole and DRQN.


def test_hidden_velocity_and_flat_frame_stacks():
    """hide_velocity keeps cart position and pole angle of the full state; a flat frame stack holds the
    last N of those (the first repeated at an episode start), as the replay buffer rebuilds them."""
    full, hidden = make_env("CartPole-v1"), make_env("CartPole-v1", frame_stack=3, hide_velocity=True)
    assert hidden.observation_space.shape == (3, 2)
    state, _ = full.reset(seed=5)
    stack, _ = hidden.reset(seed=5)
    assert np.array_equal(stack, np.stack([state[[0, 2]]] * 3))
    for _ in range(2):
        state = full.step(1)[0]
        stack = hidden.step(1)[0]
    assert np.array_equal(stack[-1], state[[0, 2]]) and not np.array_equal(stack[0], stack[-1])
    with pytest.raises(ConfigError, match="no known velocity entries"):
        make_env("Acrobot-v1", hide_velocity=True)
    # the replay buffer rebuilds flat stacks exactly, across episode starts
    buffer, seen, _ = _fill("CartPole-v1", 2, 90, capacity=400, stack=3, stacked=True)
    for row in range(buffer.row):
        for e in range(2):
            rebuilt = buffer.observations(torch.tensor([row]), torch.tensor([e]))[0].numpy()
            assert np.array_equal(rebuilt, seen[(row, e)]), (row, e)


def test_drqn_windows_unroll_and_loss_masks():
    """Sampled windows are consecutive steps of one environment; the unrolled network equals acting step
    by step with the state zeroed at each episode start; the loss skips reset steps and the burn-in of a
    window begun mid-episode, and learns from all steps of an episode that began inside it."""
    buffer, _, _ = _fill("CartPole-v1", 2, 150, capacity=200, stack=1, stacked=False)  # wrapped
    windows = sample_windows(buffer, 64, 9, torch.Generator().manual_seed(2))
    obs, actions, rewards, terminated, valid, since = windows
    assert obs.shape == (64, 9, 4) and since.shape == (64, 9)
    same_episode = since[:, 1:] == since[:, :-1] + 1
    assert ((since[:, 1:] == 0) | same_episode).all()  # time order: +1 per step, or a new episode
    steps = (obs[:, 1:, 0] - obs[:, :-1, 0]).abs()
    assert steps[same_episode & valid[:, :-1]].max() < 0.2  # one physics step apart

    torch.manual_seed(0)
    net = RecurrentQNetwork(4, [8], 6, 2)
    starts = since == 0
    unrolled = net(obs, starts)
    for b in range(4):
        state = net.initial_state(1)
        for t in range(9):
            if starts[b, t]:
                state = net.initial_state(1)
            q, state = net.step(obs[b, t][None], state)
            assert torch.allclose(unrolled[b, t], q[0], atol=1e-6)

    class Agent:  # the online and target networks: the same weights here
        online = target = net

    burn_in = 3
    loss, _ = sequence_td_loss(Agent(), windows, 0.9, double=True, burn_in=burn_in)
    assert loss.ndim == 0 and torch.isfinite(loss)
    # the same loss from the mask written out by hand, position by position
    position = torch.arange(9)
    exact = since <= position  # the episode began inside the window: the zero state is the true one
    learned = (valid & (exact | (position >= burn_in)))[:, :-1]
    assert not learned[:, :burn_in][~exact[:, :burn_in]].any() and learned.sum() > 64
    with torch.no_grad():
        q_all, next_q = net(obs, starts), net(obs, starts)[:, 1:]
        best = q_all[:, 1:].argmax(2, keepdim=True)
        target = rewards[:, :-1] + 0.9 * (~terminated[:, :-1]).float() * next_q.gather(2, best).squeeze(2)
        q = q_all[:, :-1].gather(2, actions[:, :-1].unsqueeze(2)).squeeze(2)
        errors = torch.nn.functional.smooth_l1_loss(q, target, reduction="none")
    assert loss.item() == pytest.approx(errors[learned].mean().item(), rel=1e-5)


# learning from step 60, windows of 2 + 4 + 1 steps, a 112-transition buffer (28 rows x 4) that wraps
DRQN_SHORT = [
    "trainer.total_steps=320", "trainer.learning_starts=60", "trainer.eval_every=160",
    "trainer.eval_episodes=1", "trainer.log_every=10", "trainer.buffer_size=112", "trainer.burn_in=2",
    "trainer.sequence_length=4", "trainer.batch_size=8", "model.hidden=[16]", "model.lstm=16", "seed=2",
]  # fmt: skip


def test_drqn_resume_after_sigterm_is_exact_eval_and_play(env, capsys):
    """drqn-cartpole stopped by SIGTERM (learning under way, episodes and LSTM states in progress, the
    replay wrapped) and resumed logs exactly what an uninterrupted run does, with the same final weights;
    `fdl play --record` runs the recurrent agent."""
    straight = fdl("train", "drqn-cartpole", *DRQN_SHORT, env=env)
    assert straight.returncode == 0, straight.stderr
    (reference,) = run_dirs(env, "drqn-cartpole")
    run = _stopped_by_sigterm(env, "drqn-cartpole", DRQN_SHORT, reference, 130)
    stopped = _latest(run)
    assert 130 < int(stopped.name.split("-")[1]) < 320
    with np.load(stopped / "arrays.npz", allow_pickle=False) as arrays:
        assert bool(arrays["full"]) and arrays["frames"].shape == (28, 4, 2)  # position and angle only
    state = torch.load(stopped / "trainer.pt", weights_only=True)
    assert state["task"]["hidden_h"].shape == (4, 16) and state["task"]["hidden_h"].abs().sum() > 0

    resumed = fdl("train", "--resume", str(run), env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert metric_records(run) == metric_records(reference)
    assert read_summary(run)["updates"] == read_summary(reference)["updates"] > 50
    final, expected = (
        load_file(str(_latest(run) / "model.safetensors")),
        load_file(str(_latest(reference) / "model.safetensors")),
    )
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)

    # the recurrent agent plays from its best checkpoint (the evaluations above played the same way)
    code, out, err = fdl_call(["play", str(run), "-n", "1", "--record", "--format", "gif"], capsys)
    assert code == 0, err
    assert "mean" in out
    (video,) = (run / "artifacts").glob("play-*.gif")
    assert video.stat().st_size > 1000


def test_throughput_benchmark_reference_network_computes_fdls_function_and_its_work_is_counted():
    """benchmarks/dqn_throughput.py's frozen reference network (fdl's as issue 20 found it) loads fdl's
    weights and gives the same Q-values, so the benchmark compares loops, not networks; ``--floor``
    counts an update's multiply-adds as the layer shapes give them."""
    benchmark = benchmark_module("dqn_throughput")
    torch.manual_seed(0)
    network = NatureQNetwork(4, 4)
    reference = benchmark.ReferenceQNetwork(4, 4)
    reference.load_state_dict(network.state_dict())
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    torch.testing.assert_close(reference(obs), network(obs), rtol=1e-5, atol=1e-6)
    conv1 = 20 * 20 * 32 * (4 * 8 * 8)
    per_example = conv1 + 9 * 9 * 64 * (32 * 4 * 4) + 7 * 7 * 64 * (64 * 3 * 3) + 512 * 3136 + 4 * 512
    # two forwards, the weight gradients of every layer, the input gradients of all but conv1
    assert benchmark.update_flops(network, 32) == 2 * 32 * (4 * per_example - conv1)
