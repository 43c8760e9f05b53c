"""Static HTML reports: a run, a sweep (or several runs side by side), and the book re-run chapter by chapter.

A report is one ``index.html`` with inline CSS and no script, and an ``assets/`` folder beside it holding
the curves drawn here and copies of the runs' figures, so it opens from the file system, is complete when
copied elsewhere, and fetches nothing from the network (a Content-Security-Policy forbids it). Every text
that comes from a run (config values, overrides, metric names, file contents) is HTML-escaped.

The report is built in a temporary folder beside its destination and renamed into place, so a reader
never sees half a report; an existing destination is replaced only if it is an fdl report.
"""

from __future__ import annotations

import datetime as dt
import html
import os
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fdlcli import __version__, runs
from fdlcli.analysis import curves as curves_module
from fdlcli.analysis import sweeps
from fdlcli.analysis.rundata import RunData, differing_keys, is_number, load_run, numeric_items, override_keys
from fdlcli.errors import RunDirError
from fdlcli.runs import CONFIG_FILE, atomic_write_text, read_eval_records

MARKER = ".fdl-report"  # a folder holding it is a report fdl may replace
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".webm"}
TEXT_SUFFIXES = {".txt", ".csv", ".tsv", ".json", ".jsonl", ".log", ".md", ".yaml"}
TEXT_PREVIEW_LINES, TEXT_PREVIEW_CHARS = 60, 8000
COPY_LIMIT_BYTES = 64 * 2**20  # larger artifacts are listed, not copied
TEXT_COPY_LIMIT_BYTES = 2 * 2**20  # larger text files (word2vec's embeddings.txt) are only previewed
MAX_CURVES = 12
# the training curve first: the first of these a run logged (style transfer logs loss/* terms instead)
TRAINING_CURVES = ("train/cost", "train/return_avg", "train/return", "train/loss")

CSS = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa;
        --accent: #0b5cad; --mark: #fff3c4; --good: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; color: var(--ink); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid var(--line); } h3 { font-size: 16px; margin: 22px 0 8px; }
p.sub { color: var(--muted); margin: 0 0 14px; word-break: break-all; }
a { color: var(--accent); text-decoration: none; } a:hover { text-decoration: underline; }
nav { font-size: 14px; margin: 10px 0 0; } nav a { margin-right: 14px; }
code, pre, .mono { font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono",
                   monospace; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
      overflow: auto; max-height: 480px; margin: 6px 0 14px; }
pre.config { max-height: none; }
pre .ov { background: var(--mark); display: inline-block; min-width: 100%; font-weight: 600; }
table { border-collapse: collapse; margin: 6px 0 16px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.mark td { background: var(--mark); }
.wide { overflow-x: auto; }
.row { display: flex; flex-wrap: wrap; gap: 0 28px; align-items: flex-start; }
.badge { display: inline-block; white-space: nowrap; padding: 1px 8px; border-radius: 10px;
         font-size: 12px; font-weight: 600; background: var(--soft); border: 1px solid var(--line); }
.badge.completed, .badge.run { color: var(--good); border-color: var(--good); }
.badge.failed, .badge.diverged, .badge.interrupted, .badge.not-run { color: var(--bad);
         border-color: var(--bad); }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 14px;
         margin: 8px 0 14px; } .facts dt { color: var(--muted); } .facts dd { margin: 0;
         word-break: break-all; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); gap: 14px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
figure img, figure video { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 6px; word-break: break-all; }
.muted { color: var(--muted); } .note { color: var(--muted); font-size: 13px; }
.chapter { margin-top: 8px; } .exp { border-left: 3px solid var(--line); padding-left: 14px;
           margin: 18px 0 26px; }
"""
# Only what lies beside the page may load: no network, no script, styles inline.
CSP = "default-src 'none'; img-src 'self' file: data:; media-src 'self' file:; style-src 'unsafe-inline'"


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers to 4 significant digits (integers whole), anything else as text."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


class Html(str):
    """Markup that is already escaped (a table cell holding a link, a badge)."""


def cell(value: Any) -> str:
    if isinstance(value, Html):
        return f"<td>{value}</td>"
    if is_number(value):
        return f'<td class="num">{esc(fmt(value))}</td>'
    return f"<td>{esc('-' if value is None else fmt(value))}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], marked: Iterable[int] = ()) -> str:
    marks = set(marked)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        f"<tr{' class=mark' if i in marks else ''}>{''.join(cell(v) for v in row)}</tr>"
        for i, row in enumerate(rows)
    )
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def badge(status: str) -> Html:
    return Html(f'<span class="badge {esc(status.replace(" ", "-"))}">{esc(status)}</span>')


def facts(items: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v not in (None, ""))
    return f'<dl class="facts">{rows}</dl>'


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


@dataclass
class Page:
    """One report being written: its HTML parts and the files placed under ``assets/``."""

    folder: Path  # the staging folder (renamed to the destination when done)
    title: str
    parts: list[str] = field(default_factory=list)
    toc: list[tuple[str, str]] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def add(self, *markup: str) -> None:
        self.parts.extend(markup)

    def section(self, anchor: str, title: str) -> None:
        self.toc.append((anchor, title))
        self.add(f'<h2 id="{esc(anchor)}">{esc(title)}</h2>')

    def asset(self, name: str) -> tuple[Path, str]:
        """A fresh file path under assets/ and its URL relative to index.html."""
        stem, suffix = os.path.splitext(slug(name))
        unique, n = f"{stem}{suffix}", 1
        while unique in self._names:
            n += 1
            unique = f"{stem}-{n}{suffix}"
        self._names.add(unique)
        path = self.folder / "assets" / unique
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, "assets/" + urllib.parse.quote(unique)

    def copy(self, source: Path, name: str) -> str:
        path, url = self.asset(name)
        shutil.copyfile(source, path)
        return url

    def render(self) -> str:
        nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t in self.toc)
        stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="fdl {esc(__version__)}">'
            f"<title>{esc(self.title)}</title><style>{CSS}</style></head>\n<body><main>"
            + (f"<nav>{nav}</nav>" if nav else "")
            + "\n".join(self.parts)
            + f'<p class="note">written by fdl {esc(__version__)} on {esc(stamp)}</p></main></body></html>\n'
        )


# --------------------------------------------------------------------------------------------------
# Pieces shared by the three kinds of report.


def curve_metrics(logged: Iterable[str]) -> list[str]:
    """What to draw of a run: its training curve (cost, RL return, or loss terms), then every val/* and
    eval/* metric."""
    names = set(logged)
    chosen = [next((m for m in TRAINING_CURVES if m in names), None)]
    if chosen[0] is None:
        chosen = sorted(n for n in names if n.startswith("loss/"))
    chosen += sorted(n for n in names if n.startswith(("val/", "eval/")))
    return [m for m in chosen if m][:MAX_CURVES]


def draw_curves(
    page: Page, run_dirs: list[Path], group_seeds: bool, band: str, only: Sequence[str] | None = None
) -> list[str]:
    """PNG curves of the runs' metrics (seeds grouped into a mean and band); figure markup for each."""
    logged: dict[str, list[float]] = {}
    for run_dir in run_dirs:
        for name, points in curves_module.read_curves(run_dir).items():
            logged.setdefault(name, []).extend(v for _, v in points)
    # a line needs two points, and a flat one (a count of evaluation episodes) says nothing the table doesn't
    wanted = [m for m in (only or curve_metrics(logged)) if len(set(logged.get(m, []))) >= 2]
    figures = []
    for metric in wanted:
        curves = curves_module.load_curves(run_dirs, metric, group_seeds, band)
        if len(run_dirs) == 1:
            curves[0].label = ""  # one run: no legend
        title = metric + (f" ({curves_module.BANDS[band]})" if any(c.band for c in curves) else "")
        path, url = page.asset(f"curve-{metric}.png")
        log_y = curves_module.auto_log_y(metric, curves)
        curves_module.plot_curves(path, curves, metric, log_y, None, title, xlabel="step")
        figures.append(figure_img(url, metric))
    return figures


def figure_img(url: str, caption: str) -> str:
    return (
        f'<figure><img src="{esc(url)}" alt="{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>'
    )


def gallery(figures: list[str]) -> str:
    return f'<div class="gallery">{"".join(figures)}</div>' if figures else ""


def artifact_files(run_dir: Path) -> list[Path]:
    folder = run_dir / "artifacts"
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and not p.is_symlink()
    )


def text_preview(path: Path) -> str:
    """The head of a text file: at most TEXT_PREVIEW_LINES lines and TEXT_PREVIEW_CHARS characters."""
    with open(path, errors="replace") as handle:
        head = handle.read(TEXT_PREVIEW_CHARS + 1)
    lines = head.splitlines()
    cut = len(head) > TEXT_PREVIEW_CHARS or len(lines) > TEXT_PREVIEW_LINES
    shown = "\n".join(lines[:TEXT_PREVIEW_LINES])[:TEXT_PREVIEW_CHARS]
    return f"<pre>{esc(shown)}</pre>" + ('<p class="note">(the beginning only)</p>' if cut else "")


def artifacts_markup(page: Page, run_dir: Path, prefix: str, images_only: bool = False) -> str:
    """Every artifact of a run: images and videos in a gallery, text files shown (capped), others listed."""
    folder = run_dir / "artifacts"
    figures, texts, others = [], [], []
    for path in artifact_files(run_dir):
        name = str(path.relative_to(folder))
        suffix = path.suffix.lower()
        size = path.stat().st_size
        kind = "image" if suffix in IMAGE_SUFFIXES else "video" if suffix in VIDEO_SUFFIXES else "other"
        if images_only and kind == "other":
            continue
        if suffix in TEXT_SUFFIXES:
            url = page.copy(path, f"{prefix}{name}") if size <= TEXT_COPY_LIMIT_BYTES else None
            link = f' <a href="{esc(url)}">(whole file)</a>' if url else ""
            texts.append(f"<h3>{esc(name)}{link}</h3>{text_preview(path)}")
        elif size > COPY_LIMIT_BYTES:
            others.append(
                f"<li>{esc(name)} <span class=muted>({size / 2**20:.0f} MB, not copied)</span></li>"
            )
        elif kind == "image":
            figures.append(figure_img(page.copy(path, f"{prefix}{name}"), name))
        elif kind == "video":
            url = page.copy(path, f"{prefix}{name}")
            figures.append(
                f'<figure><video controls preload="metadata" src="{esc(url)}"></video>'
                f"<figcaption>{esc(name)}</figcaption></figure>"
            )
        else:
            url = page.copy(path, f"{prefix}{name}")
            others.append(f'<li><a href="{esc(url)}">{esc(name)}</a></li>')
    markup = gallery(figures) + "".join(texts)
    return markup + (f"<ul>{''.join(others)}</ul>" if others else "")


def config_markup(config: dict[str, Any], overrides: list[str]) -> str:
    """The resolved config as YAML, each line a key set (or a group chosen) by an override highlighted."""
    keys = override_keys(overrides)
    flat_keys = set(_config_paths(config))

    def overridden(path: str) -> bool:
        for key in keys:
            if key not in flat_keys and f"model.{key}" in flat_keys:  # a model shortcut (content=IMG)
                key = f"model.{key}"
            if path == key or path.startswith(key + "."):
                return True
        return False

    lines = []
    for path, depth, key, value in _config_lines(config):
        text = "  " * depth + f"{key}:" + ("" if value is None else f" {value}")
        lines.append(f'<span class="ov">{esc(text)}</span>' if overridden(path) else esc(text))
    return '<pre class="config">' + "\n".join(lines) + "</pre>"


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _config_lines(mapping: dict[str, Any], prefix: str = "", depth: int = 0):
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield path, depth, key, None
            yield from _config_lines(value, path + ".", depth + 1)
        else:
            yield path, depth, key, _yaml_value(value)


def _config_paths(config: dict[str, Any]) -> list[str]:
    return [path for path, *_ in _config_lines(config)]


def metrics_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]], list[int]]:
    """The final and best-checkpoint metrics side by side (train, val, test, others), with the row of the
    monitored metric to mark."""
    final = summary.get("final") if isinstance(summary.get("final"), dict) else {}
    best = summary.get("best") if isinstance(summary.get("best"), dict) else {}
    skip = {"epoch", "step", "metric", "value"}
    final_values = dict(numeric_items(final, skip))
    best_values = dict(numeric_items(best, skip))
    if best.get("metric") and is_number(best.get("value")):
        best_values.setdefault(str(best["metric"]), float(best["value"]))
    names = list(dict.fromkeys([*final_values, *best_values]))
    order = {"train": 0, "val": 1, "eval": 2, "test": 3}
    names.sort(key=lambda n: order.get(n.split("/", 1)[0], 4))
    header = ["metric", "final model"]
    if best_values:
        header.append(
            "best checkpoint" + (f" (epoch {best['epoch']})" if is_number(best.get("epoch")) else "")
        )
    rows = [[n, final_values.get(n), *([best_values.get(n)] if best_values else [])] for n in names]
    marked = [i for i, n in enumerate(names) if n == best.get("metric")]
    return header, rows, marked


def other_results(summary: dict[str, Any]) -> list[tuple[str, float]]:
    """The summary's other numbers (RL episodes, autoencoder code analysis, words/s...)."""
    ignored = {"final", "best", "history", "train_seconds"}  # the last is among the run's facts
    return list(numeric_items({k: v for k, v in summary.items() if k not in ignored}))


def experiment_spec(name: str) -> Any:
    from fdlcli import registry
    from fdlcli.errors import UnknownExperimentError

    try:
        return registry.get(name)
    except UnknownExperimentError:
        return None


# --------------------------------------------------------------------------------------------------
# A run.


def run_report(page: Page, run: RunData, band: str) -> None:
    spec = experiment_spec(run.experiment)
    meta = run.meta
    page.add(
        f"<h1>{esc(run.experiment)} {badge(run.status)}</h1>",
        f'<p class="sub mono">{esc(run.path.resolve())}</p>',
    )
    if spec is not None:
        page.add(
            f"<p>Chapter {esc(spec.chapter)}: {esc(spec.description)}. "
            f"The book reports <b>{esc(spec.book_result)}</b>.</p>"
        )
    git = meta.get("git") or {}
    commit = git.get("commit")
    page.add(
        facts(
            [
                ("overrides", " ".join(run.overrides) or "(none)"),
                ("started", meta.get("start_time")),
                ("ended", meta.get("end_time")),
                ("training time", f"{run.summary.get('train_seconds', meta.get('train_seconds', '-'))} s"),
                ("device", f"{meta.get('device', '-')}, {meta.get('threads', '-')} threads"),
                ("git", f"{commit[:12]}{' (dirty)' if git.get('dirty') else ''}" if commit else None),
                ("command", " ".join(str(c) for c in meta.get("command") or [])),
                ("error", meta.get("error")),
            ]
        )
    )
    page.section("metrics", "Metrics")
    header, rows, marked = metrics_rows(run.summary)
    if rows:
        if run.best:
            metric, value = run.best
            page.add(f"<p>Best {esc(metric)}: <b>{esc(fmt(value))}</b> (highlighted).</p>")
    else:
        page.add('<p class="muted">No summary yet (the run has not finished an evaluation).</p>')
    extra = other_results(run.summary)
    page.add(
        '<div class="row">'
        + (table(header, rows, marked) if rows else "")
        + (table(["other result", "value"], extra) if extra else "")
        + "</div>"
    )
    evals = read_eval_records(run.path)
    if evals:
        page.section("evals", "Evaluations (fdl eval)")
        page.add(
            table(
                ["time", "checkpoint", "split", "metrics", "record"],
                [
                    [
                        r.get("time"),
                        r.get("checkpoint"),
                        r.get("split"),
                        Html("<br>".join(f"{esc(k)} {esc(fmt(v))}" for k, v in numeric_items(r["metrics"]))),
                        r["source"],
                    ]
                    for r in evals
                ],
            )
        )
    page.section("curves", "Curves")
    figures = draw_curves(page, [run.path], False, band)
    page.add(gallery(figures) or '<p class="muted">Fewer than two records of every metric.</p>')
    page.section("config", "Config")
    page.add(
        '<p class="note">The resolved config.yaml; the lines set by the command line\'s overrides are '
        "highlighted.</p>",
        config_markup(run.config, run.overrides),
    )
    page.section("artifacts", "Figures and artifacts")
    page.add(artifacts_markup(page, run.path, "") or '<p class="muted">No artifacts.</p>')


# --------------------------------------------------------------------------------------------------
# Several runs: a sweep's jobs, or runs named together.


def compare_report(page: Page, title: str, subtitle: str, run_dirs: list[Path], band: str) -> None:
    runs = [load_run(d) for d in run_dirs]
    page.add(f"<h1>{esc(title)}</h1>", f'<p class="sub mono">{esc(subtitle)}</p>')
    statuses = [r.status for r in runs]
    page.add(
        f"<p>{len(runs)} runs: "
        + ", ".join(f"{statuses.count(s)} {esc(s)}" for s in dict.fromkeys(statuses))
        + ". Shared overrides: <code>"
        + esc(" ".join(o for o in runs[0].overrides if all(o in r.overrides for r in runs)) or "(none)")
        + "</code></p>"
    )
    keys = differing_keys(r.config for r in runs)
    own = curves_module.distinct_overrides([r.overrides for r in runs])
    best_metric = next((r.best[0] for r in runs if r.best), None)
    tests = sorted({n for r in runs for n, _ in numeric_items(r.summary.get("final") or {}) if "test/" in n})
    header = ["run", "status", "overrides", *keys]
    header += [f"best {best_metric}"] if best_metric else []
    header += [f"final {n}" for n in tests] + ["train s"]
    rows = []
    one_parent = len({r.path.parent for r in runs}) == 1
    for run, overrides in zip(runs, own, strict=True):
        flat = dict(_flat_config(run.config))
        final = dict(numeric_items(run.summary.get("final") or {}))
        name = run.path.name if one_parent else f"{run.path.parent.name}/{run.path.name}"
        row: list[Any] = [name, badge(run.status), " ".join(overrides), *(flat.get(k, "-") for k in keys)]
        if best_metric:
            row.append(run.best[1] if run.best and run.best[0] == best_metric else None)
        row += [final.get(n) for n in tests] + [run.summary.get("train_seconds")]
        rows.append(row)
    page.section("runs", "Runs")
    page.add(
        '<p class="note">Each run\'s overrides but those all share, and the config keys whose value is not '
        "the same in every run.</p>",
        table(header, rows),
    )
    jobs = [sweeps.Job(i, o, r.status, r.summary) for i, (r, o) in enumerate(zip(runs, own, strict=True))]
    groups = sweeps.group_by_seed(jobs)
    if any(len(g.jobs) > 1 for g in groups):
        page.section("seeds", "Over seeds")
        seed_rows = []
        for row in sweeps.rows(groups):
            cells: list[Any] = [row["config"], f"{row['n']}/{row['jobs']}", row["seeds"]]
            for name, _ in sweeps.METRICS:
                mean, std = row[f"{name} mean"], row[f"{name} std"]
                cells.append(None if mean is None else fmt(mean) + ("" if std is None else f" ± {std:.2g}"))
            seed_rows.append(cells)
        header = ["configuration", "n", "seeds", *(f"{n} (mean ± std)" for n, _ in sweeps.METRICS)]
        page.add(table(header, seed_rows))
    page.section("curves", "Curves")
    page.add(
        '<p class="note">Runs whose configs differ only in their seed are drawn as their mean with a '
        f"shaded band ({esc(curves_module.BANDS[band].removeprefix('shaded: '))}).</p>",
        gallery(draw_curves(page, run_dirs, True, band)) or '<p class="muted">No curves yet.</p>',
    )


def _flat_config(config: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    for path, _, _, value in _config_lines(config):
        if value is not None:
            yield path, value


# --------------------------------------------------------------------------------------------------
# The book: every registered experiment, its best completed run under a runs root.


def candidate_runs(root: Path, experiment: str) -> list[Path]:
    """Every run of an experiment under a runs root: plain runs and the jobs of its sweeps."""
    folder = root / experiment
    found = [p.parent for p in folder.glob(f"*/{CONFIG_FILE}") if p.parent.name != "sweeps"]
    found += [p.parent for p in folder.glob(f"sweeps/*/*/{CONFIG_FILE}")]
    return sorted(found)


def best_run(runs: list[RunData]) -> RunData | None:
    """The completed run with the best value of its monitored metric (summary.json ``best``, in the
    direction of trainer.monitor_mode); among runs that track none, the latest."""
    completed = [r for r in runs if r.status == "completed"]
    ranked = [r for r in completed if r.best]
    if ranked:
        metric = ranked[0].best[0]
        same = [r for r in ranked if r.best[0] == metric]
        sign = 1.0 if same[0].higher_is_better(metric) else -1.0
        return max(same, key=lambda r: (sign * r.best[1], str(r.meta.get("end_time", ""))))
    return max(completed, key=lambda r: str(r.meta.get("end_time", "")), default=None)


def headline(run: RunData) -> list[tuple[str, float]]:
    """The numbers to set beside the book's: the monitored metric's best value and the test metrics of
    the best checkpoint (else of the final model)."""
    shown = [(f"best {run.best[0]}", run.best[1])] if run.best else []
    # the test counterpart of the monitored metric first (test/accuracy for val/accuracy)
    first = "test/" + run.best[0].split("/", 1)[-1] if run.best else ""
    for part in ("best", "final"):
        tests = [(k, v) for k, v in numeric_items(run.summary.get(part) or {}) if k.startswith("test/")]
        tests.sort(key=lambda item: item[0] != first)
        if tests:
            return shown + [
                (f"{k} ({'best checkpoint' if part == 'best' else 'final model'})", v) for k, v in tests
            ]
    final = [
        (k, v) for k, v in numeric_items(run.summary.get("final") or {}) if k.startswith(("val/", "eval/"))
    ]
    return shown + final[:4]


def book_report(page: Page, root: Path, band: str) -> None:
    from fdlcli import registry

    chosen: dict[str, tuple[RunData | None, int, int]] = {}
    for spec in registry.specs():
        runs = []
        for path in candidate_runs(root, spec.name):
            try:
                runs.append(load_run(path))
            except RunDirError:
                continue
        completed = sum(r.status == "completed" for r in runs)
        chosen[spec.name] = (best_run(runs), completed, len(runs))
    done = sum(run is not None for run, _, _ in chosen.values())
    page.add(
        "<h1>Fundamentals of Deep Learning, re-run</h1>",
        f'<p class="sub mono">{esc(root.resolve())}</p>',
        f"<p>{done} of {len(chosen)} experiments have a completed run. For each, the completed run with "
        "the best value of its monitored metric stands beside the result the book reports.</p>",
    )
    page.section("overview", "Overview")
    rows = []
    for spec in registry.specs():
        run, _, _ = chosen[spec.name]
        ours = "; ".join(f"{k} {fmt(v)}" for k, v in headline(run)[:2]) if run else None
        name = Html(f'<a href="#{esc(slug(spec.name))}">{esc(spec.name)}</a>')
        rows.append([spec.chapter, name, spec.book_result, ours, badge("run" if run else "not run")])
    page.add(table(["chapter", "experiment", "the book reports", "best run", "status"], rows))
    chapter = None
    for spec in registry.specs():
        if spec.chapter != chapter:
            chapter = spec.chapter
            page.section(f"chapter-{chapter}", f"Chapter {chapter}")
        run, completed, total = chosen[spec.name]
        page.add(
            f'<div class="exp" id="{esc(slug(spec.name))}"><h3>{esc(spec.name)} '
            f"{badge('run' if run else 'not run')}</h3><p>{esc(spec.description)} "
            f'<span class="muted">({esc(spec.dataset)})</span></p>'
        )
        if run is None:
            page.add(
                f'<p class="muted">Not run: {total} runs under {esc(root / spec.name)}, none completed.</p>'
                if total
                else f'<p class="muted">Not run: no run under {esc(root / spec.name)}.</p>',
                "</div>",
            )
            continue
        rows = [["the book reports", spec.book_result]] + [[k, v] for k, v in headline(run)]
        overrides = " ".join(run.overrides) or "(none)"
        page.add(
            table(["result", "value"], rows),
            f'<p class="note">Run <span class="mono">{esc(run.path.relative_to(root))}</span> '
            f"(best of {completed} completed runs); overrides: <code>{esc(overrides)}</code></p>",
        )
        prefix = f"{spec.name}-"
        curves = draw_curves(page, [run.path], False, band, only=[run.best[0]] if run.best else None)
        page.add(gallery(curves[:1]) + artifacts_markup(page, run.path, prefix, images_only=True), "</div>")


# --------------------------------------------------------------------------------------------------
# Writing a report folder.


def check_destination(out: Path) -> None:
    """Refuse to replace a folder that is not an fdl report (an -o pointing at something else)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise RunDirError(f"{out} exists and is not an fdl report; name a new folder with -o")


def write_report(out: Path, build: Any, title: str) -> Path:
    """Build a report with ``build(page)`` in a folder beside ``out``, then put it in place of ``out``."""
    out = Path(out)
    check_destination(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as exc:
        raise RunDirError(f"cannot write a report into {out.parent}: {exc.strerror}") from None
    try:
        os.chmod(staging, 0o777 & ~runs._UMASK)  # mkdtemp makes it 0700; a report is for sharing
        page = Page(staging, title)
        build(page)
        atomic_write_text(staging / "index.html", page.render())
        (staging / MARKER).write_text("written by fdl report; `fdl report` replaces this folder\n")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        os.rename(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / "index.html"
