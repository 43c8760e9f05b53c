"""Configuration: Hydra composition of the YAML groups in ``conf/`` and typed validation.

Config flows one way. Hydra composes ``conf/config.yaml`` with an ``experiment=NAME`` overlay and the
user's overrides; :func:`validate` turns the result into a :class:`RunConfig` of dataclasses at the CLI
boundary (unknown keys, wrong types and bad choices become one-line :class:`ConfigError`s). Library
code only ever sees the typed objects.
"""

from __future__ import annotations

import importlib.resources
import itertools
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fdlcli import registry

if TYPE_CHECKING:
    from fdlcli.runs import Run
from fdlcli.errors import ConfigError

VERSION_BASE = "1.3"


# --------------------------------------------------------------------------------------------------
# Typed schemas. Every field here is a key a user can override on the command line.


@dataclass
class TrainerConfig:
    epochs: int = 10
    device: str = "auto"  # auto | cpu | cuda | mps   (auto: CUDA, then MPS, then CPU)
    compile: bool = False  # torch.compile the model (the first compile on a CPU takes ~20 s)
    precision: str = "32"  # 32 | bf16  (bf16 autocast)
    threads: int = 0  # CPU intra-op threads; 0 = auto (see engine/devices.py)
    log_every: int = 50  # minibatches between training-cost records in metrics.jsonl
    print_every_s: float = 10.0  # seconds between plain progress lines when stdout is not a terminal
    checkpoint_every: int = 0  # minibatches between mid-epoch checkpoints; 0 = at epoch ends only
    val_every_epochs: int = 1  # epochs between evaluations (epoch-based experiments); the last one always
    keep_checkpoints: int = 1  # step checkpoints kept besides the best one
    histograms: bool = True  # parameter histograms in TensorBoard every epoch
    monitor: str | None = "val/accuracy"  # metric that picks the best checkpoint; null = no best checkpoint
    monitor_mode: str = "max"  # max | min
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    eval_batch_size: int = 1000
    devices: int = 1  # data-parallel processes (torch.distributed); under torchrun its world size rules


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adagrad | rmsprop | adam | adamw
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    alpha: float = 0.99  # RMSProp decay rate
    initial_accumulator_value: float = 0.0  # AdaGrad
    # Learning-rate schedule over the whole run, a pure function of the step (so resume stays exact):
    # constant (the book) | cosine (to min_lr_ratio * lr) | linear (to min_lr_ratio * lr); warmup_steps of
    # linear warm-up first. Honoured by the epoch loop (``fdl train`` of the supervised experiments).
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0


@dataclass
class DataConfig:
    name: str = "mnist"  # folder of the local mirror: <dir>/<name>/<split>.parquet
    hub_id: str = "ylecun/mnist"  # Hugging Face Hub id used when no mirror is configured
    dir: str | None = None  # local mirror root; default: $FDL_DATA_DIR; neither: the Hub
    batch_size: int = 100
    val_size: int = 5000  # carved deterministically from the head of train when there is no validation split
    train_limit: int = 0  # use only the first N training examples (quick runs, tests); 0 = all
    eval_limit: int = 0  # use only the first N validation and test examples; 0 = all


@dataclass
class RunConfig:
    """A validated experiment configuration. ``model`` is the experiment's own model dataclass."""

    name: str
    model: Any
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return OmegaConf.to_container(OmegaConf.structured(self), resolve=True)  # type: ignore[return-value]


_CHOICES: dict[str, tuple[str, ...]] = {
    "trainer.device": ("auto", "cpu", "cuda", "mps"),
    "trainer.precision": ("32", "bf16"),
    "trainer.monitor_mode": ("max", "min"),
    "optim.name": ("sgd", "adagrad", "rmsprop", "adam", "adamw"),
    "optim.schedule": ("constant", "cosine", "linear"),
}
_POSITIVE = (
    "trainer.devices",
    "trainer.epochs",
    "data.batch_size",
    "trainer.eval_batch_size",
    "trainer.log_every",
    "trainer.val_every_epochs",
)
_NON_NEGATIVE = (
    "trainer.threads",
    "trainer.checkpoint_every",
    "data.val_size",
    "data.train_limit",
    "data.eval_limit",
    "optim.lr",
    "optim.momentum",
    "optim.weight_decay",
    "optim.eps",
    "trainer.grad_clip",
    "optim.warmup_steps",
    "optim.min_lr_ratio",
    "seed",
)


# --------------------------------------------------------------------------------------------------
# Where the YAML lives.


def conf_dir() -> Path:
    """The ``conf/`` directory: $FDL_CONF_DIR, else the source checkout's, else the one in the wheel.

    The checkout's own ``conf/`` wins over the package resource, so a second checkout (a git worktree)
    uses its own YAML even when another checkout is the editable install.
    """
    candidates = []
    if os.environ.get("FDL_CONF_DIR"):
        candidates.append(Path(os.environ["FDL_CONF_DIR"]))
    candidates.append(Path(__file__).resolve().parent.parent / "conf")  # source checkout / editable
    with suppress(ModuleNotFoundError, TypeError):
        candidates.append(Path(str(importlib.resources.files("fdlcli.conf"))))  # installed wheel
    for candidate in candidates:
        if (candidate / "config.yaml").is_file() and (candidate / "experiment").is_dir():
            return candidate.resolve()
    raise ConfigError(f"cannot find fdl's conf/ directory (looked in {', '.join(map(str, candidates))})")


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files and the nodes made from dataclass defaults."""
    directory = conf_dir() / group
    files = {p.stem for p in directory.glob("*.yaml")} if directory.is_dir() else set()
    return sorted(files | {name for g, name, _ in _default_nodes() if g == group})


def _default_nodes() -> list[tuple[str, str, type]]:
    """Config group options whose values are a dataclass's defaults, so those defaults live in one place
    (the dataclass): ``trainer/default`` and each experiment's ``ExperimentSpec.model_group``."""
    nodes = [("trainer", "default", TrainerConfig)]
    nodes += sorted(
        {("model", s.model_group, s.model_config) for s in registry.specs() if s.model_group}, key=str
    )
    return nodes


def _store_default_nodes() -> None:
    from dataclasses import asdict

    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, name, schema in _default_nodes():
        # a plain node, not a typed schema: experiment overlays add their own trainer keys to it
        store.store(group=group, name=name, node=OmegaConf.create(asdict(schema())))


# --------------------------------------------------------------------------------------------------
# Composition (no run directory; Hydra's run/multirun machinery lives in launch.py).


_initialized_for: Path | None = None


@contextmanager
def hydra_context(job_name: str = "fdl") -> Iterator[None]:
    """Hydra initialized on conf/; done once per process (re-reading the search path on every compose
    costs far more than composing)."""
    global _initialized_for
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    directory = conf_dir()
    if _initialized_for != directory or not GlobalHydra.instance().is_initialized():
        _store_default_nodes()
        GlobalHydra.instance().clear()
        initialize_config_dir(config_dir=str(directory), version_base=VERSION_BASE, job_name=job_name)
        _initialized_for = directory
    yield


def compose(experiment: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose the config of ``experiment`` with user overrides (single values, no sweeps)."""
    from hydra import compose as hydra_compose

    registry.get(experiment)  # unknown names fail here, with suggestions
    with hydra_context():
        try:
            return hydra_compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])
        except Exception as exc:
            raise ConfigError(describe_composition_error(exc, experiment)) from exc


def describe_composition_error(exc: BaseException, experiment: str) -> str:
    """Turn Hydra's multi-line composition errors into one line that names the valid choices."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        valid = exc.options or group_options(group)
        return f"unknown {group or 'config'} {option!r}; choose from: {', '.join(valid)}"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse override: {_first_line(str(exc))}"
    message = str(exc)
    match = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", message)
    if match:
        key = match.group(1)
        parent, _, _leaf = key.rpartition(".")
        valid = _keys_under(experiment, parent)
        where = f" in {parent!r}" if parent else ""
        hint = f"; valid keys{where}: {', '.join(valid)}" if valid else ""
        if "+" + key in message or "not in struct" in message or "Key '" in message:
            return f"unknown config key {key!r}{hint}"
        return f"cannot apply override to {key!r}: {_first_line(str(exc.__cause__ or exc))}"
    match = re.search(r"In '([^']+)': Could not load '([^']+)'", message)
    if match:
        group, _, option = match.group(2).rpartition("/")
        return f"unknown {group} {option!r}; choose from: {', '.join(group_options(group))}"
    return _first_line(message)


def _keys_under(experiment: str, parent: str) -> list[str]:
    from hydra import compose as hydra_compose

    try:
        with hydra_context():
            cfg = hydra_compose(config_name="config", overrides=[f"experiment={experiment}"])
        node = OmegaConf.select(cfg, parent) if parent else cfg
        return sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
    except Exception:
        return []


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def expand_sweep(overrides: Sequence[str]) -> list[list[str]] | None:
    """The single-value override lists a basic sweep would run, or None if a value is not enumerable."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as exc:
        raise ConfigError(f"cannot parse override: {_first_line(str(exc))}") from exc
    axes: list[list[str]] = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            if override.is_discrete_sweep():
                axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
            else:
                return None  # interval() and friends are for optimizing sweepers: nothing to enumerate
        else:
            axes.append([override.input_line])
    return [list(combo) for combo in itertools.product(*axes)]


# --------------------------------------------------------------------------------------------------
# Validation into typed objects.


def validate(cfg: DictConfig | dict[str, Any]) -> RunConfig:
    """Validate a composed (or reloaded) config into a :class:`RunConfig`, or raise ConfigError."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    container.pop("hydra", None)
    name = container.get("name")
    if not isinstance(name, str):
        raise ConfigError("the config names no experiment (key 'name')")
    spec = registry.get(name)
    for key in spec.model_shortcuts:  # top-level shortcuts (content=IMG) move into the model section
        value = container.pop(key, None)
        if value is not None:
            container["model"] = {**(container.get("model") or {}), key: value}
    known = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(container) - known)
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}; valid top-level keys: {', '.join(sorted(known))}"
        )

    sections = {
        "model": spec.model_config,
        "data": spec.data_config or DataConfig,
        "optim": OptimConfig,
        "trainer": spec.trainer_config or TrainerConfig,
    }
    typed: dict[str, Any] = {"name": name}
    for section, schema in sections.items():
        if section not in container:
            raise ConfigError(f"the config has no '{section}' group (was it deleted with ~{section}?)")
        typed[section] = _typed_section(section, schema, container[section] or {})
    seed = container.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"invalid value for 'seed': {seed!r} is not an integer")
    run_config = RunConfig(seed=seed, **typed)
    _check_values(run_config)
    _refuse_unsupported(run_config, spec)
    return run_config


def requested_features(run_config: RunConfig) -> dict[str, str]:
    """The optional trainer features (engine/task.py FEATURES) this config asks for, each with the
    setting that asks for it."""
    trainer, data, optim = run_config.trainer, run_config.data, run_config.optim
    asked = {
        "precision": trainer.precision != "32" and f"trainer.precision={trainer.precision}",
        "compile": trainer.compile and "trainer.compile=true",
        "devices": trainer.devices > 1 and f"trainer.devices={trainer.devices}",
        "schedule": (optim.schedule != "constant" or optim.warmup_steps > 0)
        and f"optim.schedule={optim.schedule} optim.warmup_steps={optim.warmup_steps}",
        "checkpoint_every": trainer.checkpoint_every > 0
        and f"trainer.checkpoint_every={trainer.checkpoint_every}",
        "data_limits": (data.train_limit or data.eval_limit)
        and f"data.train_limit={data.train_limit} data.eval_limit={data.eval_limit}",
    }
    return {feature: str(setting) for feature, setting in asked.items() if setting}


def _refuse_unsupported(run_config: RunConfig, spec: registry.ExperimentSpec) -> None:
    """A trainer key the experiment cannot honour is an error, never silently ignored."""
    task = spec.task
    for feature, setting in requested_features(run_config).items():
        if feature not in task.supports:
            raise ConfigError(
                f"{setting}: experiment {spec.name} does not support {feature.replace('_', ' ')}"
            )
    problem = task.check_config(run_config)
    if problem:
        raise ConfigError(f"{problem} (experiment {spec.name})")
    if task.unit == "steps":
        if run_config.trainer.val_every_epochs != 1:
            raise ConfigError(
                f"trainer.val_every_epochs={run_config.trainer.val_every_epochs}: experiment {spec.name} "
                "trains in steps, not epochs"
            )
        default = (spec.trainer_config or TrainerConfig)().epochs
        if run_config.trainer.epochs != default:
            raise ConfigError(
                f"trainer.epochs={run_config.trainer.epochs}: experiment {spec.name} "
                "trains in steps, not epochs"
            )


def _typed_section(section: str, schema: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"'{section}' must be a group of keys, got {values!r}")
    valid = [f.name for f in fields(schema)]
    for f in fields(schema):
        # OmegaConf would turn any integer into a bool (-5 -> True); a switch takes true or false only
        if f.type in (bool, "bool") and f.name in values and not isinstance(values[f.name], bool):
            value = values[f.name]
            raise ConfigError(f"invalid value for '{section}.{f.name}': {value!r}; use true or false")
    for key in values:
        if key not in valid:
            raise ConfigError(
                f"unknown config key '{section}.{key}'; valid keys in '{section}': {', '.join(valid)}"
            )
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or ""
        reason = _first_line(str(exc).split("\n    full_key")[0])
        raise ConfigError(f"invalid value for '{section}.{key}': {reason}") from None


def _check_values(run_config: RunConfig) -> None:
    def lookup(dotted: str) -> Any:
        node: Any = run_config
        for part in dotted.split("."):
            node = getattr(node, part)
        return node

    for key, choices in _CHOICES.items():
        value = lookup(key)
        if value not in choices:
            raise ConfigError(f"invalid value for '{key}': {value!r}; choose from: {', '.join(choices)}")
    for key in _POSITIVE:
        if lookup(key) <= 0:
            raise ConfigError(f"invalid value for '{key}': {lookup(key)!r}; it must be positive")
    for key in _NON_NEGATIVE:
        if lookup(key) < 0:
            raise ConfigError(f"invalid value for '{key}': {lookup(key)!r}; it must not be negative")
    check = getattr(run_config.model, "check", None)
    if callable(check):
        problem = check()
        if problem:
            raise ConfigError(f"invalid model config: {problem}")
    # an experiment's own data/trainer schema (ExperimentSpec.data_config / trainer_config) may check too
    for section in ("data", "trainer"):
        check = getattr(getattr(run_config, section), "check", None)
        if callable(check):
            problem = check()
            if problem:
                raise ConfigError(f"invalid {section} config: {problem}")


def open_run(path: str | Path, experiment: str | None = None) -> Run:
    """A finished (or interrupted) run named by the user, a path or a run id, with its validated saved
    config; ``experiment``: refuse a run of any other experiment."""
    from fdlcli.errors import UsageError
    from fdlcli.runs import CONFIG_FILE, Run, resolve_run_dir

    run_dir = resolve_run_dir(path)
    run_config = load_saved(run_dir / CONFIG_FILE)
    if experiment is not None and run_config.name != experiment:
        raise UsageError(f"{run_dir} is a {run_config.name} run, not a {experiment} one")
    return Run(path=run_dir, config=run_config)


def load_saved(path: Path) -> RunConfig:
    """Reload and validate the resolved config a run saved (``config.yaml`` in its directory)."""
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"cannot read {path}: {_first_line(str(exc))}") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} does not hold an fdl config")
    # A saved config is fully resolved: an interpolation in it was put there by hand. Refuse it rather
    # than let a run directory from elsewhere make fdl read environment variables or other files.
    raw = OmegaConf.to_container(cfg, resolve=False)
    if "${" in json.dumps(raw, default=str):
        raise ConfigError(f"{path} holds an interpolation (${{...}}); saved configs must be plain values")
    return validate(cfg)


def apply_overrides(run_config: RunConfig, overrides: Sequence[str]) -> RunConfig:
    """Apply plain ``key=value`` overrides to a saved config (used by ``--resume``), then re-validate."""
    base = OmegaConf.create(run_config.to_dict())
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep or not key or key.startswith(("+", "~", "hydra")):
            raise ConfigError(f"on resume only plain key=value overrides are allowed, got {override!r}")
        if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"unknown config key {key!r}")
        OmegaConf.update(base, key, yaml.safe_load(value) if value else value, merge=False)
    try:
        return validate(OmegaConf.create(OmegaConf.to_container(base)))
    except OmegaConfBaseException as exc:
        raise ConfigError(_first_line(str(exc))) from None


_MISSING = object()
