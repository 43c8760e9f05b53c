"""Chapter 9's A3C and A2C (`a3c-cartpole`): n-step returns, the worker processes against the
synchronous learner, exact resume of A2C, A3C's Ctrl-C, resume and play, and no orphaned workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import (
    assert_sigterm_resume_is_exact,
    fdl,
    fdl_call,
    latest_checkpoint,
    metric_records,
    read_summary,
    wait_for_record,
)

from fdlcli import config
from fdlcli.engine.optim import scheduled_lr, set_lr
from fdlcli.engine.seed import seed_everything
from fdlcli.errors import FdlError
from fdlcli.experiments.a3c import ActorCriticTask, WorkerPool, n_step_returns

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_n_step_returns_bootstrap_only_where_they_should():
    """Two environments, four steps (gamma 0.5): env 0 terminates at t=1 (no bootstrap), takes a reset
    step at t=2 and bootstraps its new episode from V(s_4); env 1 is truncated at t=0 (it bootstraps from
    the value of its final observation, the reset step's value)."""
    rewards = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    terminated = torch.tensor([[False, False], [True, False], [False, False], [False, False]])
    valid = torch.tensor([[True, True], [True, False], [False, True], [True, True]])
    values = torch.tensor([[9.0, 9.0], [9.0, 4.0], [6.0, 9.0], [9.0, 9.0]])
    returns = n_step_returns(rewards, terminated, valid, values, torch.tensor([2.0, 8.0]), 0.5)
    assert returns[:, 0].tolist() == [1.5, 1.0, 6.0, 2.0]  # t=2 is a reset step: its own value
    assert returns[:, 1].tolist() == [3.0, 4.0, 3.5, 5.0]  # truncated at t=0: 1 + 0.5 * V(final) = 3


def _task(*overrides: str) -> ActorCriticTask:
    cfg = config.validate(
        config.compose("a3c-cartpole", ["trainer.log_every=1000", "model.hidden=[16]", *overrides])
    )
    seed_everything(cfg.seed)
    task = ActorCriticTask(cfg, torch.device("cpu"), None)
    task.setup()
    task.train_model = task.model
    return task


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_one_a3c_worker_computes_what_one_environment_of_a2c_does(schedule):
    """With one worker nothing interleaves, so A3C (a process, its own copy of the shared weights, the
    shared optimizer's statistics) must compute exactly what A2C with one environment does. Under
    ``optim.schedule=linear`` (one update per loop step) the worker must step at the rate the main process
    hands it, the one the loop gives A2C's update."""
    torch.set_num_threads(1)
    common = ["trainer.num_envs=1", "trainer.total_steps=600", f"optim.schedule={schedule}"]
    synchronous = _task("trainer.mode=a2c", *common)
    optim, step = synchronous.config.optim, 0
    for index in range(30):  # the loop's update of a returned loss
        out = synchronous.train_step(step, index)
        synchronous.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(synchronous.model.parameters(), synchronous.trainer.grad_clip)
        set_lr(synchronous.optimizer, scheduled_lr(optim, step, 600))
        synchronous.optimizer.step()
        step += out.advance
    a2c_steps, step = step, 0
    updates_per_step = 10 if schedule == "constant" else 1
    asynchronous = _task("trainer.mode=a3c", *common, f"trainer.updates_per_step={updates_per_step}")
    try:
        for index in range(30 // updates_per_step):
            step += asynchronous.train_step(step, index).advance
        state = asynchronous.state_dict()
    finally:
        asynchronous.close()
    assert step == a2c_steps  # agent steps: reset steps after an episode's end do not count
    assert asynchronous.updates == synchronous.updates == 30
    assert asynchronous.tracker.episodes == synchronous.tracker.episodes > 5
    assert asynchronous.tracker.returns == synchronous.tracker.returns
    for name, value in synchronous.model.state_dict().items():
        assert torch.equal(value, asynchronous.model.state_dict()[name]), name
    assert state["workers"][0]["envs"]["observations"].shape == (1, 4)  # the worker's episode in progress
    last_lr = asynchronous.optimizer.param_groups[0]["lr"]
    assert last_lr == synchronous.optimizer.param_groups[0]["lr"]
    assert last_lr == optim.lr if schedule == "constant" else last_lr < optim.lr / 10


def _alive(pid: int) -> bool:
    """Running (not gone, and not a zombie waiting for a parent's wait)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: list[int], seconds: float = 10.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


def test_a_dead_worker_stops_the_step_and_no_worker_outlives_its_pool():
    """A worker killed mid-run: the next step stops with one line; closing leaves no process behind."""
    task = _task("trainer.mode=a3c", "trainer.num_envs=2", "trainer.updates_per_step=2")
    try:
        task.train_step(0, 0)
        pool = task.pool
        assert pool is not None and all(_alive(pid) for pid in pool.pids)
        os.kill(pool.pids[0], signal.SIGKILL)
        with pytest.raises(FdlError, match="A3C worker 0 died"):
            for step in range(50):
                task.train_step(step, step)
    finally:
        task.close()
    assert _wait_gone(pool.pids) == []


def _pool_then_sleep(report) -> None:  # the parent in the test below (a forked process)
    task = _task("trainer.mode=a3c", "trainer.num_envs=2")
    task.pool = WorkerPool(task.config, task.model, task.optimizer, [])
    report.send(task.pool.pids)
    time.sleep(60)


def test_workers_exit_when_their_main_process_is_killed():
    """SIGKILL leaves the main process no chance to stop its workers: they notice and stop themselves."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    parent = context.Process(target=_pool_then_sleep, args=(theirs,))
    parent.start()
    assert ours.poll(60), "the pool did not start"
    pids = ours.recv()
    assert all(_alive(pid) for pid in pids)
    os.kill(parent.pid, signal.SIGKILL)
    parent.join()
    assert _wait_gone(pids) == []


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    return found


A2C = [
    "trainer.mode=a2c", "trainer.num_envs=4", "trainer.eval_every=2000", "trainer.eval_episodes=2",
    "trainer.log_every=10", "trainer.histograms=false", "model.hidden=[32]", "seed=5",
]  # fmt: skip


def test_a2c_resume_after_sigterm_is_exact(env):
    """Stopped by SIGTERM (episodes in progress) and resumed, an A2C run logs exactly what an
    uninterrupted one does and ends with the same weights."""
    assert_sigterm_resume_is_exact(env, "a3c-cartpole", A2C, total_steps=6000, stop_after=400)


A3C = [
    "trainer.mode=a3c", "trainer.num_envs=2", "trainer.t_max=10", "trainer.updates_per_step=10",
    "trainer.eval_every=2000",
    "trainer.eval_episodes=2", "trainer.log_every=20", "trainer.histograms=false", "model.hidden=[32]",
]  # fmt: skip


def test_a3c_ctrl_c_leaves_no_worker_then_resumes_keeps_learning_and_plays(env, capsys):
    """Ctrl-C (SIGINT to the whole process group, workers included) checkpoints at the next step and
    stops every worker; the resumed run restores the weights, the shared optimizer's statistics and the
    workers' episodes and keeps learning; `fdl play --record` plays the agent."""
    process = subprocess.Popen(
        [sys.executable, "-m", "fdlcli", "train", "a3c-cartpole", *A3C, "trainer.total_steps=10000000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    root = Path(env["FDL_RUNS_DIR"]) / "a3c-cartpole"
    root.mkdir(parents=True, exist_ok=True)
    run = wait_for_record(root, 1000, process, [])
    workers = _children(process.pid)
    assert len(workers) >= 2, workers
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "resume with" in stderr and "Traceback" not in stderr, stderr
    assert _wait_gone(workers) == []
    stopped = latest_checkpoint(run)
    stopped_step = int(stopped.name.split("-")[1])
    saved = torch.load(stopped / "trainer.pt", weights_only=True)
    assert len(saved["task"]["workers"]) == 2 and saved["task"]["updates"] > 0

    resumed = fdl("train", "--resume", str(run), f"trainer.total_steps={stopped_step + 2000}", env=env)
    assert resumed.returncode == 0, resumed.stderr
    summary = read_summary(run)
    assert summary["steps"] >= stopped_step + 2000 and summary["mode"] == "a3c"
    assert summary["updates"] >= saved["task"]["updates"] + 2000 // 10  # t_max=10 steps an update at most
    assert summary["episodes"] > saved["task"]["tracker"]["episodes"]
    final = torch.load(latest_checkpoint(run) / "trainer.pt", weights_only=True)
    before = [s["square_avg"] for s in saved["optimizer"]["state"].values()]
    after = [s["square_avg"] for s in final["optimizer"]["state"].values()]
    assert all(a.shape == b.shape and not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    returns = [r for r in metric_records(run) if r["name"] == "train/return"]
    assert any(r["step"] > stopped_step for r in returns)

    code, _, err = fdl_call(["play", str(run), "-n", "1", "--record", "--format", "gif"], capsys)
    assert code == 0, err
    (video,) = (run / "artifacts").glob("play-*.gif")
    assert video.stat().st_size > 1000
