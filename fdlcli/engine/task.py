"""The Task protocol: what one experiment supplies to the engine's one training loop.

A task owns its science: it builds its modules, optimizer and data for a device, does the work of one
training step, evaluates, and finishes with its figures and exports. :func:`fdlcli.engine.loop.train` owns
everything else: the run session, threads and device, precision and ``torch.compile``, data parallelism,
SIGTERM, the NaN stop, progress lines, the training-cost logging window, when to evaluate and checkpoint,
the one resume path, ``trainer.monitor``/``monitor_mode`` and the best checkpoint (none with
``trainer.monitor=null``: a task with nothing held out to select on), the summary, and the evaluation
records ``fdl eval`` writes.

The work comes in one of two declared units:

- ``unit = "epochs"``: ``trainer.epochs`` passes; :meth:`Task.start_epoch` plans an epoch (a shuffled
  order, bucketed batches, a Hogwild chunking) and says how many steps it has; the loop validates after
  every epoch.
- ``unit = "steps"``: steps until :meth:`Task.total_steps` (or :meth:`Task.finished`), where a step is
  whatever the task makes it (one minibatch, one vector-environment step with its updates, one batch of
  episodes) and may advance the step counter by more than one (agent steps, episodes); the loop evaluates
  when :meth:`Task.evaluation_due` says so, and at the end.

Each step returns a :class:`StepOutput`. With a ``loss``, the loop does the update: zero the gradients,
backward (scaled for data parallelism), clip (``trainer.grad_clip``), set the scheduled learning rate, step
the task's ``optimizer``. A task with its own update rule (several updates per step, or a compiled
Hogwild kernel with none) returns no loss and logs what it likes with :meth:`Task.log`.

Exact resume: everything a step depends on must be a function of the configuration, the checkpointed
state (weights, optimizer, torch RNG, the loop's counters, :meth:`Task.state_dict`, and
:meth:`Task.save_arrays`) and the step. The golden-run test (tests/test_golden.py) and the kill-and-resume
tests (tests/test_reliability.py) hold every task to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from fdlcli.config import RunConfig
    from fdlcli.engine.checkpoint import CheckpointRef
    from fdlcli.runs import Run

# Optional trainer features a task may declare in ``Task.supports``; a run that asks for one its task does
# not declare is refused before its run directory exists (fdlcli.config.validate).
FEATURES = ("precision", "compile", "devices", "schedule", "checkpoint_every", "data_limits")


@dataclass
class StepOutput:
    """What one training step hands back to the loop.

    ``loss``: backpropagated by the loop through the task's optimizer (None: the task updated itself).
    ``cost``: added to the logging window (default: the detached loss); a tensor stays on its device, so
    the loop syncs with the host only when it logs. ``weight``: what ``cost`` counts (the window logs
    sum(cost) / sum(weight): minibatches by default, word pairs for skip-gram). ``scale``: the factor of
    this rank's loss in a data-parallel global minibatch. ``advance``: how far the step counter moves.
    """

    loss: torch.Tensor | None = None
    cost: torch.Tensor | float | None = None
    weight: float = 1.0
    scale: float = 1.0
    advance: int = 1


class Task:
    """One experiment's part of training. Subclasses set ``self.model`` (and usually ``self.optimizer``)
    in :meth:`setup`; ``self.model`` is the module whose weights every checkpoint holds."""

    unit: ClassVar[str] = "epochs"  # "epochs" or "steps" (see the module docstring)
    supports: ClassVar[frozenset[str]] = frozenset()  # optional trainer features it honours (FEATURES)
    step_name: ClassVar[str] = "step"  # what the progress display counts: step, episode, iteration
    progress_value: ClassVar[str] = "cost"  # what it shows beside the count
    # checkpoints tested at the end of training: "final" (the weights training ended with) and/or "best"
    test_checkpoints: ClassVar[tuple[str, ...]] = ()

    model: nn.Module
    optimizer: torch.optim.Optimizer | None = None

    def __init__(self, config: RunConfig, device: torch.device | str = "cpu", run: Run | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.run = run  # None when built outside a run directory (analyses, benchmarks)
        # the loop's logger and console: (metrics, step) -> None and (text) -> None; no-ops outside training
        self._log: Callable[[dict[str, float], int | None], None] = lambda metrics, step: None
        self._message: Callable[[str], None] = lambda text: None
        self.train_model: nn.Module | None = None  # self.model as compiled / wrapped for data parallelism

    @classmethod
    def check_config(cls, config: RunConfig) -> str | None:
        """A problem across config sections that this task cannot honour (checked at validation, before
        any run directory exists); None when there is none."""
        return None

    # ---- building ------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Build ``self.model`` (on ``self.device``), its optimizer and the data; called once, after the
        global RNG was seeded with ``config.seed`` (so initialization is a function of the seed)."""
        raise NotImplementedError

    def describe(self) -> str | None:
        """One line shown when training starts (data sizes, parameter count)."""
        return None

    def compile(self) -> None:
        """``trainer.compile=true``: compile the modules that run every step (in place: the state-dict
        keys, hence checkpoints, stay the same)."""
        self.model.compile()

    # ---- the work ------------------------------------------------------------------------------------

    def start_epoch(self, epoch: int) -> int:
        """``unit = "epochs"``: plan epoch ``epoch`` (0-based; a function of (seed, epoch) only, so a
        resumed run replays it) and return its number of steps."""
        raise NotImplementedError

    def total_steps(self) -> int:
        """The planned number of steps (``unit = "steps"``: training stops there; ``"epochs"``: an
        estimate for the progress display and learning-rate schedules)."""
        raise NotImplementedError

    def train_step(self, step: int, index: int) -> StepOutput:
        """One step. ``step``: the run's step counter before it; ``index``: the step's index within its
        epoch (``unit = "epochs"``) or ``step`` again."""
        raise NotImplementedError

    def finished(self) -> bool:
        """Stop early (a solved environment); checked after every step."""
        return False

    def evaluation_due(self, before: int, after: int) -> bool:
        """``unit = "steps"``: evaluate after the step that moved the counter from ``before`` to ``after``.
        The default: every ``trainer.eval_every`` steps."""
        every = int(getattr(self.config.trainer, "eval_every", 0) or 0)
        return bool(every) and after // every > before // every

    def log_due(self, step: int) -> bool:
        """Whether the training-cost window is logged after ``step`` (it is also logged at the end of
        every epoch and of training)."""
        return step % self.config.trainer.log_every == 0

    def window_metrics(self, cost: float) -> dict[str, float]:
        """Extra records beside ``train/cost`` when the window is logged (perplexity, the learning rate)."""
        return {}

    # ---- evaluation ----------------------------------------------------------------------------------

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics of ``split`` ("val" during training, "test" at its end, any split for ``fdl eval``)
        under the current weights. Names without a "/" are prefixed with the split; an empty dict logs
        nothing (a task with nothing to validate)."""
        return {}

    def after_evaluation(self, step: int, metrics: dict[str, float]) -> None:
        """Called after each evaluation during training (a sample translation, neighbours, a snapshot)."""

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        """The metrics an evaluation's progress line and ``fdl eval``'s printout show (default: all of
        them); every metric is logged and recorded all the same. A family with many per-part figures
        (bAbI's 20 task errors) keeps its summary figures here and shows the rest in
        :meth:`show_evaluation`."""
        return metrics

    def metrics_info(self) -> dict[str, Any]:
        """What else ``fdl eval``'s metrics need to be read right (e.g. the sacreBLEU signature)."""
        return {}

    def show_evaluation(self, metrics: dict[str, float], split: str, checkpoint: CheckpointRef) -> None:
        """``fdl eval``: show what its metric table does not (a per-task table), on stderr, so that stdout
        stays clean JSON with ``--json``."""

    # ---- state ----------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Extra state a checkpoint carries (counters, episode trackers, RNG streams, an lr rule): numbers,
        strings, tensors and lists/dicts of them (it is loaded with ``weights_only=True``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` returned (on resume, before training continues)."""

    def save_arrays(self) -> dict[str, np.ndarray]:
        """Large state kept beside the latest checkpoint only (a replay buffer), as plain numpy arrays."""
        return {}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Take back what :meth:`save_arrays` returned."""

    # ---- the end ---------------------------------------------------------------------------------------

    def finish(self, artifacts: Path) -> dict[str, Any]:
        """After training: figures and exports into ``artifacts``; returns fields for the summary."""
        return {}

    def close(self) -> None:
        """Release what training started (worker processes, environments); the loop calls it however
        training ends: completed, stopped by Ctrl-C or SIGTERM, or failed."""

    def summary_fields(self) -> dict[str, Any]:
        """Fields of the summary besides the loop's (written at every evaluation and at the end)."""
        return {}

    def done_message(self, summary: dict[str, Any]) -> str | None:
        """The last line of a run ("done: test accuracy 0.98 ..."); the loop appends the run directory."""
        return None

    # ---- talking to the loop ---------------------------------------------------------------------------

    def record_epoch(self) -> int | None:
        """The ``epoch`` field of this task's metric records, if it keeps its own count (RL: episodes)."""
        return None

    def log(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Record metrics (metrics.jsonl and TensorBoard) at the current step, or at ``step``: a step that
        advances the counter by more than one may place what happened inside it (an episode that ended
        after some of its agent steps) where it happened."""
        self._log(metrics, step)

    def message(self, text: str) -> None:
        """A line on the console and in the run's log."""
        self._message(text)
