"""glibc allocator tuning, the first thing every lpa process does (no torch import: the analysis
side and the benchmarks use it too)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

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
