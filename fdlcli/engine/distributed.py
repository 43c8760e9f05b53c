"""Data-parallel training with torch.distributed: process groups, rank helpers and a local launcher.

Two ways in, one code path:

* ``fdl train EXP trainer.devices=N`` on one machine: the command becomes rank 0 and starts N-1 copies
  of itself (:func:`spawn_local`) with the usual torch.distributed environment (RANK, WORLD_SIZE,
  MASTER_ADDR, MASTER_PORT), exactly what ``torchrun`` would set.
* ``torchrun --nproc-per-node N [--nnodes ...] -m fdlcli train EXP ...`` (multi-node): every rank parses
  the command line itself.

Either way :func:`init_from_env` joins the process group, rank 0 alone claims the run directory and
sends it to the others (:func:`broadcast_object`), rank 0 alone writes logs, metrics and checkpoints,
and :func:`fdlcli.engine.loop.fit` splits every global minibatch across the ranks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from fdlcli.errors import FdlError

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun or :func:`spawn_local` (1 when not launched data-parallel)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0) if active() else 0


def local_world_size() -> int:
    """Ranks on this machine: they share its CPUs, which sets each rank's thread count."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())) or 1) if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group described by the environment; False when not launched data-parallel."""
    if env_world_size() <= 1 or active():
        return active()
    # gloo moves CPU tensors, NCCL CUDA ones; both are registered so trainer.device=cpu works on GPU hosts
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object produced by fdl itself, never user data)."""
    if not active():
        return value
    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard(indices: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's part of one global minibatch and the weight of its mean loss.

    Rank r takes every world-th example from r. DistributedDataParallel averages gradients over the
    ranks, so scaling each rank's mean loss by ``world * local_n / global_n`` makes the averaged
    gradient the gradient of the global minibatch mean, exactly as one process computes it (also for a
    short last batch that does not divide evenly).
    """
    world = world_size()
    if world == 1:
        return indices, 1.0
    local = indices[rank() :: world]
    if len(local) == 0:  # a last batch smaller than the world: join the all-reduce with a zero weight
        return indices[:1], 0.0
    return local, world * len(local) / len(indices)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def spawn_local(devices: int, argv: Sequence[str]) -> Iterator[None]:
    """Make this process rank 0 of ``devices`` local ranks; the others run ``python -m fdlcli *argv``.

    On leaving, the other ranks are awaited; one that failed makes the command fail too.
    """
    port = str(_free_port())
    common = {
        "WORLD_SIZE": str(devices),
        "LOCAL_WORLD_SIZE": str(devices),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port,
    }
    children = []
    for child_rank in range(1, devices):
        env = {**os.environ, **common, "RANK": str(child_rank), "LOCAL_RANK": str(child_rank)}
        children.append(subprocess.Popen([sys.executable, "-m", "fdlcli", *argv], env=env))
    saved = {key: os.environ.get(key) for key in _ENV_KEYS}
    os.environ.update({**common, "RANK": "0", "LOCAL_RANK": "0"})
    ok = False
    try:
        yield
        ok = True
    finally:
        shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        codes = []
        for child in children:
            if not ok and child.poll() is None:
                child.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=60)
            if child.poll() is None:
                child.kill()
            codes.append(child.wait())
    if any(code != 0 for code in codes):
        raise FdlError(f"data-parallel rank(s) failed with exit codes {codes}; see their messages above")
