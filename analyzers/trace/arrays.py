"""Users' own ``.h5`` data files, read lazily (a row range or a set of rows at a time).

Kept beside the trace so that every HDF5 access in lpa goes through one guard: damage becomes a
one-line `DataError`. A handle is opened per process, so worker processes of a data loader each open
their own (h5py handles do not survive a fork).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from lpa_core.errors import DataError
from analyzers.trace.reader import H5_ERRORS


def _check_written(path: Path, key: str, dataset: h5py.Dataset) -> None:
    """A dataset whose declared data was never written (a few KB claiming 10^9 rows) reads back as fill
    values for as long as anyone cares to wait: refuse it from its storage, which the header tells."""
    if dataset.is_virtual or dataset.external or dataset.size == 0:
        return
    shape = tuple(int(d) for d in dataset.shape)
    if dataset.chunks is None:
        if dataset.id.get_storage_size() < dataset.size * dataset.dtype.itemsize:  # contiguous data cannot be compressed
            raise DataError(f"{path}: dataset {key!r} declares shape {shape}, but its data was never written")
        return
    expected = math.prod(math.ceil(n / c) for n, c in zip(shape, dataset.chunks))
    written = dataset.id.get_num_chunks()
    if written < expected:
        raise DataError(f"{path}: dataset {key!r} declares shape {shape}, but {expected - written:,} of its {expected:,} chunks "
                        "were never written")


class H5Arrays:
    """Named datasets of an HDF5 file: shapes and dtypes from the header, rows on demand."""

    def __init__(self, path: str | Path, keys: tuple[str, ...]) -> None:
        self.path = Path(path)
        self.keys = keys
        self._pid = -1
        self._file: h5py.File | None = None
        with self._guard():
            f = self._open()
            missing = [k for k in keys if k not in f or not isinstance(f[k], h5py.Dataset)]
            if missing:
                raise DataError(f"{self.path}: missing dataset(s) {', '.join(missing)} (use --x-key/--y-key or --set task.options.x_key=...)")
            self.shapes = {k: tuple(int(d) for d in f[k].shape) for k in keys}
            self.dtypes = {k: np.dtype(f[k].dtype) for k in keys}
            for k in keys:
                _check_written(self.path, k, f[k])
        for k in keys:
            if self.dtypes[k].kind not in "biuf":
                raise DataError(f"{self.path}: dataset {k!r} has dtype {self.dtypes[k]}, expected numbers")
            if not self.shapes[k] or self.shapes[k][0] == 0:
                raise DataError(f"{self.path}: dataset {k!r} is empty")

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except DataError:
            raise
        except H5_ERRORS as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DataError(f"{self.path}: cannot read HDF5 ({first})") from None

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def nbytes(self, key: str) -> int:
        return math.prod(self.shapes[key]) * self.dtypes[key].itemsize

    def read(self, key: str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Rows of dataset ``key``: all, a slice, or any array of row indices (in that order)."""
        with self._guard():
            dataset = self._open()[key]
            if rows is None:
                return np.asarray(dataset[()])
            if isinstance(rows, slice):
                return np.asarray(dataset[rows])
            rows = np.asarray(rows, dtype=np.int64)
            # h5py wants increasing, unique indices: read sorted, then restore the requested order
            unique, inverse = np.unique(rows, return_inverse=True)
            return np.asarray(dataset[unique])[inverse]

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, -1  # each process opens its own handle
        return state
