"""Process set-up shared by every command: allocator, threads, seeds, device."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import random

import numpy as np
import torch

from analyzers.errors import UsageError

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_ALLOCATOR_BYTES = 1 << 30


def tune_allocator() -> bool:
    """Stop glibc from returning activation buffers to the kernel after every batch.

    By default glibc serves large allocations with fresh mmaps and trims the heap on free, so CPU
    PyTorch page-faults its activations back in on every step (measured in bench/allocator.py).
    Raising both thresholds keeps those pages mapped. Respects MALLOC_* variables set by the user.
    Returns whether the thresholds were changed.
    """
    if os.environ.get("LPA_NO_MALLOPT") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _ALLOCATOR_BYTES) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, _ALLOCATOR_BYTES) == 1 and ok
        return ok
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an explicit device must exist."""
    name = (name or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; expected auto, cpu or cuda[:index]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"device {name!r} is not supported; expected auto, cpu or cuda[:index]")
    return device
