"""Where metrics go: metrics.jsonl, TensorBoard, the plain log, and the console.

On a terminal the console shows a rich progress bar; otherwise (CI, SLURM logs, sweep workers) it prints
a plain line every ``print_every_s`` seconds and one per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fdlcli.errors import FdlError
from fdlcli.runs import LOG_FILE, METRICS_FILE, to_json, truncate_metrics
from fdlcli.terminal import make_console

log = logging.getLogger("fdl")


def setup_run_logging(run_dir: Path) -> logging.Handler:
    """Send fdl's log records to the run's plain log file (appending, so resumes keep the history)."""
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


class MetricsWriter:
    """Appends one JSON record per value to metrics.jsonl and mirrors scalars to TensorBoard.

    Files open on the first record, so a resumed run can first :meth:`rewind` to its checkpoint.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.path = run_dir / METRICS_FILE
        self.tensorboard = tensorboard
        self.purge_step: int | None = None
        self._file: Any = None
        self._tb: Any = None
        self._tb_tried = False
        self.lines = 0
        if self.path.exists():
            with open(self.path, "rb") as existing:
                self.lines = sum(1 for _ in existing)

    def rewind(self, keep_lines: int, step: int) -> None:
        """Forget what was logged after the checkpoint a run resumes from (it will be logged again)."""
        assert self._file is None, "rewind before the first record"
        truncate_metrics(self.run_dir, keep_lines)
        self.lines = keep_lines
        self.purge_step = step  # TensorBoard drops its events after this step

    @property
    def tb(self) -> Any:
        if self.tensorboard and not self._tb_tried:
            self._tb_tried = True
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.purge_step)
            except ImportError:
                log.warning("tensorboard is not installed: no event files are written")
        return self._tb

    def open_tensorboard(self) -> None:
        """Import and open TensorBoard's writer now (after a resumed run's :meth:`rewind`) instead of at
        the first record: its import (~0.6 s of CPU) would otherwise land inside a logged window and
        understate that window's speed (train/steps_per_s of the RL tasks)."""
        _ = self.tb

    def log(self, metrics: dict[str, float], step: int, epoch: int) -> None:
        if self._file is None:
            self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        wall = round(time.time(), 3)
        for name, value in metrics.items():
            record = {"name": name, "value": value, "step": step, "epoch": epoch, "time": wall}
            self._file.write(to_json(record) + "\n")  # a NaN value is written as null
            self.lines += 1
            if self.tb is not None and math.isfinite(value):
                self.tb.add_scalar(name, value, step)
        self._file.flush()

    def hparams(self, params: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """A finished run's hyperparameters and results for TensorBoard's HParams view, which then compares
        the jobs of a sweep. Written into the run's own event files (``add_hparams`` would open a sub-run
        of its own), each metric also as a scalar at ``step``, where the view reads its value."""
        if self.tb is None:
            return
        from torch.utils.tensorboard.summary import hparams

        # numbers stay numbers (sortable in the view); true/false and null read better than 1/0 and None
        values = {
            k: json.dumps(v)
            if isinstance(v, bool) or v is None
            else v
            if isinstance(v, int | float | str)
            else str(v)
            for k, v in params.items()
        }
        finite = {k: float(v) for k, v in metrics.items() if math.isfinite(v)}
        file_writer = self.tb._get_file_writer()
        for summary in hparams(values, finite):  # experiment, session start and session end
            file_writer.add_summary(summary)
        for name, value in finite.items():
            self.tb.add_scalar(name, value, step)
        self.tb.flush()

    def record_run_hparams(self) -> None:
        """:meth:`hparams` of the run as its files record it (:func:`run_hparams`), at its end. A run that
        trained to the end stays completed if this fails: the record is an extra, the run is whole."""
        if self.tb is not None:
            try:
                self.hparams(*run_hparams(self.run_dir))
            except (OSError, ValueError, TypeError, FdlError) as exc:
                log.warning("no TensorBoard hparams record: %s", exc)

    def histograms(self, named_parameters: Any, step: int) -> None:
        if self.tb is not None:
            for name, param in named_parameters:
                self.tb.add_histogram(f"params/{name}", param.detach().float().cpu(), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def run_hparams(run_dir: Path) -> tuple[dict[str, Any], dict[str, float], int]:
    """What :meth:`MetricsWriter.hparams` records of a run, read from its files: the experiment and the
    overridden config keys (their resolved values; a group choice such as ``optim=adam`` as its name),
    the final model's metrics as ``final/...``, and the monitored metric's best value and the best
    checkpoint's test metrics as ``best/...``; and the run's last step."""
    from fdlcli.analysis.rundata import flatten, load_run, numeric_items

    run = load_run(run_dir)
    config = flatten(run.config)
    params: dict[str, Any] = {"experiment": run.experiment}
    for override in run.overrides:
        if override.startswith("~") or "=" not in override:
            continue
        key, value = override.lstrip("+").split("=", 1)
        params[key] = config.get(key, value)
    final, best = run.summary.get("final") or {}, run.summary.get("best") or {}
    skip = ("epoch", "step", "metric", "value")
    metrics = {f"final/{k}": v for k, v in numeric_items(final, skip)}
    metrics.update({f"best/{k}": v for k, v in numeric_items(best, skip) if k.startswith("test/")})
    if run.best:
        metrics[f"best/{run.best[0]}"] = run.best[1]
    step = run.summary.get("steps") or final.get("step") or 0
    return params, metrics, int(step) if isinstance(step, int | float) else 0


class NullWriter(MetricsWriter):
    """The metrics writer of a data-parallel rank other than 0: rank 0 logs for everyone."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(run_dir, tensorboard=False)

    def rewind(self, keep_lines: int, step: int) -> None:
        self.lines = keep_lines

    def log(self, metrics: dict[str, float], step: int, epoch: int) -> None:
        pass

    def histograms(self, named_parameters: Any, step: int) -> None:
        pass


class ConsoleProgress:
    """Progress on the console: a rich bar on a terminal, plain periodic lines elsewhere."""

    def __init__(
        self,
        total_steps: int,
        start_step: int,
        print_every_s: float,
        console: Console | None = None,
        quiet: bool = False,  # data-parallel ranks other than 0 show nothing
        unit: str = "step",  # what the count counts: step, episode, iteration
        value_name: str = "cost",  # what update()'s value is: cost, loss, return
    ):
        self.console = console or make_console()  # markup off: messages hold paths, overrides
        self.unit, self.value_name = unit, value_name
        self.quiet = quiet
        self.interactive = sys.stdout.isatty() and self.console.is_terminal and not quiet
        self.total = total_steps
        self.print_every_s = print_every_s
        self._last_print = time.monotonic()
        self._progress: Progress | None = None
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[stage]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(value_name + " {task.fields[value]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._task = self._progress.add_task(
                "train", total=total_steps, completed=start_step, stage=f"{unit}s", value="-"
            )
            self._progress.start()

    def update(
        self, step: int, value: float | None, epoch: int | None = None, epochs: float | None = None
    ) -> None:
        """``step`` of the total; ``epoch`` (0-based) of ``epochs`` for loops that have epochs."""
        value_text = f"{value:.4f}" if value is not None else "-"
        if epoch is None:
            stage = f"{self.unit}s"
        elif epochs is None:
            stage = f"epoch {epoch + 1}"
        else:  # a fractional last epoch (cnn-cifar10-fast's 9.9) shows as such: epoch 9.9/9.9
            stage = f"epoch {min(epoch + 1, epochs):g}/{epochs:g}"
        if self._progress is not None:
            self._progress.update(self._task, completed=step, stage=stage, value=value_text)
        elif not self.quiet and time.monotonic() - self._last_print >= self.print_every_s:
            self._last_print = time.monotonic()
            where = f"{stage} " if epoch is not None else ""
            print(f"{where}{self.unit} {step}/{self.total} {self.value_name} {value_text}", flush=True)

    def message(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            print(text, flush=True)
        log.info(text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
