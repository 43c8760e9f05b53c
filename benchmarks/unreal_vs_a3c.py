"""UNREAL against plain A2C/A3C at equal agent steps: mean training return over seeds, one curve per agent.

    python benchmarks/unreal_vs_a3c.py RUN... [--out docs/figures/unreal_vs_a3c.png] [--window 100]

Each RUN is a run directory (or id) of ``a3c-minatar`` (the feed-forward baseline) or ``unreal-minatar``
(labelled by its ``trainer.aux``: ``trainer.aux=[]`` is the base agent alone, A2C with the LSTM). A run's
curve is the mean return of its last ``window`` training episodes at the agent step each episode ended
(the ``train/return`` records), put on a common grid of agent steps (up to the shortest run's end); an
agent's curve is the mean over its runs (seeds) with their range shaded. A table prints, per agent, the
final average (mean and std over seeds) and the mean of the curve over the whole run (area under it, per
step: learning speed as one number).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from fdlcli import config, runs
from fdlcli.analysis.returns import finish_returns_figure, moving_average, returns_figure, training_returns


def agent_label(run_dir: Path) -> str:
    saved = config.load_saved(run_dir / runs.CONFIG_FILE)
    if saved.name == "a3c-minatar":
        return f"{saved.trainer.mode.upper()}, feed-forward (a3c-minatar)"
    if saved.name == "unreal-minatar":
        aux = list(saved.trainer.aux)
        return f"UNREAL: A2C-LSTM + {', '.join(aux)}" if aux else "A2C-LSTM alone (unreal-minatar aux=[])"
    raise SystemExit(f"{run_dir}: a {saved.name} run, not a3c-minatar or unreal-minatar")


def average_by_step(run_dir: Path, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(agent step at each training episode's end, the average return of the last ``window`` episodes)."""
    steps, returns = training_returns(run_dir, "steps")
    if not len(returns):
        raise SystemExit(f"{run_dir}: no train/return records yet")
    return steps, moving_average(returns, window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/figures/unreal_vs_a3c.png"))
    parser.add_argument("--window", type=int, default=100, help="episodes per average")
    args = parser.parse_args()

    curves: dict[str, list[tuple[Path, np.ndarray, np.ndarray]]] = defaultdict(list)
    for given in args.runs:
        run_dir = runs.resolve_run_dir(given)
        curves[agent_label(run_dir)].append((run_dir, *average_by_step(run_dir, args.window)))
    end = min(steps[-1] for runs_of in curves.values() for _, steps, _ in runs_of)
    grid = np.linspace(0, end, 200)

    fig, ax = returns_figure()
    print(f"{'agent':<52} {'seeds':>5} {'final average':>16} {'mean of curve':>14}")
    for index, (label, runs_of) in enumerate(sorted(curves.items())):
        on_grid = np.stack([np.interp(grid, steps, average) for _, steps, average in runs_of])
        mean = on_grid.mean(axis=0)
        colour = f"C{index}"
        ax.plot(grid, mean, color=colour, linewidth=1.5, label=f"{label} ({len(runs_of)} seeds)")
        if len(runs_of) > 1:
            ax.fill_between(grid, on_grid.min(axis=0), on_grid.max(axis=0), color=colour, alpha=0.15)
        finals, areas = on_grid[:, -1], on_grid.mean(axis=1)
        print(
            f"{label:<52} {len(runs_of):>5} {finals.mean():>9.2f} +- {finals.std():<4.2f} "
            f"{areas.mean():>8.2f} +- {areas.std():.2f}"
        )
        for run_dir, _, _ in runs_of:
            print(f"    {run_dir}")
    title = "MinAtar Breakout: UNREAL and A2C at equal agent steps (mean over seeds)"
    print(finish_returns_figure(fig, ax, args.out, args.window, "agent steps", title))


if __name__ == "__main__":
    main()
