"""The POMDP CartPole figure: training return against agent steps of DQN, frame-stacked DQN and DRQN.

    python benchmarks/pomdp_cartpole.py RUN... [--out docs/figures/pomdp_cartpole.png] [--window 100]

Each RUN is a run directory (or id) of ``dqn-cartpole trainer.hide_velocity=true`` (one observation),
``dqn-cartpole trainer.hide_velocity=true trainer.frame_stack=4`` (the last four) or ``drqn-cartpole`` (an
LSTM); several seeds of one agent are drawn in one colour. A curve is the mean return of the last
``window`` training episodes at the agent step each episode ended (the ``train/return`` records), so
agents that play episodes of different lengths compare at equal experience. A table prints, per run, the
agent steps at which the average first reached the solve threshold (or the best average reached).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fdlcli import config, runs
from fdlcli.analysis.returns import finish_returns_figure, moving_average, returns_figure, training_returns


def agent_label(run_dir: Path) -> str:
    """What the run's agent sees and remembers, from its saved config."""
    saved = config.load_saved(run_dir / runs.CONFIG_FILE)
    trainer = saved.trainer
    seen = "position and angle" if getattr(trainer, "hide_velocity", False) else "full state"
    if saved.name == "drqn-cartpole":
        return f"DRQN, LSTM {saved.model.lstm} ({seen})"
    stack = getattr(trainer, "frame_stack", 1)
    agent = "DQN, one observation" if stack <= 1 else f"DQN, last {stack} observations"
    return f"{agent} ({seen})" if saved.name == "dqn-cartpole" else f"{saved.name} ({seen})"


def returns_by_step(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(agent step at each training episode's end, its return)."""
    steps, returns = training_returns(run_dir, "steps")
    if not len(returns):
        raise SystemExit(f"{run_dir}: no train/return records (is it a dqn-cartpole or drqn-cartpole run?)")
    return steps, returns


def first_reaching(steps: np.ndarray, average: np.ndarray, threshold: float, window: int) -> int | None:
    """The agent step at which the average over a full window first reached ``threshold``."""
    full = np.arange(len(average)) >= window - 1
    hits = np.flatnonzero(full & (average >= threshold))
    return int(steps[hits[0]]) if len(hits) else None


TITLE = "CartPole-v1 without velocities: DQN, frame-stacked DQN, DRQN"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/pomdp_cartpole.png"))
    parser.add_argument("--window", type=int, default=100, help="episodes per average")
    args = parser.parse_args()

    fig, ax = returns_figure()
    colours: dict[str, str] = {}
    threshold = None
    print(f"{'run':<60} {'agent':<48} {'episodes':>8} {'solved at step':>15}")
    for given in args.runs:
        run_dir = runs.resolve_run_dir(given)
        label = agent_label(run_dir)
        steps, returns = returns_by_step(run_dir)
        average = moving_average(returns, args.window)
        threshold = config.load_saved(run_dir / runs.CONFIG_FILE).trainer.solve_return
        first = label not in colours
        colours.setdefault(label, f"C{len(colours)}")
        ax.plot(steps, average, color=colours[label], linewidth=1.3, label=label if first else None)
        solved = first_reaching(steps, average, threshold, args.window)
        shown = f"{solved:,}" if solved is not None else f"no (best {average.max():.1f})"
        print(f"{run_dir!s:<60} {label:<48} {len(returns):>8,} {shown:>15}")
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle="--", linewidth=0.8, label=f"solved ({threshold:g})")
    print(finish_returns_figure(fig, ax, args.out, args.window, "agent steps", TITLE))


if __name__ == "__main__":
    main()
