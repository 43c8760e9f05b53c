"""``fdl report``: a static HTML report of a run, a sweep, several runs, or the whole book (--book)."""

from __future__ import annotations

from pathlib import Path

import click

from fdlcli.commands.plot import band_option
from fdlcli.errors import UsageError
from fdlcli.runs import CONFIG_FILE

REPORT_HELP = """Write a static HTML report (index.html and its images; no server, nothing fetched).

\b
  fdl report runs/mlp-mnist/2026-11-28_21-30-05_a1b2c3          (into the run's report/)
  fdl report runs/mlp-mnist/sweeps/2026-11-28_21-42-01_4436f7   (jobs compared, seeds averaged)
  fdl report RUN_A RUN_B -o cmp/                                 (several runs side by side)
  fdl report --book runs/ -o book/                               (each experiment's best run vs the book)

A run's report holds its config (the overridden lines highlighted), final, best and test metrics, fdl eval
records, curves of its training cost and every val/* metric, and every figure, video and text file of its
artifacts/. A sweep's report compares its jobs (the config keys that differ, and their metrics) and overlays
their curves, runs that differ only in their seed drawn as a mean with a shaded band (--band).
"""


@click.command("report", help=REPORT_HELP)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--book",
    "book_root",
    type=click.Path(path_type=Path),
    help="A runs root: every experiment's best completed run beside the book's result.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write (default: report/ inside the run, the sweep or the runs root).",
)
@band_option
def report_cmd(paths: tuple[Path, ...], book_root: Path | None, out: Path | None, band: str) -> None:
    from fdlcli.analysis import report
    from fdlcli.analysis.curves import expand_run_dirs
    from fdlcli.analysis.rundata import load_run
    from fdlcli.errors import RunDirError

    if book_root is not None:
        if paths:
            raise UsageError("give either runs and sweeps or --book RUNS_ROOT, not both")
        if not book_root.is_dir():
            raise RunDirError(f"no such runs directory: {book_root}")
        written = report.write_report(
            out or book_root / "report",
            lambda page: report.book_report(page, book_root, band),
            "fdl: the book",
        )
    elif not paths:
        raise UsageError("name a run or sweep directory (or several), or --book RUNS_ROOT")
    else:
        run_dirs = expand_run_dirs(paths)  # checks every path is a run or holds runs
        if len(paths) > 1 and out is None:
            raise UsageError("several runs make one comparison report: name its folder with -o DIR")
        target = out or paths[0] / "report"
        if len(paths) == 1 and (paths[0] / CONFIG_FILE).is_file():
            run = load_run(paths[0])
            title = f"{run.experiment}: {paths[0].name}"
            written = report.write_report(target, lambda page: report.run_report(page, run, band), title)
        else:
            name = " vs ".join(dict.fromkeys(load_run(d).experiment for d in run_dirs))
            title = f"{name}: {paths[0].name}" if len(paths) == 1 else f"{name}: {len(run_dirs)} runs"
            subtitle = "  ".join(str(p.resolve()) for p in paths)
            written = report.write_report(
                target, lambda page: report.compare_report(page, title, subtitle, run_dirs, band), title
            )
    click.echo(f"wrote {written}")


COMMANDS = [report_cmd]
