"""Where models run and at which precision: the device, bfloat16 only where it is native, CPU threads.

CPUs of one machine kind differ: with AVX512-BF16 or AMX, torch's bfloat16 matmul runs natively (faster than
float32); with AVX2 only it is emulated, tens of times slower than float32. ``auto`` settings resolve here,
once per process, and the choice is printed once.
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)
THREADS_ENV = "SAFER_INSTRUCT_THREADS"
CORES = torch.get_num_threads()  # torch's default before the kit changes it: this process's physical cores


def pick_device(requested: str = "auto") -> str:
    """``auto`` means CUDA when present, else CPU."""
    if requested != "auto":
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_bf16_native() -> bool:
    """True when oneDNN runs bfloat16 matmuls natively on this CPU (AVX512-BF16 or AMX).

    It honours ``ONEDNN_MAX_CPU_ISA``: with ``ONEDNN_MAX_CPU_ISA=AVX2`` a fast CPU reads as the slow kind.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def bf16_native(device: str) -> bool:
    """Does ``device`` (``cuda[:N]`` or ``cpu``) compute in bfloat16 at least as fast as in float32?"""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device == "cpu" and cpu_bf16_native()


def pick_dtype(requested: str, device: str) -> torch.dtype:
    """``auto``: bfloat16 where ``device`` runs it natively, float32 otherwise; an explicit name is kept."""
    if requested != "auto":
        return getattr(torch, requested)
    dtype = torch.bfloat16 if bf16_native(device) else torch.float32
    announce_dtype(device, dtype)
    return dtype


@functools.cache
def announce_dtype(device: str, dtype: torch.dtype) -> None:
    """Say once per process which precision ``auto`` chose, and why."""
    why = "native bfloat16" if dtype == torch.bfloat16 else "no native bfloat16"
    print(f"precision: {str(dtype).removeprefix('torch.')} on {device} ({why}; dtype/bf16: auto)", file=sys.stderr)


def resolve_bf16(value: object, device: str | None = None) -> bool:
    """A recipe's ``bf16``: ``auto`` becomes True where the training device runs bfloat16 natively."""
    if isinstance(value, str) and value.lower() == "auto":
        device = device or pick_device()
        native = bf16_native(device)
        announce_dtype(device, torch.bfloat16 if native else torch.float32)
        return native
    if isinstance(value, str):
        return value.lower() in {"true", "1", "yes"}
    return bool(value)


def busy_cores(samples: int = 3, interval: float = 0.01) -> float:
    """Other tasks running on this machine now: the runnable count of ``/proc/loadavg`` less this process's own
    threads running just before or just after it was read (the caller, torch's workers waking and sleeping between
    tasks), the median of a few samples, so a task that runs for a moment is not counted (0 where there is no
    ``/proc``)."""
    counts = []
    for sample in range(samples):
        before = _own_running_threads()
        try:
            runnable = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        own = before | _own_running_threads()
        counts.append(max(runnable - max(len(own), 1), 0))
        if sample < samples - 1:
            time.sleep(interval)
    return float(statistics.median(counts))


def _own_running_threads() -> set[str]:
    """The ids of this process's threads in the running state now."""
    running = set()
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state == "R":
            running.add(stat.parent.name)
    return running


def configure_threads() -> int | None:
    """Set torch's CPU threads for the work about to start; returns the number set, None when the user's stands.

    ``SAFER_INSTRUCT_THREADS=N`` caps them (``OMP_NUM_THREADS`` works too, read by torch itself). Unset, the
    kit uses the cores no other task is using now: a matmul split over two threads when another job holds one of
    two cores waits at every barrier for the descheduled thread, several times slower than one thread alone
    (``bench/threads.py``). Called at each model load and generation, so it follows a job that starts or ends.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        if os.environ.get("OMP_NUM_THREADS"):
            return None
        threads = max(1, CORES - round(busy_cores()))
        if threads != torch.get_num_threads():
            logger.info("threads: %d of %d cores (%d held by other tasks)", threads, CORES, CORES - threads)
            torch.set_num_threads(threads)
        return threads
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        logger.warning("%s=%r is not a positive number of threads; ignored", THREADS_ENV, value)
        return None
    torch.set_num_threads(threads)
    return threads
