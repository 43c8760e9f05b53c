"""One registry of experiments, by name (torchvision/timm style).

An experiment module registers itself with :func:`register`; the CLI looks experiments up with
:func:`get` (which suggests close names on a typo) and lists them with :func:`specs`.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fdlcli.errors import UnknownExperimentError

if TYPE_CHECKING:
    from fdlcli.engine.task import Task
    from fdlcli.runs import Run


@dataclass(frozen=True)
class ExperimentSpec:
    """What the runner knows about one experiment.

    ``task`` is the experiment's :class:`fdlcli.engine.task.Task` subclass: the engine trains it
    (:meth:`train`) and evaluates its checkpoints (:meth:`evaluate`). ``model_config`` is the dataclass
    that validates the ``model`` config group of this experiment; ``data_config`` and ``trainer_config``
    may name subclasses of :class:`fdlcli.config.DataConfig` / :class:`fdlcli.config.TrainerConfig` with
    extra keys (a text dataset's vocabulary size, an RL run's environment steps), validated the same way.
    ``model_shortcuts`` names model keys a user may also give at the top level (``content=IMG`` for
    ``model.content=IMG``); the experiment's overlay declares them (``content: null``).
    """

    name: str
    chapter: int
    dataset: str
    book_result: str
    description: str
    model_config: type
    task: type[Task]
    data_config: type | None = None
    trainer_config: type | None = None
    model_shortcuts: tuple[str, ...] = ()
    # a model group option made from ``model_config``'s defaults (no YAML file: the dataclass is the one
    # place they live); experiments select it with ``override /model: <model_group>``
    model_group: str | None = None

    def train(self, run: Run) -> dict[str, Any]:
        """Train (or resume) ``run``; returns its summary."""
        from fdlcli.engine.loop import train

        return train(self.task, run)

    def evaluate(self, run: Run, which: str, split: str) -> dict[str, float]:
        """Metrics of a saved checkpoint of ``run`` (``fdl eval``), recorded in the run."""
        from fdlcli.engine.loop import evaluate_checkpoint

        return evaluate_checkpoint(self.task, run, which, split)


_REGISTRY: dict[str, ExperimentSpec] = {}
_loaded = False


def register(spec: ExperimentSpec) -> ExperimentSpec:
    """Add an experiment; a second registration under the same name is a programming error."""
    if spec.name in _REGISTRY:
        raise ValueError(f"experiment {spec.name!r} is registered twice")
    for other in _REGISTRY.values():  # one model group option, one dataclass: a second would replace it
        if (
            spec.model_group
            and other.model_group == spec.model_group
            and other.model_config is not spec.model_config
        ):
            raise ValueError(f"model group {spec.model_group!r} of {spec.name!r} is already {other.name!r}'s")
    _REGISTRY[spec.name] = spec
    return spec


def _load_families() -> None:
    """Import every module of fdlcli.experiments (each registers its experiments), on first use only,
    so that `fdl --help` does not pay for importing torch."""
    global _loaded
    if not _loaded:
        import fdlcli.experiments as package

        for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
            if not module.startswith("_"):
                importlib.import_module(f"{package.__name__}.{module}")
        _loaded = True


def names() -> list[str]:
    _load_families()
    return sorted(_REGISTRY)


def specs() -> list[ExperimentSpec]:
    _load_families()
    return sorted(_REGISTRY.values(), key=lambda s: (s.chapter, s.name))


def get(name: str) -> ExperimentSpec:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UnknownExperimentError(
            f"unknown experiment {name!r}; {hint}choose from: {', '.join(sorted(_REGISTRY))}"
        ) from None
