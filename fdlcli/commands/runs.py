"""Browsing runs: ``fdl runs`` (list, clean), ``fdl compare`` and ``fdl diff``."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import click

RUNS_HELP = """List every run and sweep job under the runs root (./runs or $FDL_RUNS_DIR), newest first.

\b
  fdl runs [EXPERIMENT] [--status S] [-n N] [--json]
  fdl runs clean [EXPERIMENT] [--failed] [--older-than 7d] [--keep-best N] [--yes]

\b
  fdl runs                                   every run
  fdl runs mlp-mnist --status failed         one experiment's failed runs
  fdl runs --json | jq '.[0].id'             machine-readable (strict JSON)
  fdl runs clean --failed                    what would be deleted (add --yes to delete)

Each run shows its id (its path under the runs root, which `fdl eval`, `fdl compare`, `fdl diff`,
`fdl plot` and `fdl train --resume` accept), status, start, training time, overrides and the final and
best value of its monitored metric. A "running" run whose process is gone shows as "dead" (resume it
with `fdl train --resume ID`). Only meta.json and summary.json are read, so thousands of runs list in
about a second.
"""

TABLE_ROWS = 50
_STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "interrupted": "yellow",
    "dead": "magenta",
    "failed": "red",
    "diverged": "red",
}


class _ListByDefault(click.Group):
    """``fdl runs [EXPERIMENT] [options]`` lists; ``fdl runs clean ...`` cleans: a first argument that
    is not a subcommand goes to ``list``."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group("runs", cls=_ListByDefault, help=RUNS_HELP)
def runs_group() -> None:
    pass


@runs_group.command("list")
@click.argument("experiment", required=False)
@click.option(
    "--status",
    help="Only runs with this status (running, completed, interrupted, diverged, failed, dead, not started).",
)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(min=0),
    help=f"Only the newest N runs, 0 for all (default: the newest {TABLE_ROWS} in the table, all in JSON).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
def list_cmd(experiment: str | None, status: str | None, limit: int | None, as_json: bool) -> None:
    """List the runs (the default of `fdl runs`)."""
    from fdlcli import catalog, runs
    from fdlcli.terminal import console

    records = catalog.load(experiment, status)
    total = len(records)
    if limit is None and not as_json:
        limit = TABLE_ROWS  # newest first: a longer table scrolls the newest runs out of sight
    records = records[:limit] if limit else records
    if as_json:
        click.echo(json.dumps([record.to_json() for record in records], indent=2, allow_nan=False))
        return
    if not records:
        of = f" of {experiment}" if experiment else ""
        having = f" with status {status}" if status else ""
        click.echo(f"no runs{of}{having} under {runs.runs_root()}")
        return
    caption = None
    if total > len(records):
        caption = f"the newest {len(records)} of {total} runs (-n 0 for all of them, --json for a program)"
    console.print(_runs_table(records, caption, console.width))


def _runs_table(records: list[Any], caption: str | None, width: int) -> Any:
    """The runs, one row each. The id (which starts with the experiment's name) is what users copy: it
    stays whole on one line while the console leaves the other columns about 8 characters each (the
    start column goes first); on a narrower console it folds onto more lines, never cut."""
    metrics = {record.metric for record in records}
    shared_metric = metrics.pop() if len(metrics) == 1 else None
    id_width = max((len(record.id) for record in records), default=2)
    others = 6 if shared_metric else 7  # columns beside the id, the start column included
    whole_id = width >= id_width + 4 + 10 * (others - 1)
    with_start = width >= id_width + 4 + 10 * others or not whole_id
    return _build_runs_table(records, caption, shared_metric, whole_id, with_start)


def _build_runs_table(
    records: list[Any], caption: str | None, shared_metric: str | None, whole_id: bool, with_start: bool
) -> Any:
    from rich.table import Table
    from rich.text import Text

    from fdlcli import catalog

    title = f"final and best {shared_metric} (the monitored metric)" if shared_metric else None
    table = Table(title=title, caption=caption, caption_justify="left")
    table.add_column("id", no_wrap=whole_id, overflow="fold")
    table.add_column("status", overflow="fold")
    if with_start:
        table.add_column("start", overflow="fold")
    table.add_column("time", justify="right", overflow="fold")
    table.add_column("overrides", overflow="fold")
    if shared_metric is None:
        table.add_column("metric", overflow="fold")
    table.add_column("final", justify="right", overflow="fold")
    table.add_column("best", justify="right", overflow="fold")
    for record in records:
        # a styled Text, not markup: fdl's consoles print strings literally (terminal.make_console)
        cells: list[Any] = [record.id, Text(record.status, style=_STATUS_STYLE.get(record.status, ""))]
        if with_start:
            cells.append(catalog.format_start(record))
        cells += [catalog.format_duration(record.duration), " ".join(record.overrides)]
        if shared_metric is None:
            cells.append(record.metric or "-")
        table.add_row(*cells, _number(record.final), _number(record.best))
    return table


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


@runs_group.command("clean")
@click.argument("experiment", required=False)
@click.option("--failed", is_flag=True, help="Failed and diverged runs.")
@click.option(
    "--older-than", "older_than", metavar="DURATION", help="Runs started longer ago (30m, 12h, 7d, 2w)."
)
@click.option(
    "--keep-best",
    type=int,
    metavar="N",
    help="All but the N best runs of each experiment, by its monitored metric.",
)
@click.option("--yes", is_flag=True, help="Delete (without it, only list what would be deleted).")
def clean_cmd(
    experiment: str | None, failed: bool, older_than: str | None, keep_best: int | None, yes: bool
) -> None:
    """Delete runs that every given criterion selects (a dry run without --yes).

    \b
      fdl runs clean --failed --yes
      fdl runs clean mlp-mnist --older-than 7d --keep-best 3

    A run whose process is still training is never deleted. A sweep whose last job is deleted goes too.
    """
    from fdlcli import catalog
    from fdlcli.terminal import console

    max_age = catalog.parse_duration(older_than) if older_than is not None else None
    records = catalog.load(experiment)
    doomed, spared = catalog.select_for_cleaning(records, failed, max_age, keep_best)
    for record in spared:
        console.print(f"kept {record.id}: it is still running", highlight=False)
    if not doomed:
        click.echo("nothing to delete")
        return
    sizes = {record.id: catalog.directory_size(record.path) for record in doomed}
    total = catalog.format_size(sum(sizes.values()))
    if not yes:
        from rich.table import Table

        table = Table(title=f"would delete {_count(len(doomed), 'run')}, {total}")
        for column in ("id", "status", "start", "metric", "best", "size"):
            table.add_column(column, no_wrap=column == "id", overflow="fold")
        for record in doomed:
            table.add_row(
                record.id,
                record.status,
                catalog.format_start(record),
                record.metric or "-",
                _number(record.best),
                catalog.format_size(sizes[record.id]),
            )
        console.print(table)
        click.echo("dry run: nothing deleted; add --yes to delete them")
        return
    deleted, freed = 0, 0
    for record in doomed:
        if catalog.delete_run(record):
            deleted += 1
            freed += sizes[record.id]
        else:
            console.print(f"kept {record.id}: a process is training it", highlight=False)
    click.echo(f"deleted {_count(deleted, 'run')}, {catalog.format_size(freed)}")


COMPARE_HELP = """Compare runs side by side: the config keys that differ and their metrics.

\b
  fdl compare mlp-mnist/sweeps/2026-11-28_21-40-00_d4e5f6 --sort test/accuracy
  fdl compare RUN_A RUN_B --all --format md

A sweep stands for its jobs. Metrics are named METRIC@SOURCE: @final and @best from summary.json
(the monitored metric, and the test metrics of the final and of the best model), @eval-CHECKPOINT
from `fdl eval`. --sort takes a metric (its first column for a bare name; best first) or a config key.
The table puts runs in columns for up to 4 runs and in rows beyond (--transpose flips it); csv, md
and json have one row per run.
"""


@click.command("compare", help=COMPARE_HELP)
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--only-changed/--all", default=True, show_default=True, help="Config keys that differ, or all."
)
@click.option("--sort", metavar="METRIC", help="Order runs by this metric (best first) or config key.")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "md", "json"]), default="table", show_default=True
)
@click.option("--transpose", is_flag=True, help="Table: flip runs between rows and columns.")
def compare_cmd(
    paths: tuple[str, ...], only_changed: bool, sort: str | None, fmt: str, transpose: bool
) -> None:
    from fdlcli.analysis import compare
    from fdlcli.catalog import json_safe

    comparison = compare.compare(compare.load_runs(paths), only_changed, sort)
    rows = comparison.rows()
    if fmt == "json":
        records = [
            {
                "id": row["id"],
                "experiment": row["experiment"],
                "status": row["status"],
                "config": {key: row[key] for key in comparison.keys},
                "metrics": {name: row[name] for name in comparison.metrics},
            }
            for row in rows
        ]
        click.echo(json.dumps(json_safe(records), indent=2, allow_nan=False))
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
        click.echo(buffer.getvalue(), nl=False)
    elif fmt == "md":
        header = list(rows[0])
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in rows:
            cells = [compare.format_value(row[key]).replace("|", "\\|") for key in header]
            lines.append("| " + " | ".join(cells) + " |")
        click.echo("\n".join(lines))
    else:
        _print_comparison(comparison, rows, transpose)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return value


def _print_comparison(comparison: Any, rows: list[dict[str, Any]], transpose: bool) -> None:
    from rich.table import Table

    from fdlcli.analysis.compare import format_value
    from fdlcli.terminal import console

    fields = ["experiment", "status", *comparison.keys, *comparison.metrics]
    if len({row["experiment"] for row in rows}) == 1:
        fields.remove("experiment")
    title = f"{_count(len(rows), 'run')}: " + (
        _count(len(comparison.keys), "differing config key") if comparison.keys else "same config"
    )
    runs_in_columns = (len(rows) <= 4) != transpose
    table = Table(title=title)
    if runs_in_columns:
        table.add_column("", overflow="fold")
        for row in rows:
            table.add_column(row["id"], justify="right", overflow="fold")
        for name in fields:
            table.add_row(name, *(format_value(row[name]) for row in rows), end_section=name == "status")
    else:
        table.add_column("id", no_wrap=True, overflow="fold")
        for name in fields:
            table.add_column(
                name, justify="left" if name in ("status", "experiment") else "right", overflow="fold"
            )
        for row in rows:
            table.add_row(row["id"], *(format_value(row[name]) for name in fields))
    console.print(table)


@click.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@click.option("-p", "--patch", is_flag=True, help="Print the code difference in full, not only which files.")
@click.option("--json", "as_json", is_flag=True, help="Print the differences as JSON.")
def diff_cmd(run_a: str, run_b: str, patch: bool, as_json: bool) -> None:
    """The difference between two runs: resolved config (added, removed, changed keys), the environment
    (package versions, device) and, when both runs recorded it, the code (commit and uncommitted changes)."""
    from fdlcli import catalog, runs
    from fdlcli.analysis import compare

    records = [catalog.read_record(runs.resolve_run_dir(path)) for path in (run_a, run_b)]
    a, b = records
    config = compare.diff_mappings(compare.load_config(a.path), compare.load_config(b.path))
    env = compare.diff_mappings(compare.environment(a), compare.environment(b))
    code = compare.code_difference(a, b)
    if as_json:
        result = {
            "a": a.id,
            "b": b.id,
            "config": _diff_json(config),
            "environment": _diff_json(env),
            "code": code.to_json(),
        }
        click.echo(json.dumps(catalog.json_safe(result), indent=2, allow_nan=False, default=str))
        return
    click.echo(f"A: {a.id}\nB: {b.id}")
    _echo_diff("config", config)
    _echo_diff("environment", env)
    _echo_code(code, patch)


def _diff_json(diff: Any) -> dict[str, Any]:
    return {
        "added": diff.added,
        "removed": diff.removed,
        "changed": {key: {"a": a, "b": b} for key, (a, b) in diff.changed.items()},
    }


def _echo_diff(title: str, diff: Any) -> None:
    from fdlcli.analysis.compare import format_value

    if diff.empty():
        click.echo(f"{title}: same")
        return
    click.echo(f"{title}:")
    for key, (a, b) in diff.changed.items():
        click.echo(f"  ~ {key}: {format_value(a)} -> {format_value(b)}")
    for key, value in diff.added.items():
        click.echo(click.style(f"  + {key}: {format_value(value)}", fg="green"))
    for key, value in diff.removed.items():
        click.echo(click.style(f"  - {key}: {format_value(value)}", fg="red"))


def _echo_code(code: Any, patch: bool) -> None:
    if not code.known:
        click.echo("code: " + "; ".join(code.notes))
        return
    same_changes = code.patch_a == code.patch_b
    if code.same_commit and same_changes:
        click.echo(
            f"code: same (commit {code.commit_a[:10]}"
            + (", same uncommitted changes)" if code.patch_a else ")")
        )
    else:
        click.echo("code:")
        if not code.same_commit:
            click.echo(f"  commit {code.commit_a[:10]} -> {code.commit_b[:10]}")
            stat = code.commit_stat()
            if stat is None:
                click.echo("  (this checkout does not hold both commits: no file list)")
            elif stat.strip():
                click.echo("".join(f"    {line}\n" for line in stat.strip().splitlines()), nl=False)
        else:
            click.echo(f"  commit {code.commit_a[:10]} (same)")
        if not same_changes:
            files = code.changed_files
            click.echo(f"  uncommitted changes differ in: {', '.join(files) or '(whitespace only)'}")
    for note in code.notes:
        click.echo(f"  note: {note}")
    if patch:
        committed = code.commit_patch()
        if committed:
            click.echo(committed, nl=False)
        if not same_changes:
            click.echo(code.patch_of_patches(), nl=False)


COMMANDS = [runs_group, compare_cmd, diff_cmd]
