"""Process set-up shared by the torch side: threads, seeds, device (the allocator: `lpa_cli.allocator`)."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from lpa_core.errors import UsageError

MAX_THREADS_PER_CORE = 8  # far above any useful count; OpenMP runtimes crash on absurd ones


def set_threads(threads: int) -> None:
    if threads <= 0:
        return
    cores = os.cpu_count() or 1
    if threads > MAX_THREADS_PER_CORE * cores:
        raise UsageError(f"--threads {threads} is more than {MAX_THREADS_PER_CORE}x this machine's {cores} cores")
    torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def restored_process_state() -> Iterator[None]:
    """Give back what a library call changes in the process: torch's thread count and every RNG's state
    (torch, CUDA, numpy, Python). Training seeds them; the caller's program should not notice."""
    threads = torch.get_num_threads()
    torch_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    np_rng = np.random.get_state()
    py_rng = random.getstate()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(torch_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        np.random.set_state(np_rng)
        random.setstate(py_rng)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on a CUDA device that supports it (what torchtune and litgpt train in:
    tensor cores run bf16 matmuls at many times fp32's rate, and bf16 needs no loss scaler), fp32
    elsewhere (a CPU, or a GPU without bf16, where fp16 would need a scaler: ask for it)."""
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


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
