"""Where models run and at which precision: the device, bfloat16 only where it is native, CPU threads.

CPUs of one machine kind differ: with AVX512-BF16 or AMX, torch's bfloat16 matmul runs natively (faster than
float32); with AVX2 only it is emulated, tens of times slower than float32. ``auto`` settings resolve here,
once per process, and the choice is printed once.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import torch

logger = logging.getLogger(__name__)
THREADS_ENV = "SAFER_INSTRUCT_THREADS"


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


def configure_threads() -> int | None:
    """``SAFER_INSTRUCT_THREADS=N`` caps torch's CPU threads in this process (``OMP_NUM_THREADS`` works too, read by
    torch itself); unset, torch's own default stays. Returns the cap applied, if any."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        logger.warning("%s=%r is not a positive number of threads; ignored", THREADS_ENV, value)
        return None
    torch.set_num_threads(threads)
    return threads
