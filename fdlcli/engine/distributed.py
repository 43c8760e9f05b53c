"""Data-parallel training with torch.distributed: process groups, rank helpers and a local launcher.

Two ways in, one code path:

* ``fdl train EXP trainer.devices=N`` on one machine: the command starts N ranks of itself through torch's
  elastic launcher (:func:`launch_local`, what ``torchrun --standalone`` does) and waits for them.
* ``torchrun --nproc-per-node N [--nnodes ...] -m fdlcli train EXP ...`` (multi-node): every rank parses
  the command line itself.

Either way :func:`init_from_env` joins the process group, rank 0 alone claims the run directory and
sends it to the others (:func:`broadcast_object`), rank 0 alone writes logs, metrics and checkpoints,
and the engine's loop (fdlcli/engine/loop.py) splits every global minibatch across the ranks.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from fdlcli.errors import FdlError

_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun or :func:`launch_local` (1 when not launched data-parallel)."""
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


def launch_local(devices: int, argv: Sequence[str]) -> None:
    """Run ``fdl *argv`` as ``devices`` local ranks under torch's elastic launcher and wait for them.

    It is ``torchrun --standalone``: a c10d rendezvous on a port the launcher binds itself (no free-port
    probe that another run could take in between), the usual torch.distributed environment in every rank,
    and the whole group stopped when one rank fails. Each rank prints its own one-line error; the
    launcher's own report is kept out of the console and summed up in one line here.
    """
    import logging
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=devices,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.2,
    )
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "fdlcli", *argv)
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        raise FdlError(
            f"data-parallel rank(s) failed with exit codes {codes}; see their messages above"
        ) from None
