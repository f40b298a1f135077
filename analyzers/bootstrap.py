"""The bootstrap's resampling units: samples hashed into at most `MAX_BLOCKS` blocks.

Resampling blocks instead of samples keeps the bootstrap's cost independent of the number of
samples (sums per block are accumulated in one streaming pass). Samples are assigned to blocks by a
hash of their index, not by position: test sets are often ordered (a surface's grid, row by row),
and contiguous blocks of neighbours with nearly equal errors would widen the intervals as if the
samples were fewer (by up to sqrt(2) on a grid). With hashed blocks, a block is a random subset and
the block bootstrap matches the sample-level one.
"""

from __future__ import annotations

import numpy as np

MAX_BLOCKS = 2000

_M1 = np.uint64(0xFF51AFD7ED558CCD)
_M2 = np.uint64(0xC4CEB9FE1A85EC53)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def block_of(index: np.ndarray, blocks: int, seed: int = 0) -> np.ndarray:
    """The block of each sample index (murmur3's 64-bit finaliser of the index, seeded)."""
    with np.errstate(over="ignore"):
        x = index.astype(np.uint64) + np.uint64(seed + 1) * _GOLDEN
        x ^= x >> np.uint64(33)
        x *= _M1
        x ^= x >> np.uint64(33)
        x *= _M2
        x ^= x >> np.uint64(33)
    return (x % np.uint64(blocks)).astype(np.int64)


def n_blocks(n: int) -> int:
    return min(n, MAX_BLOCKS)


def add_block_sums(sums: np.ndarray, counts: np.ndarray, values_T: np.ndarray, start: int, n: int, seed: int = 0) -> None:
    """Add depth-major values ``(D, rows)`` of samples ``start..start+rows`` (of ``n``) into ``sums``
    (blocks, D) and their number into ``counts`` (blocks,). Up to `MAX_BLOCKS` samples, each sample
    is its own block (the plain sample bootstrap)."""
    blocks = sums.shape[0]
    index = np.arange(start, start + values_T.shape[1])
    ids = index if n <= MAX_BLOCKS else block_of(index, blocks, seed)
    counts += np.bincount(ids, minlength=blocks)
    for d in range(values_T.shape[0]):
        sums[:, d] += np.bincount(ids, weights=values_T[d], minlength=blocks)


def replicate_weights(rng: np.random.Generator, replicates: int, blocks: int) -> np.ndarray:
    """(replicates, blocks): how often each replicate drew each block (uniform, with replacement)."""
    pick = rng.integers(0, blocks, size=(replicates, blocks))
    pick += blocks * np.arange(replicates)[:, None]
    return np.bincount(pick.ravel(), minlength=replicates * blocks).reshape(replicates, blocks).astype(np.float64)
