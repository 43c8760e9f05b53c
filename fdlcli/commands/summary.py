"""``fdl summary SWEEP_DIR``: a sweep's configurations with mean and std over their seeds."""

from __future__ import annotations

from pathlib import Path

import click

from fdlcli.errors import RunDirError


@click.command("summary")
@click.argument("sweep_dir", type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write a CSV.")
def summary_cmd(sweep_dir: Path, csv_path: Path | None) -> None:
    """Group SWEEP_DIR's jobs that differ only by seed; mean and std of each configuration's metrics."""
    from fdlcli.analysis import sweeps
    from fdlcli.terminal import console

    jobs = sweeps.load_sweep(sweep_dir)
    if not jobs:
        raise RunDirError(f"{sweep_dir} holds no jobs yet")
    table = sweeps.rows(sweeps.group_by_seed(jobs))
    console.print(sweeps.rich_table(table, f"{sweep_dir}: {len(jobs)} jobs, {len(table)} configurations"))
    if csv_path is not None:
        sweeps.write_csv(table, csv_path)
        console.print(f"wrote {csv_path}")


COMMANDS = [summary_cmd]
