"""Per-depth metrics from per-sample errors, with the project's metric names.

Task kinds and the per-sample errors each one records (arrays of shape ``(n_samples, n_depths)``):

- ``regression``: ``se`` — squared error averaged over output dimensions.
- ``classification``: ``ce`` — cross-entropy in nats; ``correct`` — 1.0 if the arg-max is right.
- ``lm``: ``ce`` — mean next-token cross-entropy of the sequence; ``correct`` — share of tokens right.

Summary metrics (one value per depth): ``mse``, ``rmse``, ``r2`` (regression); ``ce``, ``acc``, ``err``
(classification); ``ce``, ``ppl``, ``acc`` (lm).
"""

from __future__ import annotations

import math
import os
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from lpa_core.errors import UsageError

KINDS = ("regression", "classification", "lm")
METRICS = {
    "regression": ("mse", "rmse", "r2"),
    "classification": ("ce", "acc", "err"),
    "lm": ("ce", "ppl", "acc"),
}
HIGHER_IS_BETTER = {"r2", "acc"}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UsageError(f"unknown task kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def summarize(errors: dict[str, np.ndarray], kind: str, target_var: float | None = None) -> dict[str, list[float]]:
    """Per-depth summary metrics from per-sample errors (each array ``(n_samples, n_depths)``).

    ``target_var`` is the variance of the regression targets (mean over output dimensions); it is
    needed for ``r2`` and ignored for the other kinds.
    """
    check_kind(kind)
    out: dict[str, list[float]] = {}
    if kind == "regression":
        mse = np.asarray(errors["se"], dtype=np.float64).mean(axis=0)
        out["mse"] = mse.tolist()
        out["rmse"] = np.sqrt(mse).tolist()
        if target_var is not None and target_var > 0:
            out["r2"] = (1.0 - mse / target_var).tolist()
        return out
    ce = np.asarray(errors["ce"], dtype=np.float64).mean(axis=0)
    acc = np.asarray(errors["correct"], dtype=np.float64).mean(axis=0)
    out["ce"] = ce.tolist()
    if kind == "classification":
        out["acc"] = acc.tolist()
        out["err"] = (1.0 - acc).tolist()
    else:
        out["ppl"] = [math.exp(min(v, 700.0)) for v in ce.tolist()]
        out["acc"] = acc.tolist()
    return out


def error_ratio(a: float, b: float) -> float:
    """``a / b`` for two errors (>= 0): 1 when both are 0 (equally perfect, not infinitely worse), inf
    when only ``b`` is."""
    if b > 0:
        return a / b
    return 1.0 if a <= 0 else math.inf


def format_t(t: float) -> str:
    """A t statistic as text; an infinite one (every sample changed by the same amount) is said in words."""
    if t != t:
        return "-"
    if math.isinf(t):
        return "no spread"
    return f"{t:.3g}"


def format_p(p: float) -> str:
    """A p-value as text: ``p = 0.012``, or ``p < 1e-300`` where it underflows (never ``p = 0``)."""
    if p != p:  # NaN
        return "p = nan"
    if p < 1e-300:
        return "p < 1e-300"
    return f"p = {p:.3g}"


def finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null. Also unwraps numpy scalars, turns arrays (numpy,
    torch: anything with ``tolist``) into lists, paths into strings and dataclasses into dicts of
    their fields, in the same single pass (``dataclasses.asdict`` first would deep-copy every leaf:
    seconds for a compare result's heatmaps)."""
    kind = type(value)
    if kind is float:  # the common leaf first
        return value if math.isfinite(value) else None
    if kind is int or kind is str or value is None:
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: finite(getattr(value, f.name)) for f in fields(value)}
    if hasattr(value, "__fspath__"):
        return os.fspath(value)
    if hasattr(value, "tolist"):
        return finite(value.tolist())
    return value
