"""Reading a trace: validated on open, and every HDF5 access behind one guard that turns damage into
a one-line `TraceError`."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from lpa_core.errors import TraceError, UsageError
from lpa_core.files import readable
from analyzers.trace.spec import FORMAT, FORMAT_VERSION, KINDS, TRAJECTORY, partial_path

H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError)
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def h5_error(path: Path, err: Exception) -> TraceError:
    text = str(err)
    if "truncated file" in text:
        return TraceError(f"{path}: truncated trace file (it is shorter than its header says)")
    if "plugin" in text or ("filter" in text and ("not registered" in text or "not available" in text or "can't open" in text.lower())):
        return TraceError(f"{path}: a compression filter this trace uses is unavailable in this HDF5 install ({text.splitlines()[0]})")
    if "filter returned failure" in text or "checksum" in text.lower() or "fletcher" in text.lower():
        return TraceError(f"{path}: checksum mismatch: trace data is corrupt")
    return TraceError(f"{path}: cannot read trace ({text.splitlines()[0] if text else type(err).__name__})")


@contextlib.contextmanager
def guard(path: Path) -> Iterator[None]:
    """HDF5 reports damage from any call (opening objects, links, attributes, data) with a handful of
    exception types; every one becomes a one-line TraceError naming the file."""
    try:
        yield
    except (TraceError, UsageError):
        raise
    except H5_ERRORS as err:
        raise h5_error(path, err) from None


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset of a trace, as stored."""

    shape: tuple[int, ...]
    dtype: str
    compression: str  # none, gzip or lzf
    checksummed: bool


class Trace:
    """A validated, complete trace opened for reading. Use as a context manager."""

    def __init__(self, path: str | Path, allow_incomplete: bool = False) -> None:
        self.path = readable(path, error=TraceError)  # a FIFO or device named as a trace: refused, never opened
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
            self._file = h5py.File(self.path, "r")
        except TraceError:
            raise
        except (OSError, RuntimeError, ValueError) as err:
            raise h5_error(self.path, err) from None
        try:
            with guard(self.path):
                self._validate(allow_incomplete)
        except Exception:
            with contextlib.suppress(Exception):
                self._file.close()
            raise

    def _validate(self, allow_incomplete: bool) -> None:
        a = self._file.attrs
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
            self.n_blocks = int(a.get("n_blocks", max(self.depths)))
        except (KeyError, ValueError, TypeError) as err:
            raise TraceError(f"{self.path}: trace attributes are malformed ({err})") from None
        if self.kind not in KINDS:
            raise TraceError(f"{self.path}: unknown task kind {self.kind!r}")
        D = len(self.depths)
        if D == 0 or sorted(set(self.depths)) != self.depths or self.depths[0] < 0:
            raise TraceError(f"{self.path}: trace depths {self.depths} must be sorted, unique and non-negative")
        if self.n_blocks < self.depths[-1]:
            raise TraceError(f"{self.path}: trace records depth {self.depths[-1]} of a model of {self.n_blocks} blocks")
        for name in self.error_names:
            key = f"errors/{name}"
            if key not in self._file:
                raise TraceError(f"{self.path}: missing dataset {key}")
            if self._file[key].shape != (self.n, D):
                raise TraceError(f"{self.path}: dataset {key} has shape {self._file[key].shape}, expected {(self.n, D)}")
        if "targets" not in self._file or self._file["targets"].shape[0] != self.n:
            raise TraceError(f"{self.path}: missing or mis-sized targets")
        for key in ("predictions", "states", "confidence/max_prob", "confidence/entropy"):
            if key in self._file and self._file[key].shape[:2] != (self.n, D):
                raise TraceError(f"{self.path}: dataset {key} has shape {self._file[key].shape}, expected ({self.n}, {D}, ...)")
        self.version = version
        for name in TRAJECTORY[self.kind] if version >= 2 else ():  # format 2 always holds them: absent means damaged
            key = f"trajectory/{name}"
            if key not in self._file or self._file[key].shape[:2] != (self.n, D):
                raise TraceError(f"{self.path}: dataset {key} is missing or mis-shaped (format {version} traces hold it)")

    # context manager
    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._file.close()

    @property
    def attrs(self) -> dict[str, Any]:
        with guard(self.path):
            out = {}
            for key, value in self._file.attrs.items():
                if isinstance(value, np.ndarray):
                    value = value.tolist()
                elif isinstance(value, np.generic):
                    value = value.item()
                out[key] = value
            return out

    def json_attr(self, key: str, default: Any = None) -> Any:
        with guard(self.path):
            raw = self._file.attrs.get(key)
        if raw is None:
            return default
        try:
            return json.loads(raw)
        except (TypeError, ValueError):
            return default

    @property
    def config(self) -> dict[str, Any]:
        value = self.json_attr("config", {}) or {}
        return value if isinstance(value, dict) else {}

    @property
    def task(self) -> dict[str, Any]:
        value = self.json_attr("task", {}) or {}
        return value if isinstance(value, dict) else {}

    def has(self, name: str) -> bool:
        with guard(self.path):
            return name in self._file

    def datasets(self) -> dict[str, DatasetInfo]:
        """Every dataset of the trace (the head's parameters included), by path."""
        found: dict[str, DatasetInfo] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                found[name] = DatasetInfo(tuple(obj.shape), str(obj.dtype), str(obj.compression or "none"), bool(obj.fletcher32))

        with guard(self.path):
            self._file.visititems(visit)
        return found

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """A whole dataset (or a row range), checksum-verified."""
        with guard(self.path):
            if name not in self._file:
                raise TraceError(f"{self.path}: trace has no dataset {name!r}" + (" (trace with --states)" if name == "states" else ""))
            return self._file[name][rows if rows is not None else slice(None)]

    @property
    def has_trajectory(self) -> bool:
        """Whether the trace holds the trajectory measures (format 2 on; older traces: trace again)."""
        return self.version >= 2

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

    def head(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The exported head: its ops description and parameters (see `analyzers.heads`)."""
        if not self.has("head"):
            raise TraceError(f"{self.path}: trace has no exported head (its head is not made of supported layers)")
        try:
            with guard(self.path):
                group = self._file["head"]
                spec = json.loads(group.attrs["ops"])
                params = {name: np.asarray(group[name][()]) for name in group}
        except TraceError as err:
            raise TraceError(f"{self.path}: malformed head group ({str(err).split(': ', 1)[-1]})") from None
        except ValueError as err:
            raise TraceError(f"{self.path}: malformed head group ({err})") from None
        if not isinstance(spec, dict) or "ops" not in spec or "feature_axis" not in spec:
            raise TraceError(f"{self.path}: malformed head group (ops description incomplete)")
        return spec, params

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the data a trace covers: the model, the split and a hash of the targets."""
        h = hashlib.sha256()
        for block in self.iter_rows("targets", rows=1 << 16):
            h.update(np.ascontiguousarray(block).tobytes())
        a = self.attrs
        return {"checkpoint_sha256": str(a.get("checkpoint_sha256", "")), "split": str(a.get("split", "")),
                "n": self.n, "targets_sha256": h.hexdigest()}


def open_trace(path: str | Path, allow_incomplete: bool = False) -> Trace:
    return Trace(path, allow_incomplete)


TRACE_SUFFIXES = (".h5", ".hdf5")


def is_trace(path: str | Path) -> bool:
    """True for files named like traces. Inputs are recognised by their names, never by their bytes: a
    trace renamed ``model.safetensors`` is read as the checkpoint it claims to be, and refused as one
    (a gate must not pass a file for what its bytes say rather than what it is called)."""
    p = Path(path)
    return p.suffix.lower() in TRACE_SUFFIXES or p.name.endswith(".partial")
