"""Shared helpers for the benchmark scripts: set-up, interleaved timing, summary lines."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lpa_cli.allocator import tune_allocator  # noqa: E402


def setup(threads: int = 2):
    """The process set-up every lpa command does (allocator tuning), plus torch threads and seed.
    Returns the device to measure on (the GPU where there is one)."""
    import torch  # here, not at the top: the analysis benchmark must run without torch

    tune_allocator()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_bytes() -> int:
    """Peak memory of this process so far: the GPU allocator's peak, or the CPU resident set's."""
    import resource

    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def quick_args(doc: str | None) -> bool:
    """The benchmarks' shared command line: ``--quick`` for small sizes."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test that the script runs)")
    return parser.parse_args().quick


def _cuda_sync() -> Callable[[], None]:
    """``torch.cuda.synchronize`` where torch sees a GPU, else nothing: a timed region must end when the
    device's work ends, not when the host has queued it."""
    if "torch" not in sys.modules:  # the analysis benchmarks run without torch
        return lambda: None
    import torch

    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def interleaved(variants: dict[str, Callable[[], None]], repeats: int, before: Callable[[], None] | None = None,
                warmup: int = 1) -> dict[str, float]:
    """Median wall time of each variant, run round-robin so machine noise hits all of them alike, each
    timed region between CUDA synchronisations. ``before`` runs untimed ahead of every call (e.g.
    removing the last call's output)."""
    sync = _cuda_sync()
    for _ in range(warmup):
        for fn in variants.values():
            if before:
                before()
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            if before:
                before()
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def count_ops(fn: Callable[[], None]):
    """(aten ops dispatched, of which host reads) by one call of ``fn``: what a GPU launches, roughly,
    and how often the host waits for it. Deterministic, so it stands in for GPU timing where no GPU is
    lent. Host reads: ``.item()`` and friends (``_local_scalar_dense``) and the ops whose output size
    depends on the data (``nonzero``, ``unique``, ``masked_select``)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    reads = {"aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::unique_dim", "aten::masked_select"}

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func._schema.name] += 1
            return func(*args, **(kwargs or {}))

    with Count() as c:
        fn()
    return sum(c.ops.values()), sum(v for k, v in c.ops.items() if k in reads), c.ops


def _matmul_flops(name: str, args) -> float:
    """FLOPs of one matrix product op (2 x multiply-adds); 0 for any other op. Attention kernels count
    their two products, forward 4 x B x H x T x S x d, backward twice that."""
    import math

    if name in ("aten::mm", "aten::addmm"):
        a, b = args[-2], args[-1]
        return 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
    if name in ("aten::bmm", "aten::baddbmm"):
        a, b = args[-2], args[-1]
        return 2.0 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    if name.startswith("aten::_scaled_dot_product") or name.startswith("aten::_flash_attention") or name.startswith("aten::_efficient_attention"):
        q, k = args[0], args[1]  # (B, H, T, d), (B, H, S, d)
        fwd = 4.0 * math.prod(q.shape) * k.shape[-2]
        return 2 * fwd if name.endswith("backward") else fwd
    return 0.0


def matmul_flops_by_dtype(fn: Callable[[], None]) -> dict[str, float]:
    """{input dtype: matmul FLOPs} of one call of ``fn``, as dispatched (after autocast has cast the
    inputs): on a GPU, what runs on bf16/fp16 tensor cores and what runs at fp32's fraction of their rate."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class Flops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.flops: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            n = _matmul_flops(func._schema.name, args)
            if n:  # an attention kernel's query, a product's second operand: the dtype it computes in
                operand = args[0] if "attention" in func._schema.name else args[-1]
                self.flops[str(operand.dtype).removeprefix("torch.")] += n
            return func(*args, **(kwargs or {}))

    with Flops() as f:
        fn()
    return dict(f.flops)


def run_child(script: str, spec: dict, threads: int = 2) -> dict:
    """Run ``script --child SPEC_JSON`` in a fresh process (nothing inherited from earlier runs) and
    return the last JSON line it printed; exit with the child's last error line if it failed."""
    import json
    import os
    import subprocess

    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": str(threads)})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child {spec} failed: {(proc.stderr.strip().splitlines() or ['killed'])[-1]}")
    return json.loads(lines[-1])


def median_step_time(step: Callable[[], None], steps: int, warmup: int = 1) -> float:
    """Median wall time of ``steps`` calls of ``step`` after ``warmup`` untimed ones (CUDA synchronised)."""
    import torch

    cuda = torch.cuda.is_available()
    times = []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def summary(name: str, value: float, target: str, ok: bool | None = None) -> None:
    verdict = "" if ok is None else (" ok" if ok else " MISSED")
    print(f"{name}: {value:.3g} ({target}){verdict}", flush=True)
