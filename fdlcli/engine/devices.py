"""Device, precision and CPU-thread choices."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform

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


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the process's next allocations (mallopt: no trimming of
    the heap, large blocks from the heap rather than fresh mmaps) and say whether it did.

    A training step frees and allocates again tens of megabytes of tensors. Under glibc's adaptive
    defaults those blocks keep going back to the system and come back as fresh pages, whose first touch
    is a page fault: measured on dnc-babi's training step (benchmarks/dnc_step.py), 6,400 faults and
    +0.2 ms per time step (~8%) once another model had run in the process, none with this. The process
    keeps its high-water mark of memory instead of returning it between steps. Process-local: nothing of
    the machine changes. Not glibc (macOS, musl): nothing to do."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    trim_threshold, mmap_threshold = -1, -3  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD (malloc.h)
    return libc.mallopt(mmap_threshold, 1 << 30) == 1 and libc.mallopt(trim_threshold, 1 << 30) == 1


def available_memory() -> int | None:
    """Bytes of memory the system could give this process now (Linux's MemAvailable); None elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@functools.cache
def bf16_is_slow(device: torch.device) -> bool:
    """Whether bf16 autocast would run far slower than fp32 here: a CPU without AVX-512, where oneDNN has
    no bf16 kernels and torch falls back to slow paths (dqn-breakout's update: 391 ms against 39 ms in
    fp32, measured on an AVX2-only AMD EPYC)."""
    return device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported()


@functools.cache
def _cpu_runs_bf16_lstm() -> bool:
    """Whether oneDNN has a bf16 LSTM on this CPU: not on CPUs without bf16 instructions (AVX2 only), where
    it fails with "could not create a primitive descriptor for the LSTM forward propagation primitive"."""
    lstm = torch.nn.LSTM(2, 2)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lstm(torch.zeros(1, 1, 2))
    except RuntimeError:
        return False
    return True


class LSTM(torch.nn.LSTM):
    """``nn.LSTM`` (same parameters and state dict) that, inside bf16 autocast on a CPU without a bf16 LSTM,
    runs in fp32 (autocast off for it alone; the layers around it stay bf16) instead of failing."""

    def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if (
            self.weight_ih_l0.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and not _cpu_runs_bf16_lstm()
        ):
            with torch.autocast("cpu", enabled=False):
                return super().forward(*args, **kwargs)
        return super().forward(*args, **kwargs)
