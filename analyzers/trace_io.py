"""The HDF5 trace: the contract between the torch side (which writes it) and the analysis side.

Layout (format ``lpa-trace``, version 1; full description in docs/trace-format.md)::

    /predictions          (n, D, *pred_shape)   head output at each recorded depth (optional for LMs)
    /targets              (n, *target_shape)
    /errors/<name>        (n, D) float32        per-sample errors: se | ce, correct
    /errors/<name>_token  (n, D, T) float32     LMs only: per-token ce and correct
    /confidence/max_prob  (n, D[, T]) float32   classification and LMs: largest softmax probability
    /confidence/entropy   (n, D[, T]) float32   ... and the entropy of the softmax (nats)
    /states               (n, D, *state_shape)  optional residual stream h_k at each recorded depth

D is the number of recorded depths; the root attribute ``depths`` lists which (0 = embedding, N =
output). Every dataset is chunked along the sample axis and fletcher32-checksummed. Files are written
as ``<output>.partial`` and renamed when complete; the root attribute ``complete`` is set last.

This module never imports torch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from analyzers.atomic import check_writable, fsync_path
from analyzers.errors import OutputError, TraceError, UsageError

log = logging.getLogger(__name__)

FORMAT = "lpa-trace"
FORMAT_VERSION = 1
COMPRESSIONS = ("none", "gzip", "lzf")
CHUNK_BYTES = 1 << 20
RDCC_BYTES = 16 << 20  # raw-data chunk cache per dataset while writing
SYNC_BYTES = 32 << 20  # between flushes, start an fsync after this many bytes (the disk starts early)


def partial_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".partial")


@dataclass
class TraceSpec:
    """Shapes and attributes of a trace, fixed before the first sample is written."""

    n: int
    depths: list[int]
    kind: str
    target_shape: tuple[int, ...]
    target_dtype: str
    pred_shape: tuple[int, ...] | None  # None: predictions not stored
    state_shape: tuple[int, ...] | None  # None: states not stored
    error_names: tuple[str, ...]
    token_len: int = 0  # LMs: sequence length T (per-token datasets)
    confidence: bool = False
    dtype: str = "float32"
    compression: str = "none"
    attrs: dict[str, Any] = field(default_factory=dict)

    def datasets(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, dtype) of every dataset the trace holds."""
        D = len(self.depths)
        out: dict[str, tuple[tuple[int, ...], str]] = {"targets": ((self.n, *self.target_shape), self.target_dtype)}
        if self.pred_shape is not None:
            out["predictions"] = ((self.n, D, *self.pred_shape), self.dtype)
        for name in self.error_names:
            out[f"errors/{name}"] = ((self.n, D), "float32")
            if self.token_len:
                out[f"errors/{name}_token"] = ((self.n, D, self.token_len), "float32")
        if self.confidence:
            tail = (self.token_len,) if self.token_len else ()
            out["confidence/max_prob"] = ((self.n, D, *tail), "float32")
            out["confidence/entropy"] = ((self.n, D, *tail), "float32")
        if self.state_shape is not None:
            out["states"] = ((self.n, D, *self.state_shape), self.dtype)
        return out


def _filters(compression: str) -> dict[str, Any]:
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}; expected none, gzip or lzf")
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    return {"compression": "lzf"}


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk along the sample axis only, about 1 MB each (at least one sample)."""
    per_sample = max(1, math.prod(shape[1:]) * itemsize)
    rows = max(1, min(shape[0], CHUNK_BYTES // per_sample))
    return (rows, *shape[1:])


def _jsonable(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value


class _Syncer(threading.Thread):
    """Flushes a file's written pages to disk in the background (os.fsync releases the GIL, and the
    disk, not the CPU, does the work), so the fsync before the final rename has little left to wait
    for. `durable` is the largest requested count whose fsync has finished."""

    def __init__(self, path: Path, durable: int) -> None:
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDONLY)
        self.durable = durable
        self._count: int | None = None  # the latest request not yet picked up
        self._wake = threading.Condition()
        self._stopping = False
        self.start()

    def request(self, count: int) -> None:
        """Ask for an fsync covering the first ``count`` samples (all already handed to the OS)."""
        with self._wake:
            self._count = count if self._count is None else max(self._count, count)
            self._wake.notify()

    def run(self) -> None:
        while True:
            with self._wake:
                while self._count is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                count, self._count = self._count, None
            try:
                os.fsync(self.fd)
            except OSError:
                return  # the final fsync_path reports disk errors in the main thread
            self.durable = max(self.durable, count)

    def stop(self) -> None:
        """Stop syncing (idempotent); pending requests are dropped, the final fsync comes later."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self.is_alive():
            self.join()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class TraceWriter:
    """Writes a trace under ``<output>.partial``; `finish` marks it complete and renames it.

    With ``resume=True`` an existing partial file made with the same spec is continued from the
    number of samples it had flushed (``n_written``).
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
        try:
            self.output.parent.mkdir(parents=True, exist_ok=True)
            if not (resume and self.partial.exists() and self._try_resume()):
                self.file = h5py.File(self.partial, "w", rdcc_nbytes=RDCC_BYTES)
                self._create()
            self._syncer = _Syncer(self.partial, self.start)
        except OSError as err:
            raise OutputError(f"{self.partial}: cannot write trace ({err})") from None
        self._recorded = self.start  # the n_written the file holds
        self._unsynced = 0  # bytes written since the last fsync request

    def _try_resume(self) -> bool:
        try:
            f = h5py.File(self.partial, "r+", rdcc_nbytes=RDCC_BYTES)
        except OSError:
            # Compressed traces relocate chunks as they grow, so a kill can leave them unreadable.
            log.warning("%s: partial trace is unreadable; starting over", self.partial)
            return False
        if f.attrs.get("format") != FORMAT or json.loads(f.attrs.get("spec", "{}")) != self._spec_json():
            f.close()
            raise UsageError(f"{self.partial}: partial trace was made with different settings; rerun without --resume to start over")
        self.file = f
        self.start = int(f.attrs.get("n_written", 0))
        self._written = {name: self.start for name in self.spec.datasets()}
        return True

    def _spec_json(self) -> dict[str, Any]:
        s = self.spec
        return json.loads(json.dumps({
            "n": s.n, "depths": s.depths, "datasets": {k: [list(v[0]), v[1]] for k, v in s.datasets().items()},
            "compression": s.compression, "source": s.attrs.get("checkpoint_sha256", ""), "split": s.attrs.get("split", ""),
        }))

    def _create(self) -> None:
        s = self.spec
        f = self.file
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["complete"] = False
        f.attrs["n_samples"] = s.n
        f.attrs["n_written"] = 0
        f.attrs["depths"] = np.asarray(s.depths, dtype=np.int64)
        f.attrs["task_kind"] = s.kind
        f.attrs["error_names"] = json.dumps(list(s.error_names))
        f.attrs["token_len"] = s.token_len
        f.attrs["compression"] = s.compression
        f.attrs["spec"] = json.dumps(self._spec_json(), sort_keys=True)
        for key, value in s.attrs.items():
            f.attrs[key] = _jsonable(value)
        filters = _filters(s.compression)
        for name, (shape, dtype) in s.datasets().items():
            itemsize = np.dtype(dtype).itemsize
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            if s.compression == "none":
                # Every chunk is allocated now, so later writes change raw data only, never the file's
                # metadata: a partial file killed mid-write stays readable and --resume continues it.
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
            f.create_dataset(name, shape=shape, dtype=dtype, chunks=_chunks(shape, itemsize), fletcher32=True, dcpl=dcpl, **filters)
        self._written = {name: 0 for name in s.datasets()}
        f.flush()

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        """Append the next rows of each named dataset, in order from `start`.

        Only whole chunks are written; the rows after the last chunk boundary wait in a buffer for
        the next batch. Writing part of a checksummed chunk would mean re-reading, re-checksumming
        and rewriting all of it when the rest arrives.
        """
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

    def _dataset(self, name: str) -> tuple[h5py.Dataset, int]:
        """The open dataset and its chunk's row count (looked up once: h5py lookups are not free)."""
        if name not in self._handles:
            dataset = self.file[name]
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

    def flush(self) -> int:
        """Hand every buffered row to the OS and advance ``n_written`` to what is already on disk.

        ``n_written`` only ever counts samples a finished fsync has covered, so even after a power
        loss the samples it claims are intact. The fsync itself runs in the `_Syncer` thread, so the
        disk works while the next batches are computed. Partly filled chunks are written too; at one
        flush every fraction of a second that costs little. Returns the samples handed to the OS.
        """
        for name in list(self._buffers):
            self._drain(name)
        done = min(self._written.values())
        durable = self._syncer.durable
        if durable > self._recorded:
            self.file.attrs["n_written"] = durable
            self._recorded = durable
        self.file.flush()
        self._syncer.request(done)
        self._unsynced = 0
        return done

    def finish(self) -> Path:
        for name in list(self._buffers):
            self._drain(name)
        if min(self._written.values()) != self.spec.n:
            raise OutputError(f"{self.partial}: {min(self._written.values())} of {self.spec.n} samples written")
        self.file.attrs["n_written"] = self.spec.n
        self.file.attrs["complete"] = True  # written last
        self.file.flush()
        self.file.close()
        self._syncer.stop()
        try:
            fsync_path(self.partial)
            if self.output.exists() and not self.force:
                raise OutputError(f"{self.output}: appeared while tracing (use --force to overwrite)")
            os.replace(self.partial, self.output)
        except OSError as err:
            raise OutputError(f"{self.output}: cannot finish trace ({err})") from None
        return self.output

    def close(self) -> None:
        """Close without completing (the partial file stays, for --resume)."""
        self._syncer.stop()
        try:
            self.file.close()
        except Exception:  # noqa: BLE001 - closing after an error must not hide the error
            pass


# --- reading ---------------------------------------------------------------------------------


def _h5_error(path: Path, err: Exception) -> TraceError:
    text = str(err)
    if "truncated file" in text:
        return TraceError(f"{path}: truncated trace file (it is shorter than its header says)")
    if "plugin" in text or ("filter" in text and ("not registered" in text or "not available" in text or "can't open" in text.lower())):
        return TraceError(f"{path}: a compression filter this trace uses is unavailable in this HDF5 install ({text.splitlines()[0]})")
    if "filter returned failure" in text or "checksum" in text.lower() or "fletcher" in text.lower():
        return TraceError(f"{path}: checksum mismatch: trace data is corrupt")
    return TraceError(f"{path}: cannot read trace ({text.splitlines()[0] if text else type(err).__name__})")


H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError)


@contextlib.contextmanager
def _guard(path: Path) -> Iterator[None]:
    """HDF5 reports damage from any call (opening objects, links, attributes, data) with a handful of
    exception types; every one becomes a one-line TraceError naming the file."""
    try:
        yield
    except TraceError:
        raise
    except UsageError:
        raise
    except H5_ERRORS as err:
        raise _h5_error(path, err) from None


class Trace:
    """A validated, complete trace opened for reading. Use as a context manager."""

    def __init__(self, path: str | Path, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            hint = " (an interrupted trace is at .partial; run lpa trace --resume)" if partial_path(self.path).exists() else ""
            raise TraceError(f"{self.path}: no such file{hint}")
        if self.path.is_dir():
            raise TraceError(f"{self.path}: is a directory, not a trace")
        if self.path.name.endswith(".partial") and not allow_incomplete:
            raise TraceError(f"{self.path}: incomplete trace (the writer was interrupted); run lpa trace --resume to finish it")
        try:
            if not h5py.is_hdf5(self.path):
                raise TraceError(f"{self.path}: not an HDF5 file (empty, truncated or another format)")
            self.file = h5py.File(self.path, "r")
        except TraceError:
            raise
        except (OSError, RuntimeError, ValueError) as err:
            raise _h5_error(self.path, err) from None
        try:
            with _guard(self.path):
                self._validate(allow_incomplete)
        except Exception:
            with contextlib.suppress(Exception):
                self.file.close()
            raise

    def _validate(self, allow_incomplete: bool) -> None:
        a = self.file.attrs
        if a.get("format") != FORMAT:
            raise TraceError(f"{self.path}: HDF5 file is not an lpa trace (no format={FORMAT} attribute)")
        version = int(a.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise TraceError(f"{self.path}: trace format version {version} is newer than this lpa reads ({FORMAT_VERSION}); upgrade lpa")
        if version < 1:
            raise TraceError(f"{self.path}: bad trace format version {version}")
        if not bool(a.get("complete", False)) and not allow_incomplete:
            raise TraceError(f"{self.path}: incomplete trace (the writer was interrupted); run lpa trace --resume to finish it")
        try:
            self.depths = [int(d) for d in np.asarray(a["depths"]).ravel()]
            self.n = int(a["n_samples"])
            self.kind = str(a["task_kind"])
            self.error_names = tuple(json.loads(a["error_names"]))
            self.token_len = int(a.get("token_len", 0))
        except (KeyError, ValueError, TypeError) as err:
            raise TraceError(f"{self.path}: trace attributes are malformed ({err})") from None
        if self.kind not in ("regression", "classification", "lm"):
            raise TraceError(f"{self.path}: unknown task kind {self.kind!r}")
        D = len(self.depths)
        if D == 0 or sorted(set(self.depths)) != self.depths or self.depths[0] < 0:
            raise TraceError(f"{self.path}: trace depths {self.depths} must be sorted, unique and non-negative")
        for name in self.error_names:
            key = f"errors/{name}"
            if key not in self.file:
                raise TraceError(f"{self.path}: missing dataset {key}")
            if self.file[key].shape != (self.n, D):
                raise TraceError(f"{self.path}: dataset {key} has shape {self.file[key].shape}, expected {(self.n, D)}")
        if "targets" not in self.file or self.file["targets"].shape[0] != self.n:
            raise TraceError(f"{self.path}: missing or mis-sized targets")
        for key in ("predictions", "states", "confidence/max_prob", "confidence/entropy"):
            if key in self.file and self.file[key].shape[:2] != (self.n, D):
                raise TraceError(f"{self.path}: dataset {key} has shape {self.file[key].shape}, expected ({self.n}, {D}, ...)")

    # context manager
    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    @property
    def attrs(self) -> dict[str, Any]:
        with _guard(self.path):
            return self._attrs()

    def _attrs(self) -> dict[str, Any]:
        out = {}
        for key, value in self.file.attrs.items():
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, np.generic):
                value = value.item()
            out[key] = value
        return out

    def json_attr(self, key: str, default: Any = None) -> Any:
        with _guard(self.path):
            raw = self.file.attrs.get(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except (TypeError, ValueError):
            return default

    @property
    def config(self) -> dict[str, Any]:
        return self.json_attr("config", {}) or {}

    @property
    def task(self) -> dict[str, Any]:
        return self.json_attr("task", {}) or {}

    def has(self, name: str) -> bool:
        with _guard(self.path):
            return name in self.file

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """A whole dataset (or a row range), checksum-verified."""
        with _guard(self.path):
            if name not in self.file:
                raise TraceError(f"{self.path}: trace has no dataset {name!r}" + (" (trace with --states)" if name == "states" else ""))
            return self.file[name][rows if rows is not None else slice(None)]

    def errors(self, name: str) -> np.ndarray:
        """Per-sample errors ``(n, D)``."""
        if name not in self.error_names:
            raise TraceError(f"{self.path}: trace has no per-sample {name!r} errors (it has {', '.join(self.error_names)})")
        return self.read(f"errors/{name}")

    def iter_rows(self, name: str, rows: int = 65536) -> Iterator[np.ndarray]:
        """Read a dataset in blocks of ``rows`` samples (bounded memory)."""
        if not self.has(name):
            raise TraceError(f"{self.path}: trace has no dataset {name!r}")
        for start in range(0, self.n, rows):
            yield self.read(name, slice(start, min(self.n, start + rows)))

    def depth_index(self, depth: int) -> int:
        try:
            return self.depths.index(depth)
        except ValueError:
            raise UsageError(f"{self.path}: depth {depth} was not recorded (recorded: {self.depths})") from None


def open_trace(path: str | Path, allow_incomplete: bool = False) -> Trace:
    return Trace(path, allow_incomplete)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def is_trace(path: str | Path) -> bool:
    """True for files named like traces or starting with the HDF5 signature."""
    p = Path(path)
    if p.suffix in (".h5", ".hdf5") or p.name.endswith(".partial"):
        return True
    try:
        with p.open("rb") as f:
            return f.read(8) == HDF5_SIGNATURE
    except OSError:
        return False
