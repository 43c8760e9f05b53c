"""The ``fdl`` command line.

Every command turns user mistakes into one line on stderr and a non-zero exit (2 for bad usage or
config); ``--debug`` (or FDL_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from fdlcli import __version__
from fdlcli.errors import FdlError
from fdlcli.terminal import console, err_console, print_error  # markup off: paths print as they are

TRAIN_HELP = """Train EXPERIMENT with Hydra overrides (key=value, group=option, +key=value, ~key).

\b
  fdl train mlp-mnist optim.lr=3e-3 trainer.epochs=50
  fdl train mlp-mnist -m optim=sgd,momentum,adam hydra/launcher=joblib
  fdl train --resume runs/mlp-mnist/2026-11-28_21-30-05_a1b2c3 [trainer.epochs=400]
  fdl train --resume runs/mlp-mnist/sweeps/2026-11-28_21-40-00_d4e5f6   (finish a sweep)
  fdl train --resume mlp-mnist/sweeps/2026-11-28_21-40-00_d4e5f6 --retry-failed
  fdl train mlp-mnist trainer.devices=2        (data-parallel, see docs/scaling.md)
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fdl")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """fdl: the experiments of Fundamentals of Deep Learning, in PyTorch, on real data."""
    ctx.ensure_object(dict)
    if debug:
        os.environ["FDL_DEBUG"] = "1"


@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the experiments as a JSON list.")
def list_cmd(as_json: bool) -> None:
    """List the experiments with their chapter, dataset and the book's reported result."""
    from fdlcli import registry
    from fdlcli.runs import to_json

    fields = {"experiment": "name", "chapter": "chapter", "dataset": "dataset"}
    fields |= {"book reports": "book_result", "what": "description"}
    specs = registry.specs()
    if as_json:
        click.echo(
            to_json([{key: getattr(spec, key) for key in fields.values()} for spec in specs], indent=2)
        )
        return
    table = Table(title="fdl experiments")
    # a name is what a user types next, so it is never cut: the other columns fold their text instead
    table.add_column("experiment", no_wrap=True, min_width=max(len(spec.name) for spec in specs))
    table.add_column("chapter", no_wrap=True)
    for column in ("dataset", "book reports", "what"):
        table.add_column(column, overflow="fold")
    for spec in specs:
        table.add_row(spec.name, str(spec.chapter), spec.dataset, spec.book_result, spec.description)
    console.print(table)


@cli.command("config", context_settings={"ignore_unknown_options": True})
@click.argument("experiment")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
def config_cmd(experiment: str, overrides: tuple[str, ...]) -> None:
    """Print the fully resolved config of EXPERIMENT with OVERRIDES applied."""
    from omegaconf import OmegaConf
    from rich.syntax import Syntax

    from fdlcli import config

    _reject_options(overrides)
    run_config = config.validate(config.compose(experiment, list(overrides)))
    text = OmegaConf.to_yaml(OmegaConf.create(run_config.to_dict()))
    if sys.stdout.isatty():
        console.print(Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    else:
        click.echo(text, nl=False)


@cli.command("train", help=TRAIN_HELP, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-m", "--multirun", is_flag=True, help="Sweep: one job per combination of comma-separated values."
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Continue an interrupted run (or sweep directory) from its last checkpoint(s).",
)
@click.option(
    "--fail-fast/--keep-going",
    default=False,
    show_default=True,
    help="Sweeps: stop starting jobs after the first failure, or run every job and report failures.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="With --resume SWEEP: also rerun the failed jobs, from scratch (the failed attempt is kept).",
)
def train_cmd(
    args: tuple[str, ...], multirun: bool, resume_dir: Path | None, fail_fast: bool, retry_failed: bool
) -> None:
    from fdlcli import launch, runs

    _reject_options(args)
    if retry_failed and resume_dir is None:
        raise click.UsageError("--retry-failed reruns the failed jobs of a sweep: add --resume SWEEP_DIR")
    if resume_dir is not None:
        resume_dir = runs.locate(resume_dir)  # a path, or an id as `fdl runs` shows it
        if multirun:
            raise click.UsageError("--resume continues one run; it does not combine with -m")
        if (resume_dir / "multirun.yaml").is_file():
            if args:
                raise click.UsageError("a sweep resumes with its own overrides; add none")
            _report_sweep(launch.resume_sweep(resume_dir, fail_fast=fail_fast, retry_failed=retry_failed))
            return
        if fail_fast:
            raise click.UsageError("--fail-fast applies to sweeps (-m)")
        if retry_failed:
            raise click.UsageError("--retry-failed applies to sweeps; a single run resumes with --resume RUN")
        launch.resume(resume_dir, list(args))
        return
    if not args:
        from fdlcli import registry

        raise click.UsageError(f"name an experiment: {', '.join(registry.names())}")
    experiment, *overrides = args
    if fail_fast and not multirun:
        raise click.UsageError("--fail-fast applies to sweeps (-m)")
    results = launch.launch(experiment, overrides, multirun, fail_fast=fail_fast)
    if multirun:
        _report_sweep(results)


def _report_sweep(results: list[Any]) -> None:
    from fdlcli.analysis import sweeps

    _print_sweep_table(results)
    jobs = [
        sweeps.Job(r.number, sweeps.user_overrides(r.overrides), r.status, r.summary or {}) for r in results
    ]
    groups = sweeps.group_by_seed(jobs)
    if len(groups) < len(jobs):  # some configurations ran with several seeds
        console.print(sweeps.rich_table(sweeps.rows(groups), "per configuration, over seeds"))
    failed = [r for r in results if r.status != "completed"]
    if failed:
        sweep = Path(results[0].run_dir).parent
        raise FdlError(
            f"{len(failed)} of {len(results)} sweep jobs failed (see the table above); rerun them with: "
            f"fdl train --resume {sweep} --retry-failed"
        )


def _print_sweep_table(results: list[Any]) -> None:
    from fdlcli.analysis.curves import minibatches_to_cost

    table = Table(title=f"sweep: {len(results)} jobs")
    for column in (
        "#",
        "overrides",
        "status",
        "epochs",
        "best val",
        "test acc (final)",
        "test acc (best)",
        "minibatches to cost<=0.1",
        "time s",
    ):
        table.add_column(column, justify="right" if column not in ("overrides", "status") else "left")

    def fmt(value: Any, digits: int = 4) -> str:
        return f"{value:.{digits}f}" if isinstance(value, float) else "-" if value is None else str(value)

    for result in results:
        summary = result.summary or {}
        final, best = summary.get("final", {}), summary.get("best", {})
        user_overrides = [o for o in result.overrides if not o.startswith(("experiment=", "hydra"))]
        table.add_row(
            str(result.number),
            " ".join(user_overrides) or "(defaults)",
            (f"failed: {result.error}" if result.error else result.status)
            + (" (earlier)" if result.previous else ""),
            fmt(summary.get("epochs")),
            fmt(best.get("value")),
            fmt(final.get("test/accuracy")),
            fmt(best.get("test/accuracy")),
            fmt(minibatches_to_cost(Path(result.run_dir))),  # chapter 4's yardstick, from metrics.jsonl
            fmt(summary.get("train_seconds"), 1),
        )
    console.print(table)
    if results:
        console.print(f"sweep directory: {Path(results[0].run_dir).parent}")


@cli.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", default="best", show_default=True, help="best, last, init or step-N.")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_cmd(run_dir: Path, checkpoint: str, split: str, as_json: bool) -> None:
    """Evaluate a finished (or interrupted) run's checkpoint and record the metrics in the run."""
    from fdlcli import launch

    metrics = launch.evaluate(run_dir, checkpoint, split)
    if as_json:
        from fdlcli.runs import to_json

        click.echo(to_json(metrics))
        return
    table = Table(title=f"{run_dir} ({checkpoint} checkpoint)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)


def _reject_options(args: tuple[str, ...]) -> None:
    """Unknown --options reach us through ignore_unknown_options; they are mistakes, not overrides."""
    for arg in args:
        if arg.startswith("-"):
            raise click.UsageError(f"no such option: {arg}")


def _add_command_modules() -> None:
    """Commands of other modules (analysis, play, translate, ...): every module in fdlcli/commands that
    defines ``COMMANDS``, a list of Click commands. Such modules import heavy libraries inside the
    command functions so that `fdl --help` stays fast."""
    import importlib
    import pkgutil

    import fdlcli.commands as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            cli.add_command(command)


_add_command_modules()


def main(argv: list[str] | None = None) -> None:
    debug = os.environ.get("FDL_DEBUG") == "1" or "--debug" in (argv if argv is not None else sys.argv[1:])
    if os.environ.get("RANK", "0") not in ("", "0") and not debug:
        # data-parallel ranks other than 0: rank 0 reports; the others only exit with its status
        err_console.quiet = True
    try:
        cli.main(args=argv, prog_name="fdl", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        if debug:
            raise
        print_error(exc.format_message())
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except FdlError as exc:
        if debug:
            raise
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        print_error("", label="interrupted")
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print_error(f"{type(exc).__name__}: {first} (rerun with --debug for the traceback)")
        sys.exit(1)
