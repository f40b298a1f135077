"""User data from .npz, .npy, .csv and .h5 files, for regression or classification.

- ``.npz``: arrays ``x`` and ``y`` (other names with ``x_key``/``y_key``); loaded with
  ``allow_pickle=False``, so object arrays are refused, never unpickled.
- ``.npy``: the inputs; the targets are the ``.npy`` named by ``y_key`` (default: ``<name>.y.npy``
  beside it). Both are memory-mapped, so they may be larger than memory.
- ``.csv``: numeric columns, one header row allowed, parsed by numpy's C reader; the last column is
  the target unless ``target_column`` names or numbers another.
- ``.h5``: datasets named by ``x_key``/``y_key`` (default ``x`` and ``y``), read lazily a batch at a
  time when larger than `IN_MEMORY_BYTES` (``lazy = true`` forces it).

``x`` of shape (n, d) is a vector task; (n, H, W) or (n, C, H, W) an image task. The kind is
classification when ``y`` holds integers (or ``kind = "classification"``), regression otherwise;
CSV targets are read as numbers, so a CSV is classification only with ``kind = "classification"``
or an integer target column of at most `CSV_MAX_AUTO_CLASSES` values (the choice is logged).
A seeded split holds out ``test_fraction`` (default 0.2) of the rows. ``standardize = true``
rescales every input column to mean 0, variance 1 with the training rows' statistics, which are
recorded with the task (a checkpoint applies the same ones to any data traced later).
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lpa_core.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.data.base import Task, check_options, float_option
from lpa_cli.data.images import seeded_split
from lpa_cli.data.splits import ArraySplit, MappedArray, TensorSplit

log = logging.getLogger(__name__)

MAX_CLASSES = 100_000
IN_MEMORY_BYTES = 2 << 30  # larger arrays are read lazily (h5, npy) or refused (npz, csv)
MAX_DECLARED_BYTES = 1 << 40  # a file declaring more than this (a compression bomb) is refused outright
CSV_MAX_AUTO_CLASSES = 20
OPTIONS = ("x_key", "y_key", "target_column", "kind", "test_fraction", "standardize", "lazy", "stats")


def _check_size(path: Path, name: str, nbytes: int, lazy_ok: bool) -> None:
    if nbytes > MAX_DECLARED_BYTES:
        raise DataError(f"{path}: array {name!r} declares {nbytes / 2**40:.1f} TiB; refusing to read it")
    if nbytes > IN_MEMORY_BYTES and not lazy_ok:
        raise DataError(f"{path}: array {name!r} holds {nbytes / 2**30:.1f} GiB, more than lpa reads into memory "
                        f"({IN_MEMORY_BYTES / 2**30:.0f} GiB); store it as .npy or .h5, which are read lazily")


def _load_npz(path: Path, opts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    xk, yk = str(opts.get("x_key", "x")), str(opts.get("y_key", "y"))
    with path.open("rb") as f:
        if f.read(4) != b"PK\x03\x04":  # np.load would otherwise try the file as a pickle
            raise DataError(f"{path}: not a valid .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            names = list(data.files)
            missing = [k for k in (xk, yk) if k not in names]
            if missing:
                raise DataError(f"{path}: missing array(s) {', '.join(missing)} (has {', '.join(names) or 'none'})")
            for k in (xk, yk):  # the uncompressed size is in the zip directory: check it before inflating
                _check_size(path, k, data.zip.getinfo(f"{k}.npy").file_size, lazy_ok=False)
            return np.asarray(data[xk]), np.asarray(data[yk])
    except DataError:
        raise
    except ValueError as err:
        if "allow_pickle" in str(err) or "Object arrays" in str(err):
            raise DataError(f"{path}: contains object arrays, which would need unpickling; refusing") from None
        raise DataError(f"{path}: not a valid .npz file ({err})") from None
    except Exception as err:  # noqa: BLE001 - zipfile and its codecs report damage with many types
        # (BadZipFile, NotImplementedError for unsupported flags or methods, RuntimeError for
        # "encrypted", zlib.error, lzma.LZMAError, EOFError, ...): each means the file is not usable
        raise DataError(f"{path}: not a valid .npz file ({type(err).__name__}: {err})") from None


def _load_npy(path: Path, opts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    y_path = Path(opts["y_key"]) if "y_key" in opts else path.with_name(path.name[: -len(".npy")] + ".y.npy")
    arrays = []
    for p in (path, y_path):
        if not p.is_file():
            raise DataError(f"{p}: targets file not found (name it with --y-key FILE.npy)" if p == y_path else f"{p}: not found")
        try:
            a = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as err:
            raise DataError(f"{p}: not a usable .npy file ({err})") from None
        except OSError as err:
            raise DataError(f"{p}: cannot read ({err})") from None
        # mapped per read so random rows do not pile up in RSS (see MappedArray)
        arrays.append(MappedArray.of(a) if isinstance(a, np.memmap) and a.flags.c_contiguous else a)
    return arrays[0], arrays[1]


def _load_csv(path: Path, opts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    _check_size(path, "csv", path.stat().st_size * 4, lazy_ok=False)  # parsed floats take about 4x the text
    try:
        with path.open(newline="", encoding="utf-8") as f:
            first = next((r for r in csv.reader(f) if r and any(c.strip() for c in r)), None)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    except csv.Error as err:  # e.g. a field over csv's 131,072-character limit
        raise DataError(f"{path}: not a CSV lpa reads ({err})") from None
    if first is None:
        raise DataError(f"{path}: no rows")
    header = None
    try:
        [float(c) for c in first]
    except ValueError:
        header = [c.strip() for c in first]
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1 if header else 0, dtype=np.float64, ndmin=2, encoding="utf-8")
    except ValueError as err:
        text = str(err)
        if "columns" in text or "number of" in text:
            raise DataError(f"{path}: rows have different numbers of columns ({text.splitlines()[0]})") from None
        raise DataError(f"{path}: non-numeric value ({text.splitlines()[0]})") from None
    if table.size == 0:
        raise DataError(f"{path}: no rows")
    width = table.shape[1]
    if width < 2:
        raise DataError(f"{path}: needs at least two columns (features and a target)")
    target = opts.get("target_column", -1)
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if header is None or target not in header:
            raise DataError(f"{path}: no column named {target!r}")
        target = header.index(target)
    target = int(target)
    if not -width <= target < width:
        raise DataError(f"{path}: target column {target} out of range")
    y = table[:, target]
    x = np.delete(table, target % width, axis=1)
    kind = opts.get("kind")
    if kind is None and np.isfinite(y).all() and np.all(np.mod(y, 1) == 0):
        classes = len(np.unique(y))
        if classes <= CSV_MAX_AUTO_CLASSES and y.min() >= 0:
            log.warning("%s: integer target column with %d values: classification (set task.options.kind=regression to change)", path, classes)
            y = y.astype(np.int64)
        else:
            log.warning("%s: integer target column with %d values: regression (set task.options.kind=classification to change)", path, classes)
    elif kind == "classification":
        y = y.astype(np.int64) if np.all(np.mod(y, 1) == 0) else y
    return x, y


def _load_h5(path: Path, opts: dict[str, Any]) -> tuple[Any, Any]:
    from analyzers.trace.arrays import H5Arrays

    xk, yk = str(opts.get("x_key", "x")), str(opts.get("y_key", "y"))
    arrays = H5Arrays(path, (xk, yk))
    for k in (xk, yk):
        _check_size(path, k, arrays.nbytes(k), lazy_ok=True)
    if opts.get("lazy") or arrays.nbytes(xk) + arrays.nbytes(yk) > IN_MEMORY_BYTES:
        return arrays, None  # read a batch at a time
    try:
        return arrays.read(xk), arrays.read(yk)
    finally:
        arrays.close()


LOADERS = {".npz": _load_npz, ".npy": _load_npy, ".csv": _load_csv, ".h5": _load_h5, ".hdf5": _load_h5}


def _kind(path: Path, y_dtype: np.dtype, kind: str | None) -> str:
    if kind is None:
        kind = "classification" if y_dtype.kind in "biu" else "regression"
    if kind not in ("classification", "regression"):
        raise DataError(f"{path}: task kind must be classification or regression, got {kind!r}")
    return kind


def _check_arrays(path: Path, x_shape: tuple, x_dtype: np.dtype, y_shape: tuple, y_dtype: np.dtype, kind: str) -> None:
    for name, shape, dtype in (("x", x_shape, x_dtype), ("y", y_shape, y_dtype)):
        if dtype.kind not in "biuf":
            raise DataError(f"{path}: array {name!r} has dtype {dtype}, expected numbers")
        if len(shape) == 0 or shape[0] == 0:
            raise DataError(f"{path}: array {name!r} is empty")
    if x_shape[0] != y_shape[0]:
        raise DataError(f"{path}: x has {x_shape[0]} rows but y has {y_shape[0]}")
    if len(x_shape) not in (2, 3, 4):
        raise DataError(f"{path}: x must be (n, d), (n, H, W) or (n, C, H, W), got shape {x_shape}")
    if kind == "classification" and len(y_shape) != 1:
        raise DataError(f"{path}: classification labels must be 1-D, got shape {y_shape}")
    if kind == "regression" and len(y_shape) > 2:
        raise DataError(f"{path}: regression targets must be (n,) or (n, k), got shape {y_shape}")


def _finite(path: Path, name: str, a: np.ndarray) -> None:
    """No NaN or infinity, and nothing that turns infinite in float32 (training would diverge)."""
    if not np.isfinite(np.asarray(a, dtype=np.float64)).all():
        raise DataError(f"{path}: {name} contains NaN or infinite values")
    if a.dtype.kind in "fiu" and a.size and float(np.abs(np.asarray(a, dtype=np.float64)).max()) > float(np.finfo(np.float32).max):
        raise DataError(f"{path}: {name} has values beyond float32's range (about 3.4e38); rescale the data")


def _labels(path: Path, y: np.ndarray) -> int:
    if np.any(np.mod(y, 1) != 0) or y.min() < 0:
        raise DataError(f"{path}: classification labels must be non-negative integers")
    out_dim = int(y.max()) + 1
    if out_dim > MAX_CLASSES:
        raise DataError(f"{path}: {out_dim} classes is more than lpa supports ({MAX_CLASSES})")
    return max(out_dim, 2)


def load_file_task(source: str, cfg: TaskConfig) -> Task:
    path = Path(source)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r}; expected .npz, .npy, .csv or .h5")
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    check_options(f"file:{path.name}", cfg.options, OPTIONS)
    opts = dict(cfg.options)
    x, y = loader(path, opts)
    lazy = y is None or isinstance(x, (np.memmap, MappedArray))
    if y is None:  # an H5Arrays reader
        arrays, xk, yk = x, str(opts.get("x_key", "x")), str(opts.get("y_key", "y"))
        x_shape, y_shape, x_dtype, y_dtype = arrays.shapes[xk], arrays.shapes[yk], arrays.dtypes[xk], arrays.dtypes[yk]
        read_x = lambda rows: arrays.read(xk, rows)  # noqa: E731
        read_y = lambda rows: arrays.read(yk, rows)  # noqa: E731
    else:
        x_shape, y_shape, x_dtype, y_dtype = x.shape, y.shape, x.dtype, y.dtype
        read_x = lambda rows: x[rows]  # noqa: E731
        read_y = lambda rows: y[rows]  # noqa: E731
    kind = _kind(path, y_dtype, opts.get("kind"))
    _check_arrays(path, tuple(x_shape), np.dtype(x_dtype), tuple(y_shape), np.dtype(y_dtype), kind)
    if not lazy:
        _finite(path, "x", np.asarray(x))
        _finite(path, "y", np.asarray(y))
        if kind == "classification":
            _labels(path, np.asarray(y))
    n = x_shape[0]
    frac = float_option(opts, "test_fraction", 0.2, 0.0, 1.0)
    n_test = cfg.n_test or max(1, int(round(n * frac)))
    if not 0 < n_test < n:
        raise DataError(f"{path}: {n} rows cannot be split into train and test ({n_test} test rows)")
    train_idx, test_idx = seeded_split(n, n_test, cfg.data_seed)
    if cfg.n_train:
        train_idx = train_idx[: cfg.n_train]
    image = len(x_shape) in (3, 4)
    in_shape = tuple(int(d) for d in x_shape[1:])
    in_shape = (1, *in_shape) if len(x_shape) == 3 else in_shape
    y_tail = tuple(int(d) for d in y_shape[1:])
    if kind == "classification":
        # the labels decide the output size: for lazy arrays this is one pass over the targets, in blocks
        out_dim = _labels(path, np.asarray(y)) if not lazy else max(2, _blocks_max(read_y, n) + 1)
    else:
        out_dim = 1 if not y_tail else y_tail[0]
    stats = _stats(opts, path, read_x, train_idx, lazy, image)
    noise = cfg.noise if kind == "regression" else 0.0

    def convert(xb: np.ndarray, yb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        xt = torch.from_numpy(np.ascontiguousarray(xb, dtype=np.float32))
        if image and xt.dim() == 3:
            xt = xt.unsqueeze(1)  # (n, H, W) -> (n, 1, H, W)
        if stats is not None:
            xt = (xt - stats[0]) / stats[1]
        if kind == "classification":
            yt = torch.from_numpy(np.ascontiguousarray(yb).astype(np.int64))
        else:
            yt = torch.from_numpy(np.ascontiguousarray(yb, dtype=np.float32))
            yt = yt.unsqueeze(1) if yt.dim() == 1 else yt
        return xt, yt

    if lazy:
        train = ArraySplit(read_x, read_y, train_idx.numpy(), convert)
        test = ArraySplit(read_x, read_y, test_idx.numpy(), convert)
    else:
        xt, yt = convert(np.asarray(x), np.asarray(y))
        if noise > 0:
            yt = yt + noise * torch.randn(yt.shape, generator=torch.Generator().manual_seed(cfg.data_seed))
        train, test = TensorSplit(xt[train_idx], yt[train_idx]), TensorSplit(xt[test_idx], yt[test_idx])
    meta: dict[str, Any] = {"source": str(path), "size": path.stat().st_size}
    if stats is not None:
        meta["stats"] = {"mean": stats[0].tolist(), "std": stats[1].tolist()}
    return Task(
        name=f"file:{path}", kind=kind, input_kind="image" if image else "vector", train=train, test=test, out_dim=out_dim,
        in_shape=in_shape, description=f"user data {path.name}: {n} rows, x {tuple(x_shape[1:])}, {kind}" + (", read lazily" if lazy else ""),
        meta=meta,
    )


def _blocks_max(read_y, n: int, block: int = 1 << 20) -> int:
    """Largest label of lazily read targets, checked as labels, one block at a time."""
    top = 0
    for start in range(0, n, block):
        y = np.asarray(read_y(slice(start, min(n, start + block))))
        if y.size and (np.any(np.mod(y, 1) != 0) or y.min() < 0):
            raise DataError("classification labels must be non-negative integers")
        top = max(top, int(y.max()) if y.size else 0)
    if top + 1 > MAX_CLASSES:
        raise DataError(f"{top + 1} classes is more than lpa supports ({MAX_CLASSES})")
    return top


def _stats(opts: dict[str, Any], path: Path, read_x, train_idx: torch.Tensor, lazy: bool, image: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Input standardisation (vector inputs): recorded statistics (a checkpoint's), or the training rows' own."""
    given = opts.get("stats")
    if given is not None:
        try:
            return torch.tensor(given["mean"], dtype=torch.float32), torch.tensor(given["std"], dtype=torch.float32)
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: malformed task.options.stats") from None
    if not opts.get("standardize"):
        return None
    if image:
        raise DataError(f"{path}: standardize applies to vector inputs (n, d); images are used as they are")
    rows = np.sort(train_idx.numpy())
    if lazy:
        rows = rows[:: max(1, math.ceil(len(rows) / 200_000))]  # a large sample estimates the statistics
    x = np.asarray(read_x(rows), dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(np.where(std > 0, std, 1.0), dtype=torch.float32)


__all__ = ["LOADERS", "MAX_CLASSES", "load_file_task"]
