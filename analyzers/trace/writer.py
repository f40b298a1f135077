"""Writing a trace: under ``<output>.partial``, chunk-aligned, fsynced in the background, renamed when
complete (the rules are in docs/trace-format.md)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lpa_core.atomic import check_writable, fsync_path
from lpa_core.errors import OutputError, UsageError
from lpa_core.files import refuse_link
import analyzers.trace.spec as _spec  # CHUNK_BYTES is read at call time (tests shrink it)
from analyzers.trace.spec import FORMAT, FORMAT_VERSION, TraceSpec, chunk_shape, filters, jsonable, partial_path
from analyzers.trace.sync import Syncer

log = logging.getLogger(__name__)

RDCC_BYTES = 16 << 20  # raw-data chunk cache per dataset while writing
SYNC_BYTES = 32 << 20  # between flushes, start an fsync after this many bytes (the disk starts early)
H5_WRITE_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError)


def _no_space(err: BaseException) -> bool:
    text = str(err).lower()
    return getattr(err, "errno", None) == errno.ENOSPC or "no space left" in text or "errno = 28" in text


def write_error(path: Path, err: BaseException, kept: bool) -> OutputError:
    """One line for a failed trace write; says what became of the partial file."""
    left = f"the partial trace is kept at {path} (lpa trace --resume continues it)" if kept else "nothing was written"
    if _no_space(err):
        return OutputError(f"{path}: no space left on device; {left}")
    if isinstance(err, PermissionError):
        return OutputError(f"{path}: permission denied; {left}")
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return OutputError(f"{path}: cannot write trace ({first}); {left}")


class TraceWriter:
    """Writes a trace under ``<output>.partial``; `finish` marks it complete and renames it.

    With ``resume=True`` an existing partial file made with the same spec is continued from the
    number of samples it had flushed (``n_written``). A failure while the file is created removes it;
    a failure later leaves it resumable from ``n_written``.
    """

    def __init__(self, output: str | Path, spec: TraceSpec, force: bool = False, resume: bool = False) -> None:
        self.output = check_writable(output, force)
        self.force = force
        self.partial = partial_path(self.output)
        self.spec = spec
        self.start = 0
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._written: dict[str, int] = {}
        self._handles: dict[str, tuple[h5py.Dataset, int]] = {}
        self._file: h5py.File | None = None
        self._syncer: Syncer | None = None
        resumed = False
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            resumed = resume and self.partial.exists() and self._try_resume()
            if not resumed:
                refuse_link(self.partial)  # h5py would write through a planted link
                self._file = h5py.File(self.partial, "w", rdcc_nbytes=RDCC_BYTES)
                self._create()
            self._syncer = Syncer(self.partial, self.start)
        except (UsageError, OutputError):
            raise
        except H5_WRITE_ERRORS as err:
            self._discard(remove=not resumed)
            raise write_error(self.partial, err, kept=resumed) from None
        self._recorded = self.start  # the n_written the file holds
        self._unsynced = 0  # bytes written since the last fsync request

    def _discard(self, remove: bool) -> None:
        """Close after a failure, quietly (HDF5 cannot flush to a full disk either)."""
        if self._syncer is not None:
            self._syncer.stop()
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        if remove:
            with contextlib.suppress(OSError):
                self.partial.unlink()

    def _try_resume(self) -> bool:
        try:
            f = h5py.File(self.partial, "r+", rdcc_nbytes=RDCC_BYTES)
        except OSError:
            # Compressed traces relocate chunks as they grow, so a kill can leave them unreadable.
            log.warning("%s: partial trace is unreadable; starting over", self.partial)
            return False
        try:
            same = f.attrs.get("format") == FORMAT and json.loads(f.attrs.get("spec", "{}")) == self.spec.identity()
        except (ValueError, TypeError):
            same = False
        if not same:
            f.close()
            raise UsageError(f"{self.partial}: partial trace was made with different settings or data; rerun without --resume to start over")
        self._file = f
        self.start = int(f.attrs.get("n_written", 0))
        self._written = {name: self.start for name in self.spec.datasets()}
        return True

    def _create(self) -> None:
        s = self.spec
        f = self._file
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION if s.trajectory else 1  # readers expect format 2's measures
        f.attrs["complete"] = False
        f.attrs["n_samples"] = s.n
        f.attrs["n_written"] = 0
        f.attrs["depths"] = np.asarray(s.depths, dtype=np.int64)
        f.attrs["task_kind"] = s.kind
        f.attrs["error_names"] = json.dumps(list(s.error_names))
        f.attrs["token_len"] = s.token_len
        f.attrs["compression"] = s.compression
        f.attrs["spec"] = json.dumps(s.identity(), sort_keys=True)
        for key, value in s.attrs.items():
            f.attrs[key] = jsonable(value)
        options = filters(s.compression)
        for name, (shape, dtype) in s.datasets().items():
            itemsize = np.dtype(dtype).itemsize
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            if s.compression == "none":
                # Every chunk is allocated now, so later writes change raw data only, never the file's
                # metadata: a partial file killed mid-write stays readable and --resume continues it.
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunk_shape(shape, itemsize, _spec.CHUNK_BYTES),
                             fletcher32=True, dcpl=dcpl, **options)
        self._written = {name: 0 for name in s.datasets()}
        f.flush()

    # -- the head, for probes on the analysis side ----------------------------------------------

    def has_head(self) -> bool:
        return "head" in self._file

    def write_head(self, ops: dict[str, Any], params: dict[str, np.ndarray]) -> None:
        """Store the model's head as numpy ops (`analyzers.heads`) and their parameters."""
        try:
            group = self._file.create_group("head")
            group.attrs["ops"] = json.dumps(ops)
            for name, value in params.items():
                group.create_dataset(name, data=value, fletcher32=True, chunks=value.shape or None)
        except H5_WRITE_ERRORS as err:
            raise write_error(self.partial, err, kept=True) from None

    # -- samples ----------------------------------------------------------------------------------

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Append the next rows of each named dataset, in order from `start`.

        Only whole chunks are written; the rows after the last chunk boundary wait in a buffer for
        the next batch. Writing part of a checksummed chunk would mean re-reading, re-checksumming
        and rewriting all of it when the rest arrives.
        """
        try:
            for name, values in arrays.items():
                rows = self._dataset(name)[1]
                buf = self._buffers.setdefault(name, [])
                buf.append(values)
                written = self._written[name]
                end = written + sum(len(v) for v in buf)
                boundary = end - end % rows
                if boundary <= written:
                    continue
                # Complete the open chunk (a copy of at most one chunk), then write the remaining whole
                # chunks straight from the batch, without copying it.
                self._write(name, min(boundary, written - written % rows + rows) - written)
                if boundary > self._written[name]:
                    self._write(name, boundary - self._written[name])
        except H5_WRITE_ERRORS as err:
            raise write_error(self.partial, err, kept=True) from None

    def _dataset(self, name: str) -> tuple[h5py.Dataset, int]:
        """The open dataset and its chunk's row count (looked up once: h5py lookups are not free)."""
        if name not in self._handles:
            dataset = self._file[name]
            self._handles[name] = (dataset, dataset.chunks[0])
        return self._handles[name]

    def _write(self, name: str, count: int) -> None:
        """Write the first ``count`` buffered rows of ``name`` at its write position."""
        buf = self._buffers[name]
        pieces, need = [], count
        while need:
            if len(buf[0]) <= need:
                pieces.append(buf.pop(0))
                need -= len(pieces[-1])
            else:
                pieces.append(buf[0][:need])
                buf[0] = buf[0][need:]
                need = 0
        values = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        start = self._written[name]
        self._dataset(name)[0][start : start + count] = values
        self._written[name] = start + count
        self._unsynced += values.nbytes
        if self._unsynced >= SYNC_BYTES:
            # start the disk on what is written so far; it claims no new samples (see flush)
            self._syncer.request(self._syncer.durable)
            self._unsynced = 0

    def _drain(self, name: str) -> None:
        """Write every buffered row of ``name``, the last chunk possibly partly."""
        held = sum(len(v) for v in self._buffers.get(name, []))
        if held:
            self._write(name, held)

    def read(self, name: str, rows: slice) -> np.ndarray:
        """Rows already in the file (a resumed trace's earlier samples)."""
        try:
            return self._file[name][rows]
        except H5_WRITE_ERRORS as err:
            raise write_error(self.partial, err, kept=True) from None

    @property
    def n_written(self) -> int:
        """The durable count the file records (what --resume would continue from)."""
        return int(self._file.attrs["n_written"])

    def flush(self) -> int:
        """Hand every buffered row to the OS and advance ``n_written`` to what is already on disk.

        ``n_written`` only ever counts samples a finished fsync has covered, so even after a power
        loss the samples it claims are intact. The fsync itself runs in the `Syncer` thread, so the
        disk works while the next batches are computed. Partly filled chunks are written too; at one
        flush every fraction of a second that costs little. Returns the samples handed to the OS.
        """
        try:
            for name in list(self._buffers):
                self._drain(name)
            done = min(self._written.values())
            durable = self._syncer.durable
            if durable > self._recorded:
                self._file.attrs["n_written"] = durable
                self._recorded = durable
            self._file.flush()
        except H5_WRITE_ERRORS as err:
            raise write_error(self.partial, err, kept=True) from None
        self._syncer.request(done)
        self._unsynced = 0
        return done

    def finish(self, attrs: dict[str, Any] | None = None) -> Path:
        """Write what is buffered and ``attrs`` (root attributes known only at the end), mark the trace
        complete, and rename it to its final name."""
        try:
            for name in list(self._buffers):
                self._drain(name)
            if min(self._written.values()) != self.spec.n:
                raise OutputError(f"{self.partial}: {min(self._written.values())} of {self.spec.n} samples written")
            for key, value in (attrs or {}).items():
                self._file.attrs[key] = jsonable(value)
            self._file.attrs["n_written"] = self.spec.n
            self._file.attrs["complete"] = True  # written last
            self._file.flush()
            self._file.close()
            self._file = None
        except H5_WRITE_ERRORS as err:
            self.close()
            raise write_error(self.partial, err, kept=True) from None
        self._syncer.stop()
        try:
            fsync_path(self.partial)
            if self.output.exists() and not self.force:
                raise OutputError(f"{self.output}: appeared while tracing (use --force to overwrite)")
            os.replace(self.partial, self.output)
        except OSError as err:
            raise write_error(self.partial, err, kept=True) from None
        return self.output

    def close(self) -> None:
        """Close without completing (the partial file stays, for --resume)."""
        self._discard(remove=False)
