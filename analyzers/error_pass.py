"""One streaming pass over per-sample errors ``e[i, k]`` (sample i, recorded depth k), in row chunks,
so memory does not grow with the number of samples: per-depth sums, per-step sums of squared changes,
block sums for the bootstrap, and the per-sample statistics (each sample judged against its own descent,
so nothing here needs the curve first). `analyzers.monotonicity` turns the sums into its verdict."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from analyzers.bootstrap import add_block_sums, n_blocks
from lpa_core.errors import UsageError


@dataclass
class ErrorSums:
    sums: np.ndarray  # (D,) per-depth error sums
    d_sq: np.ndarray  # (D-1,) per-step sums of the squared paired change
    block_sums: np.ndarray  # (blocks, D) for the paired bootstrap
    block_counts: np.ndarray  # (blocks,)
    first_within: np.ndarray  # (D,) samples first within the tolerance of their final error at each depth
    first_correct: np.ndarray  # (D + 1,) classification: first right at each depth; last slot: never right
    monotone_samples: int = 0
    overthinking: int = 0  # right at some depth < N, wrong at N
    wasteful: int = 0  # right already before N


def _first_true_counts(mask: np.ndarray) -> np.ndarray:
    """For a depth-major boolean (D, rows) mask: how many columns are first True at each depth,
    plus (last slot) how many are never True. A loop over the short axis: ``argmax(axis=0)`` would
    copy the array into row-major order first, which costs ten times as much."""
    D, rows = mask.shape
    counts = np.zeros(D + 1, dtype=np.int64)
    found = np.zeros(rows, dtype=bool)
    for k in range(D):
        counts[k] = np.count_nonzero(mask[k] > found)  # True now, not before
        found |= mask[k]
    counts[D] = rows - np.count_nonzero(found)
    return counts


def stream_errors(chunks: Callable[[], Iterator[tuple[np.ndarray, np.ndarray | None]]], n: int, D: int, tolerance: float, seed: int,
                  classification: bool, source: str) -> ErrorSums:
    blocks = n_blocks(n)
    s = ErrorSums(np.zeros(D), np.zeros(D - 1), np.zeros((blocks, D)), np.zeros(blocks, dtype=np.int64), np.zeros(D, dtype=np.int64),
                  np.zeros(D + 1, dtype=np.int64))
    seen = 0
    for errors, correct in chunks():
        e = np.asarray(errors)
        if e.ndim != 2 or e.shape[1] != D:
            raise UsageError(f"per-sample errors have shape {e.shape}, expected (rows, {D})")
        # Depth-major (D, rows): numpy is slow at reducing a short axis of 17, fast along long rows.
        # Element-wise work stays in the errors' own precision (float32 in traces: half the memory
        # traffic); every sum accumulates in float64.
        eT = np.ascontiguousarray(e.T, dtype=np.result_type(e.dtype, np.float32))
        if not np.isfinite(eT).all():
            raise UsageError(f"{source}: per-sample errors contain NaN or infinite values")
        add_block_sums(s.block_sums, s.block_counts, eT, seen, n, seed)
        s.sums += eT.sum(axis=1, dtype=np.float64)  # the steps' sums of d are differences of these (no pass needed)
        d = eT[1:] - eT[:-1]  # (D-1, rows)
        d64 = d.astype(np.float64, copy=False)  # squares are summed in float64
        s.d_sq += np.einsum("ij,ij->i", d64, d64)
        own_tol = tolerance * (eT[0] - eT.min(axis=0))  # each sample against its own descent
        s.monotone_samples += int((d <= own_tol).all(axis=0).sum())
        s.first_within += _first_true_counts(eT <= eT[-1] + own_tol)[:D]  # depth N always counts
        if classification and correct is not None:
            c = np.ascontiguousarray(np.asarray(correct).T) > 0.5  # (D, rows)
            s.first_correct += _first_true_counts(c)
            right_before = c[:-1].any(axis=0)
            s.overthinking += int((right_before & ~c[-1]).sum())
            s.wasteful += int((right_before & c[-1]).sum())
        seen += eT.shape[1]
    if seen != n:
        raise UsageError(f"{source}: expected {n} samples, read {seen}")
    return s
