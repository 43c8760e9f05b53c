"""``fdl plot``: metric curves of runs and sweeps, overlaid in one PNG."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import click

from fdlcli.runs import CONFIG_FILE

PLOT_HELP = """Draw the METRIC curve of each run (a sweep directory overlays all its jobs) into a PNG.

\b
  fdl plot runs/mlp-mnist/sweeps/2026-11-28_21-42-01_4436f7 --threshold 0.1
  fdl plot RUN_A RUN_B --metric val/accuracy --out cmp.png     (e.g. cnn-cifar10 against cnn-cifar10-bn)

Each run's number of points, last value and best value are printed too.

With --threshold it also prints, per run, the first logged minibatch at which the metric reached the
threshold (below it for costs and losses, above it otherwise), to the resolution of trainer.log_every.

Runs whose resolved configs differ only in their seed are drawn as one curve (the mean over the seeds,
at the steps they all logged) with a shaded band: the standard deviation (--band std) or a bootstrap 95%
interval of the mean (--band ci). This is the default for sweeps; --group-seeds asks for it with runs
named one by one, --no-group-seeds draws every run.

--x minutes draws the curves against wall-clock minutes since each run started (setup included, and a
resumed run's pauses): time to accuracy, e.g. `fdl plot RUN_A RUN_B --metric test/accuracy --x minutes
--threshold 0.9`. Seeds are not averaged on this axis (their clocks differ); each run is drawn.
"""


def _short_name(path: Path) -> str:
    """A run or sweep as the title names it: experiment/run or experiment sweep ID, not the full path
    (several full paths overflow the figure)."""
    path = path.resolve()
    if path.parent.name == "sweeps":
        return f"{path.parent.parent.name} sweep {path.name}"
    return f"{path.parent.name}/{path.name}"


# shared with `fdl report`, which draws the same curves
band_option = click.option(
    "--band",
    type=click.Choice(["std", "ci"]),
    default="std",
    show_default=True,
    help="Shade around a mean of seeds: standard deviation, or bootstrap 95% interval of the mean.",
)


@click.command("plot", help=PLOT_HELP)
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--metric", default="train/cost", show_default=True, help="A name logged in metrics.jsonl.")
@click.option(
    "--threshold", type=float, default=None, help="Mark this value and report when each run got there."
)
@click.option(
    "--log-y/--linear-y",
    default=None,
    help="Log y axis (default: log for costs and losses that fall by more than a decade).",
)
@click.option(
    "--group-seeds/--no-group-seeds",
    default=None,
    help="Average runs that differ only in their seed (default: on when a sweep is named).",
)
@band_option
@click.option(
    "--x",
    "x_axis",
    type=click.Choice(["step", "minutes"]),
    default="step",
    show_default=True,
    help="The x axis: minibatches, or wall minutes since each run started.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG to write (default: artifacts/ of the run or sweep named first).",
)
def plot_cmd(
    paths: tuple[Path, ...],
    metric: str,
    threshold: float | None,
    log_y: bool | None,
    group_seeds: bool | None,
    band: str,
    x_axis: str,
    out: Path | None,
) -> None:
    from rich.table import Table

    from fdlcli.analysis import curves as curves_module
    from fdlcli.terminal import make_console

    run_dirs = curves_module.expand_run_dirs(paths)
    if group_seeds is None:  # a sweep: one curve per configuration; runs named one by one: each its own
        group_seeds = x_axis == "step" and any(not (path / CONFIG_FILE).is_file() for path in paths)
    curves = curves_module.load_curves(run_dirs, metric, group_seeds, band, x_axis)
    unit, units = ("minibatch", "minibatches") if x_axis == "step" else ("minute", "minutes")
    lower_is_better = curves_module.lower_is_better(metric)
    if out is None:
        out = paths[0] / "artifacts" / f"plot-{metric.replace('/', '-')}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    title = textwrap.fill(
        f"{metric}: " + ", ".join(_short_name(p) for p in paths), width=90, break_on_hyphens=False
    )
    if any(curve.band for curve in curves):
        title += f"\n({curves_module.BANDS[band]})"
    log_y = curves_module.auto_log_y(metric, curves) if log_y is None else log_y
    curves_module.plot_curves(out, curves, metric, log_y, threshold, title, curves_module.X_AXES[x_axis])
    for curve in curves:
        steps, values = zip(*curve.points, strict=True)
        finite = [v for v in values if math.isfinite(v)] or [math.nan]  # a null record reads as NaN
        best = min(finite) if lower_is_better else max(finite)
        spread = f" [{curve.band[-1][0]:.4g}, {curve.band[-1][1]:.4g}]" if curve.band else ""
        click.echo(
            f"{curve.label}: {len(values)} points, last {values[-1]:.4g}{spread} "
            f"at {unit} {steps[-1]:.4g}, best {best:.4g}"
        )
    if threshold is not None:
        table = Table(title=f"{metric} reaching {threshold:g}")
        for column in ("run", "final", f"{units} to threshold"):
            table.add_column(column, justify="left" if column == "run" else "right")
        for curve in curves:
            reached = curves_module.steps_to_threshold(curve.points, threshold, below=lower_is_better)
            shown = "not reached" if reached is None else f"{reached:.4g}"
            table.add_row(curve.label, f"{curve.points[-1][1]:.4g}", shown)
        make_console(width=200).print(table)
    click.echo(f"wrote {out}")


COMMANDS = [plot_cmd]
