"""Checkpoints: safetensors weights plus a ``weights_only`` trainer state, written atomically.

Each save builds ``step-NNNNNNNN/`` under a temporary name and renames the whole directory into place, so
weights and trainer state always belong together and a crash leaves either the old checkpoint or the new
one, never half of one. ``latest.json`` and ``best.json`` (also replaced atomically) name the current
directories; ``init/`` holds the step-0 weights that ``fdl interpolate`` needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fdlcli.errors import CheckpointError
from fdlcli.runs import atomic_write_json, fsync_dir, read_json

WEIGHTS = "model.safetensors"
STATE = "trainer.pt"
ARRAYS = "arrays.npz"  # a task's large state (a replay buffer): beside the latest checkpoint only
INIT = "init"


def _tie_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Names of the same tensor (tied weights: same memory, shape and layout), each group sorted.

    safetensors' own ``save_model`` also treats views into one buffer as shared and refuses them, and on
    CUDA an ``nn.LSTM`` keeps its weights as views into cuDNN's flat buffer: only true aliases count here.
    """
    groups: dict[tuple, list[str]] = defaultdict(list)
    for name, tensor in state.items():
        if tensor.numel() == 0:  # empty tensors share the null pointer without being tied
            groups[(name,)].append(name)
            continue
        key = (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())
        groups[key].append(name)
    return [sorted(group) for group in groups.values()]


def save_weights(model: torch.nn.Module, path: str, metadata: dict[str, str]) -> None:
    """``model``'s weights as safetensors: one copy of each tied tensor (kept under its first name, the
    others named in the metadata, as safetensors' ``save_model`` does), in CPU memory, contiguous."""
    state = model.state_dict()
    metadata = dict(metadata)
    for kept, *dropped in _tie_groups(state):
        for name in dropped:
            metadata.setdefault(name, kept)
            del state[name]
    save_file({name: t.detach().cpu().contiguous() for name, t in state.items()}, path, metadata=metadata)


def load_weights_into(model: torch.nn.Module, path: str, device: str) -> tuple[set[str], list[str]]:
    """Load ``path`` into ``model``; the (missing, unexpected) names, a tied name counting as loaded
    when any name of its group is in the file."""
    state = load_file(path, device=device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded_group = {
        name for group in _tie_groups(model.state_dict()) if any(n in state for n in group) for name in group
    }
    return {name for name in missing if name not in loaded_group}, list(unexpected)


def step_dir_name(step: int) -> str:
    """``step-000000005``: zero-padded, so directory names sort in step order."""
    return f"step-{step:09d}"


@dataclass(frozen=True)
class CheckpointRef:
    name: str  # directory name under checkpoints/
    step: int
    path: Path


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose state dict we store (``torch.compile`` wrappers prefix keys with ``_orig_mod.``)."""
    return getattr(model, "_orig_mod", model)


class CheckpointManager:
    def __init__(self, directory: Path, experiment: str, keep: int = 1) -> None:
        self.directory = directory
        self.experiment = experiment
        self.keep = max(1, keep)

    # ---- writing ---------------------------------------------------------------------------------

    def _write_dir(
        self,
        name: str,
        model: torch.nn.Module,
        state: dict[str, Any] | None,
        step: int,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> Path:
        final = self.directory / name
        tmp = self.directory / f".tmp-{name}-{os.getpid()}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            metadata = {"fdl_experiment": self.experiment, "step": str(step)}
            save_weights(unwrap(model), str(tmp / WEIGHTS), metadata)
            if state is not None:
                # through a Python file, so a failed write surfaces as its OSError (torch.save on a path
                # reports only "unexpected pos ..."): see describe_write_failure
                with open(tmp / STATE, "wb") as handle:
                    torch.save({**state, "fdl_experiment": self.experiment, "step": step}, handle)
            if arrays:  # plain numpy arrays (np.load(allow_pickle=False) reads them back)
                with open(tmp / ARRAYS, "wb") as handle:
                    np.savez(handle, **arrays)
            for file in tmp.iterdir():
                with open(file, "rb") as handle:
                    os.fsync(handle.fileno())
            _move_into_place(tmp, final)
            fsync_dir(self.directory)
        except BaseException as exc:  # a Ctrl-C or a bug leaves no half-written directory behind either
            shutil.rmtree(tmp, ignore_errors=True)
            if not isinstance(exc, OSError | SafetensorError | RuntimeError):  # not a failed write
                raise
            raise CheckpointError(
                f"could not write checkpoint {name} in {self.directory}: {describe_write_failure(exc)}; "
                f"the last good checkpoint is {self._last_good()}"
            ) from exc
        return final

    def _last_good(self) -> str:
        """The checkpoint a run would resume from now, in words (for the message of a failed save)."""
        try:
            latest = self._pointer("latest")
        except CheckpointError:
            latest = None
        if latest is not None and (latest.path / WEIGHTS).is_file():
            return latest.name
        if (self.directory / INIT / WEIGHTS).is_file():
            return f"{INIT} (the step-0 weights)"
        return "none (nothing was saved yet)"

    def save_initial(self, model: torch.nn.Module) -> None:
        if not (self.directory / INIT / WEIGHTS).exists():
            self._write_dir(INIT, model, None, 0)

    def save(
        self,
        model: torch.nn.Module,
        state: dict[str, Any],
        step: int,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> CheckpointRef:
        """A step checkpoint; ``arrays`` (large task state) are kept with the newest checkpoint only."""
        name = step_dir_name(step)
        path = self._write_dir(name, model, state, step, arrays)
        # if this fails, the new directory is whole but not the latest: a resume takes the old one
        self._write_pointer("latest", {"name": name, "step": step})
        if arrays:
            for older in self.directory.glob(f"step-*/{ARRAYS}"):
                if older.parent.name != name:
                    older.unlink(missing_ok=True)
        self._prune()
        return CheckpointRef(name, step, path)

    def load_arrays(self, ref: CheckpointRef) -> dict[str, np.ndarray]:
        """The large task state saved with ``ref`` (empty if none), never unpickling anything."""
        path = ref.path / ARRAYS
        if not path.is_file():
            return {}
        try:
            with np.load(path, allow_pickle=False) as loaded:
                return {key: loaded[key] for key in loaded.files}
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"corrupt or foreign arrays {path}: {str(exc).splitlines()[0]}") from None

    def mark_best(self, ref: CheckpointRef, metric: str, value: float, epoch: int) -> None:
        pointer = {"name": ref.name, "step": ref.step, "epoch": epoch, "metric": metric, "value": value}
        self._write_pointer("best", pointer)
        self._prune()

    def _write_pointer(self, which: str, pointer: dict[str, Any]) -> None:
        try:
            atomic_write_json(self.directory / f"{which}.json", pointer)
        except OSError as exc:
            raise CheckpointError(
                f"could not record checkpoint {pointer['name']} as the {which} in {self.directory}: "
                f"{describe_write_failure(exc)}; the last good checkpoint is {self._last_good()}"
            ) from exc

    def _prune(self) -> None:
        """Keep the newest ``keep`` step checkpoints and the best one; remove the rest."""
        protected = {ref.name for ref in (self._pointer("latest"), self._pointer("best")) if ref}
        steps = sorted(p for p in self.directory.glob("step-*") if p.is_dir())
        for path in steps[: -self.keep]:
            if path.name not in protected:
                shutil.rmtree(path, ignore_errors=True)
        for leftover in self.directory.glob(".tmp-*"):  # from a process killed mid-save
            with contextlib.suppress(ValueError):
                pid = int(leftover.name.rsplit("-", 1)[1])
                if not _pid_alive(pid):
                    shutil.rmtree(leftover, ignore_errors=True)

    # ---- reading ---------------------------------------------------------------------------------

    def _pointer(self, which: str) -> CheckpointRef | None:
        path = self.directory / f"{which}.json"
        if not path.exists():
            return None
        try:
            pointer = read_json(path)
            name, step = str(pointer["name"]), int(pointer["step"])
        except (ValueError, KeyError, TypeError, OSError):
            raise CheckpointError(f"corrupt checkpoint pointer {path}") from None
        if "/" in name or name.startswith("."):
            raise CheckpointError(f"corrupt checkpoint pointer {path}")
        return CheckpointRef(name, step, self.directory / name)

    def latest(self) -> CheckpointRef | None:
        return self._pointer("latest")

    def best_info(self) -> dict[str, Any] | None:
        path = self.directory / "best.json"
        return read_json(path) if path.exists() else None

    def resolve(self, which: str) -> CheckpointRef:
        """``best`` (falls back to latest), ``last``/``latest``, ``init``, or ``step-N`` (``step-5`` and its
        directory name ``step-000000005`` alike)."""
        if which == INIT:
            ref = CheckpointRef(INIT, 0, self.directory / INIT)
        elif which == "best":
            ref = self._pointer("best") or self._pointer("latest")
        elif which in ("last", "latest"):
            ref = self._pointer("latest")
        else:
            number = which.removeprefix("step-")
            if not which.startswith("step-") or not (number.isascii() and number.isdigit()):
                raise CheckpointError(f"unknown checkpoint {which!r}; use best, last, init or step-N")
            name = step_dir_name(int(number))
            ref = CheckpointRef(name, int(number), self.directory / name)
        if ref is None or not (ref.path / WEIGHTS).is_file():
            steps = ", ".join(path.name for path in self.step_dirs()) or "none"
            raise CheckpointError(
                f"no {which} checkpoint in {self.directory.parent} (step checkpoints there: {steps})"
            )
        return ref

    def step_dirs(self) -> list[Path]:
        """The step checkpoints on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.glob("step-*") if (p / WEIGHTS).is_file())

    def load_weights(
        self, model: torch.nn.Module, ref: CheckpointRef, device: torch.device | str = "cpu"
    ) -> None:
        path = ref.path / WEIGHTS
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"corrupt or unreadable weights {path}: {exc}") from None
        owner = metadata.get("fdl_experiment")
        if owner != self.experiment:
            raise CheckpointError(
                f"{path} holds weights of {owner or 'something that is not an fdl run'}, "
                f"not of experiment {self.experiment!r}"
            )
        try:
            missing, unexpected = load_weights_into(unwrap(model), str(path), str(device))
        except (SafetensorError, RuntimeError, OSError) as exc:
            raise CheckpointError(
                f"weights {path} do not fit the model: {str(exc).splitlines()[0]}"
            ) from None
        if missing or unexpected:
            raise CheckpointError(
                f"weights {path} do not fit the model (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(unexpected)[:3]}); was the model config changed?"
            )

    def load_state(self, ref: CheckpointRef) -> dict[str, Any]:
        path = ref.path / STATE
        try:
            # weights_only: the trainer state is tensors, numbers, strings and optimizer state dicts;
            # nothing in it needs (or may trigger) arbitrary unpickling.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {ref.path} has no trainer state") from None
        except Exception as exc:
            raise CheckpointError(
                f"corrupt or foreign trainer state {path}: {str(exc).splitlines()[0]}"
            ) from None
        if not isinstance(state, dict) or state.get("fdl_experiment") != self.experiment:
            raise CheckpointError(f"{path} is not a trainer state of experiment {self.experiment!r}")
        return state


class ReadOnlyCheckpoints(CheckpointManager):
    """Checkpoints as a data-parallel rank other than 0 sees them: it loads (resume) but never writes."""

    def save_initial(self, model: torch.nn.Module) -> None:
        pass

    def save(
        self,
        model: torch.nn.Module,
        state: dict[str, Any],
        step: int,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> CheckpointRef:
        name = step_dir_name(step)
        return CheckpointRef(name, step, self.directory / name)

    def mark_best(self, ref: CheckpointRef, metric: str, value: float, epoch: int) -> None:
        pass


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` directory to ``final``, replacing a checkpoint of the same step (an
    interrupt right after an epoch-end save saves that step again); that one comes back if this fails."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def describe_write_failure(exc: BaseException) -> str:
    """Why a write failed, in words: the errno of the OSError behind ``exc`` ("no space left on device"
    for ENOSPC), found in its chain or in the "(os error N)" of a safetensors error; else its first line."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    match = re.search(r"\(os error (\d+)\)", str(exc))
    if match:
        return os.strerror(int(match.group(1))).lower()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
