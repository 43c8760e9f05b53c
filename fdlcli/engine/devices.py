"""Device, precision and CPU-thread choices."""

from __future__ import annotations

import contextlib
import os

import torch

from fdlcli.errors import ConfigError


def resolve_device(requested: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU; an explicit choice that is absent is an error."""
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if requested == "cuda" and not cuda:
        raise ConfigError(
            "trainer.device=cuda but no CUDA device is available; use trainer.device=auto or cpu"
        )
    if requested == "mps" and not mps:
        raise ConfigError("trainer.device=mps but MPS is not available; use trainer.device=auto or cpu")
    return torch.device(requested)


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure_threads(requested: int, parallel_jobs: int = 1) -> int:
    """Set torch's intra-op thread count and return it.

    ``0`` (auto) gives each concurrently running job an equal share of the CPUs. Measured on the 2-core
    CI machine (docs/RESULTS.md): an mlp-mnist epoch takes 0.8 s with two threads and 1.1-1.3 s with
    one, so auto uses all cores for a single run; an experiment whose model is too small to gain from
    threads pins ``trainer.threads=1`` in its own config.
    """
    threads = requested or max(1, cpu_count() // max(1, parallel_jobs))
    torch.set_num_threads(threads)
    return threads


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
