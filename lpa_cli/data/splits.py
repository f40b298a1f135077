"""Splits: the rows of a data set, gathered a batch at a time, never more.

Every data source is a `Split`: ``len(split)`` rows, ``split.batch(indices)`` gathers those rows into a
`Batch`. The trainer asks for the rows of step s (a pure function of seed and s), evaluation and
tracing walk the rows in order, and worker processes (``--workers``) gather batches in parallel. Only
`TensorSplit` holds its data in memory; the others read what a batch needs (a memory-mapped token
file, lazy ``.npy``/``.h5`` arrays, image files).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lpa_cli.data.batch import Batch

RANDOM_ROWS_ABOVE = 1 << 24  # larger splits draw rows with replacement (a permutation would not fit)


class Split:
    """A data set's rows. Subclasses implement `__len__` and `batch`."""

    #: how training draws rows: "epochs" (seeded permutations) or "random" (seeded draws with replacement)
    sampling = "epochs"

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, index: Tensor) -> Batch:
        """The rows at ``index`` (1-D int64, any order, repeats allowed) as one batch."""
        raise NotImplementedError

    def rows(self, start: int, stop: int) -> Batch:
        return self.batch(torch.arange(start, stop))

    def iter_batches(self, batch_size: int, limit: int = 0) -> Iterator[tuple[int, Batch]]:
        """(first row, batch) over the first ``limit`` rows (all when 0), in order."""
        n = len(self) if not limit else min(limit, len(self))
        for start in range(0, n, batch_size):
            yield start, self.rows(start, min(n, start + batch_size))

    def padded(self) -> Split:
        """The same rows, every batch padded to the full context (what a trace of per-token states
        needs); splits that do not pad dynamically are that already."""
        return self

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All rows as (x, y) tensors (small splits only: everything is read into memory)."""
        b = self.rows(0, len(self))
        return b.x, b.y

    def subset(self, count: int) -> Split:
        """``count`` rows spread evenly over the split (all when count is 0 or not smaller)."""
        if not count or count >= len(self):
            return self
        return Subset(self, torch.linspace(0, len(self) - 1, count).round().long().unique())

    def draw_rows(self) -> str:
        return "random" if self.sampling == "random" or len(self) > RANDOM_ROWS_ABOVE else "epochs"


class TensorSplit(Split):
    """Rows held in memory as tensors (optionally a padding mask). With ``dynamic`` padding a batch of
    padded token rows is cut to its longest row (`Batch.trimmed`)."""

    def __init__(self, x: Tensor, y: Tensor, mask: Tensor | None = None, dynamic: bool = False) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        self.x, self.y, self.mask, self.dynamic = x, y, mask, dynamic

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def _out(self, b: Batch) -> Batch:
        return b.trimmed() if self.dynamic else b

    def batch(self, index: Tensor) -> Batch:
        return self._out(Batch(self.x[index], self.y[index], None if self.mask is None else self.mask[index]))

    def rows(self, start: int, stop: int) -> Batch:
        return self._out(Batch(self.x[start:stop], self.y[start:stop], None if self.mask is None else self.mask[start:stop]))

    def padded(self) -> Split:
        return TensorSplit(self.x, self.y, self.mask) if self.dynamic else self


class Subset(Split):
    def __init__(self, base: Split, index: Tensor) -> None:
        self.base, self.index = base, index

    def __len__(self) -> int:
        return int(self.index.numel())

    def batch(self, index: Tensor) -> Batch:
        return self.base.batch(self.index[index])

    def padded(self) -> Split:
        return Subset(self.base.padded(), self.index)


class MappedArray:
    """A read-only array in a file, mapped afresh for every read and unmapped after it.

    A long-lived ``numpy.memmap`` keeps every page a read touched in the process's resident set (the
    kernel maps whole folios around each fault), so random windows over a 2 GB token file grow RSS
    towards 2 GB; nanoGPT re-creates its memmap per batch for the same reason. Mapping per read keeps
    RSS flat (the file stays in the page cache, which the kernel may reclaim) at the price of one
    mmap/munmap per batch. Pickles as its path and layout, so worker processes map it themselves.
    """

    def __init__(self, path: str | Path, dtype: Any, shape: tuple[int, ...], offset: int = 0) -> None:
        self.path, self.dtype, self.shape, self.offset = str(path), np.dtype(dtype), tuple(int(d) for d in shape), int(offset)

    @classmethod
    def of(cls, m: np.memmap) -> "MappedArray":
        """The same file and layout as the C-ordered memmap ``m``."""
        return cls(m.filename, m.dtype, m.shape, m.offset)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Any) -> np.ndarray:
        if not self.shape[0]:
            return np.zeros(self.shape, self.dtype)[index]
        m = np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape, offset=self.offset)
        out = np.array(m[index])  # a copy: no view keeps the map alive, so it is unmapped when m goes
        del m
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


class Windows(Split):
    """Language-model windows over a token sequence: row i is tokens ``s .. s+T`` as inputs and
    ``s+1 .. s+T+1`` as targets, with ``s = start + i * stride``. The sequence may be a tensor or a
    `MappedArray` of a token file; only the windows of a batch are read."""

    def __init__(self, tokens: Any, context: int, stride: int, start: int = 0, stop: int | None = None, sampling: str = "epochs") -> None:
        self.tokens = tokens
        self.context = context
        self.stride = stride
        self.start = start
        stop = len(tokens) if stop is None else stop
        self.count = max(0, (stop - start - context - 1) // stride + 1)
        self.sampling = sampling

    def __len__(self) -> int:
        return self.count

    def batch(self, index: Tensor) -> Batch:
        starts = self.start + index.long() * self.stride
        if isinstance(self.tokens, Tensor):
            w = self.tokens[starts[:, None] + torch.arange(self.context + 1)[None, :]].long()
        else:  # a mapped file: one gather reads only the windows' pages, then one conversion
            rows = self.tokens[starts.numpy()[:, None] + np.arange(self.context + 1)[None, :]]
            w = torch.from_numpy(rows.astype(np.int64))
        return Batch(w[:, :-1].contiguous(), w[:, 1:].contiguous())


class ArraySplit(Split):
    """Rows of lazily read arrays (``numpy.load(mmap_mode="r")`` or `analyzers.trace.arrays.H5Arrays`),
    converted per batch by ``convert(x, y) -> (x, y)`` tensors."""

    def __init__(self, read_x, read_y, rows: np.ndarray, convert) -> None:
        self.read_x, self.read_y, self.rows_index, self.convert = read_x, read_y, rows, convert

    def __len__(self) -> int:
        return int(len(self.rows_index))

    def batch(self, index: Tensor) -> Batch:
        rows = self.rows_index[index.numpy()]
        x, y = self.convert(self.read_x(rows), self.read_y(rows))
        return Batch(x, y)


def batch_indices(n: int, batch_size: int, seed: int, step: int, mode: str = "epochs") -> Tensor | None:
    """Row indices of step ``step``'s batch; None means the full batch.

    ``epochs``: epochs of seeded permutations, so every row is seen once per epoch. ``random``: a
    seeded draw with replacement per step, for splits too large to permute (token files: every
    token offset is a row). Either way a pure function of (seed, step): resumed runs see the same
    batches.
    """
    if batch_size <= 0 or (batch_size >= n and mode == "epochs"):
        return None
    if mode == "random":
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step + (1 << 40))
        return torch.randint(n, (batch_size,), generator=gen)
    per_epoch = n // batch_size
    epoch, slot = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    return perm[slot * batch_size : (slot + 1) * batch_size]


__all__ = ["ArraySplit", "MappedArray", "Split", "Subset", "TensorSplit", "Windows", "batch_indices"]
