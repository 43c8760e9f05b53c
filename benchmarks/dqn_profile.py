"""Where a dqn-breakout window of fdl's loop spends its CPU time: a cProfile (process CPU clock) of the
agent steps after learning starts, at benchmarks/dqn_throughput.py's settings, split into environment
stepping, replay insert and sample, the acting forward, the update (forward + TD loss, backward, Adam) and
the loop's own bookkeeping.

    python benchmarks/dqn_profile.py [--steps 1000] [trainer overrides, e.g. trainer.compile=true]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

from fdlcli import config as fdl_config
from fdlcli.engine.loop import train
from fdlcli.experiments.dqn import DQNTask
from fdlcli.runs import Run

LEARNING_STARTS = 500
SKIP = 200  # agent steps after learning starts left unprofiled: the first updates (and any compile)

# (file, function) whose cumulative time makes each part; the rest is the loop's own
PARTS = {
    "environment stepping": [("_rl.py", "step")],
    "replay insert": [("dqn.py", "add")],
    "replay sample": [("dqn.py", "sample")],
    "acting forward": [("dqn.py", "greedy_actions")],
    "update: forward + TD loss": [("dqn.py", "sampled_loss")],  # less the replay sample it calls
    "update: backward": [("_tensor.py", "backward")],
    "update: Adam": [("optimizer.py", "wrapper")],
    "loop: logging windows": [("loop.py", "log_window")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="profiled agent steps")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("FDL_RUNS_DIR", tempfile.gettempdir())
    profiler = cProfile.Profile(time.process_time)
    clock: dict[str, Any] = {}
    start = LEARNING_STARTS + SKIP

    class Profiled(DQNTask):
        def train_step(self, step: int, index: int) -> Any:
            if step >= start and "on" not in clock:
                clock["on"], clock["steps"] = time.process_time(), step
                profiler.enable()
            return super().train_step(step, index)

        def evaluate(self, split: str) -> dict[str, float]:  # the closing evaluation is not profiled
            if "on" in clock and "off" not in clock:
                profiler.disable()
                clock["off"] = time.process_time()
            return super().evaluate(split)

    overrides = [
        f"trainer.total_steps={start + args.steps}", f"trainer.learning_starts={LEARNING_STARTS}",
        "trainer.num_envs=8", "trainer.epsilon_anneal_steps=10000", "trainer.buffer_size=20000",
        "trainer.eval_every=100000000", "trainer.eval_episodes=1", "trainer.eval_epsilon=1.0",
        "trainer.max_episode_steps=200", "trainer.log_every=25", "trainer.device=cpu", "trainer.threads=1",
        *args.overrides,
    ]  # fmt: skip
    run_config = fdl_config.validate(fdl_config.compose("dqn-breakout", overrides))
    with tempfile.TemporaryDirectory() as tmp:
        summary = train(Profiled, Run(path=Path(tmp), config=run_config))
    total = clock["off"] - clock["on"]
    steps = summary["steps"] - clock["steps"]
    cumulative: dict[tuple[str, str], float] = {}
    for (file, _, name), (_, _, _, cumtime, _) in pstats.Stats(profiler).stats.items():  # type: ignore[attr-defined]
        key = (os.path.basename(file), name)
        cumulative[key] = cumulative.get(key, 0.0) + cumtime
    print(f"{steps} agent steps in {total:.2f} s of CPU (profiler on): {steps / total:.1f} per CPU second")
    seconds_of = {part: sum(cumulative.get(f, 0.0) for f in functions) for part, functions in PARTS.items()}
    seconds_of["update: forward + TD loss"] -= seconds_of["replay sample"]  # (compiled or not)
    rest = total
    for part, seconds in seconds_of.items():
        rest -= seconds
        print(f"  {part:30s} {seconds:7.2f} s  {100 * seconds / total:5.1f}%")
    print(f"  {'loop: the rest':30s} {rest:7.2f} s  {100 * rest / total:5.1f}%")


if __name__ == "__main__":
    main()
