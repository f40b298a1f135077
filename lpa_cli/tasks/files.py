"""User data from .npz, .csv and .h5 files, for regression or classification.

- ``.npz``: arrays ``x`` and ``y`` (other names with ``x_key``/``y_key``); loaded with
  ``allow_pickle=False``, so object arrays are refused, never unpickled.
- ``.csv``: numeric columns, one header row allowed; the last column is the target unless
  ``target_column`` names or numbers another.
- ``.h5``: datasets named by ``x_key``/``y_key`` (default ``x`` and ``y``).

``x`` of shape (n, d) is a vector task; (n, H, W) or (n, C, H, W) an image task. The kind is
classification when ``y`` holds integers (or ``kind = "classification"``), regression otherwise. A
seeded split holds out ``test_fraction`` (default 0.2) of the rows.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analyzers.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.tasks.base import Task
from lpa_cli.tasks.images import seeded_split

MAX_CLASSES = 100_000


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


def _load_csv(path: Path, opts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{path}: no rows")
    header = None
    try:
        [float(c) for c in rows[0]]
    except ValueError:
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    width = len(rows[0]) if rows else 0
    if width < 2:
        raise DataError(f"{path}: needs at least two columns (features and a target)")
    for i, r in enumerate(rows):
        if len(r) != width:
            raise DataError(f"{path}: row {i + 1 + (header is not None)} has {len(r)} columns, expected {width}")
    try:
        table = np.array([[float(c) for c in r] for r in rows], dtype=np.float64)
    except ValueError as err:
        raise DataError(f"{path}: non-numeric value ({err})") from None
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
    if np.all(np.mod(y, 1) == 0) and opts.get("kind") != "regression" and len(np.unique(y)) <= max(2, len(y) // 5):
        y = y.astype(np.int64)
    return x, y


def _load_h5(path: Path, opts: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    xk, yk = str(opts.get("x_key", "x")), str(opts.get("y_key", "y"))
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in (xk, yk) if k not in f or not isinstance(f[k], h5py.Dataset)]
            if missing:
                raise DataError(f"{path}: missing dataset(s) {', '.join(missing)} (use --set task.options.x_key=... / y_key=...)")
            return np.asarray(f[xk][()]), np.asarray(f[yk][()])
    except (OSError, RuntimeError, KeyError, ValueError) as err:
        raise DataError(f"{path}: cannot read HDF5 ({err})") from None


LOADERS = {".npz": _load_npz, ".csv": _load_csv, ".h5": _load_h5, ".hdf5": _load_h5}


def load_file_task(source: str, cfg: TaskConfig) -> Task:
    path = Path(source)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r}; expected .npz, .csv or .h5")
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    opts = dict(cfg.options)
    x, y = loader(path, opts)
    x, y, kind, out_dim = _validate(path, x, y, opts.get("kind"))
    n = x.shape[0]
    frac = float(opts.get("test_fraction", 0.2))
    n_test = cfg.n_test or max(1, int(round(n * frac)))
    if not 0 < n_test < n:
        raise DataError(f"{path}: {n} rows cannot be split into train and test ({n_test} test rows)")
    train_idx, test_idx = seeded_split(n, n_test, cfg.data_seed)
    if cfg.n_train:
        train_idx = train_idx[: cfg.n_train]
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(np.ascontiguousarray(y))
    if xt.dim() == 3:
        xt = xt.unsqueeze(1)  # (n, H, W) -> (n, 1, H, W)
    if kind == "regression" and yt.dim() == 1:
        yt = yt.unsqueeze(1)
    if cfg.noise > 0 and kind == "regression":
        yt = yt + cfg.noise * torch.randn(yt.shape, generator=torch.Generator().manual_seed(cfg.data_seed))
    return Task(
        name=f"file:{path}", kind=kind, input_kind="image" if xt.dim() == 4 else "vector",
        x_train=xt[train_idx], y_train=yt[train_idx], x_test=xt[test_idx], y_test=yt[test_idx], out_dim=out_dim,
        description=f"user data {path.name}: {n} rows, x {tuple(x.shape[1:])}, {kind}",
        meta={"source": str(path)},
    )


def _validate(path: Path, x: np.ndarray, y: np.ndarray, kind: str | None) -> tuple[np.ndarray, np.ndarray, str, int]:
    for name, a in (("x", x), ("y", y)):
        if a.dtype.kind not in "biuf":
            raise DataError(f"{path}: array {name!r} has dtype {a.dtype}, expected numbers")
        if a.ndim == 0 or a.shape[0] == 0:
            raise DataError(f"{path}: array {name!r} is empty")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{path}: x has {x.shape[0]} rows but y has {y.shape[0]}")
    if x.ndim not in (2, 3, 4):
        raise DataError(f"{path}: x must be (n, d), (n, H, W) or (n, C, H, W), got shape {x.shape}")
    if not np.isfinite(x.astype(np.float64, copy=False)).all():
        raise DataError(f"{path}: x contains NaN or infinite values")
    if not np.isfinite(y.astype(np.float64, copy=False)).all():
        raise DataError(f"{path}: y contains NaN or infinite values")
    if kind is None:
        kind = "classification" if y.dtype.kind in "biu" else "regression"
    if kind not in ("classification", "regression"):
        raise DataError(f"{path}: task kind must be classification or regression, got {kind!r}")
    x = x.astype(np.float32)
    if kind == "classification":
        if y.ndim != 1:
            raise DataError(f"{path}: classification labels must be 1-D, got shape {y.shape}")
        if np.any(np.mod(y, 1) != 0) or y.min() < 0:
            raise DataError(f"{path}: classification labels must be non-negative integers")
        out_dim = int(y.max()) + 1
        if out_dim > MAX_CLASSES:
            raise DataError(f"{path}: {out_dim} classes is more than lpa supports ({MAX_CLASSES})")
        return x, y.astype(np.int64), kind, max(out_dim, 2)
    if y.ndim > 2:
        raise DataError(f"{path}: regression targets must be (n,) or (n, k), got shape {y.shape}")
    y = y.astype(np.float32)
    return x, y, kind, 1 if y.ndim == 1 else int(y.shape[1])
