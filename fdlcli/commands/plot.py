"""``fdl plot``: metric curves of runs and sweeps, overlaid in one PNG."""

from __future__ import annotations

import math
from pathlib import Path

import click

PLOT_HELP = """Draw the METRIC curve of each run (a sweep directory overlays all its jobs) into a PNG.

\b
  fdl plot runs/mlp-mnist/sweeps/2026-11-28_21-42-01_4436f7 --threshold 0.1
  fdl plot RUN_A RUN_B --metric val/accuracy --out cmp.png     (e.g. cnn-cifar10 against cnn-cifar10-bn)

Each run's number of points, last value and best value are printed too.

With --threshold it also prints, per run, the first logged minibatch at which the metric reached the
threshold (below it for costs and losses, above it otherwise), to the resolution of trainer.log_every.
"""


@click.command("plot", help=PLOT_HELP)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--metric", default="train/cost", show_default=True, help="A name logged in metrics.jsonl.")
@click.option(
    "--threshold", type=float, default=None, help="Mark this value and report when each run got there."
)
@click.option("--log-y/--linear-y", default=None, help="Log y axis (default: log for costs and losses).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG to write (default: artifacts/ of the run or sweep named first).",
)
def plot_cmd(
    paths: tuple[Path, ...], metric: str, threshold: float | None, log_y: bool | None, out: Path | None
) -> None:
    from rich.table import Table

    from fdlcli.analysis import curves as curves_module
    from fdlcli.terminal import make_console

    run_dirs = curves_module.expand_run_dirs(paths)
    curves = curves_module.load_curves(run_dirs, metric)
    lower_is_better = curves_module.lower_is_better(metric)
    if out is None:
        out = paths[0] / "artifacts" / f"plot-{metric.replace('/', '-')}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"{metric}: " + ", ".join(str(p) for p in paths)
    curves_module.plot_curves(
        out, curves, metric, lower_is_better if log_y is None else log_y, threshold, title
    )
    for curve in curves:
        steps, values = zip(*curve.points, strict=True)
        finite = [v for v in values if math.isfinite(v)] or [math.nan]  # a null record reads as NaN
        best = min(finite) if lower_is_better else max(finite)
        click.echo(
            f"{curve.label}: {len(values)} points, last {values[-1]:.4g} "
            f"at minibatch {steps[-1]}, best {best:.4g}"
        )
    if threshold is not None:
        table = Table(title=f"{metric} reaching {threshold:g}")
        for column in ("run", "final", "minibatches to threshold"):
            table.add_column(column, justify="left" if column == "run" else "right")
        for curve in curves:
            reached = curves_module.steps_to_threshold(curve.points, threshold, below=lower_is_better)
            table.add_row(
                curve.label, f"{curve.points[-1][1]:.4g}", "not reached" if reached is None else str(reached)
            )
        make_console(width=200).print(table)
    click.echo(f"wrote {out}")


COMMANDS = [plot_cmd]
