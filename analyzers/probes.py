"""Per-depth read-outs (lenses) for models whose intermediate states were never trained to be read.

- ``logit``: the model's own head at every depth — what the trace already holds.
- ``tuned``: per-depth affine translators ``h -> h + h A_k + b_k`` (zero-initialised, ridge-
  regularised), fitted in closed form so the translated stream at depth k matches the final stream
  h_N; the model's own head then reads it. This is the squared-loss form of the tuned lens: it
  matches the final *state* rather than minimising KL to the final distribution, so it needs no
  gradient through the head and has an exact solution.
- ``linear``: per-depth linear read-outs fitted to the target directly, on the head's own features
  (the head without its final linear layer): closed-form ridge for regression, multinomial logistic
  regression by L-BFGS for classification and language models (started from the model's head).

Probes are fitted on a training-split trace recorded with ``--states`` and evaluated on another
trace; evaluating on the fitting data is refused. Everything here is numpy/scipy; probes are saved
as safetensors (numpy arrays, never pickles).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import optimize

from lpa_core.atomic import atomic_path
from lpa_core.depths import select_recorded
from lpa_core.files import readable
from lpa_core.errors import LpaError, UsageError
from analyzers.heads import Head, read_head
from analyzers.metrics import summarize

KINDS = ("logit", "tuned", "linear")
FORMAT = "lpa-probes"


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    """(n, ...) states with features on ``axis`` -> (rows, C) with one row per sample and position."""
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis])


def _unrows(r: np.ndarray, like: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(like, axis, -1)
    return np.moveaxis(r.reshape(moved.shape), -1, axis)


def _ridge(xtx: np.ndarray, xty: np.ndarray, ridge: float) -> np.ndarray:
    """Solve (X'X + lambda I') W = X'Y with the last row/column (the bias) unpenalised."""
    c = xtx.shape[0] - 1
    scale = max(np.trace(xtx[:c, :c]) / max(c, 1), 1e-12)
    penalty = np.eye(c + 1) * ridge * scale
    penalty[c, c] = 0.0
    return np.linalg.solve(xtx + penalty, xty)


@dataclass
class Lens:
    """A fitted probe: per-depth parameters plus the head it reads through."""

    kind: str
    depths: list[int]  # the depths the lens covers (its parameters are per depth)
    params: dict[str, np.ndarray]
    head: Head
    task_kind: str
    fit: dict[str, Any] = field(default_factory=dict)  # fingerprint of the fitting data
    settings: dict[str, Any] = field(default_factory=dict)

    def predict(self, depth: int, h: np.ndarray) -> np.ndarray:
        """Prediction at ``depth`` from states ``h`` (n, *state)."""
        if self.kind == "logit" or depth not in self.depths:
            return self.head(h)
        if self.kind == "tuned":
            a, b = self.params[f"A.{depth}"], self.params[f"b.{depth}"]
            r = _rows(h, self.head.feature_axis)
            return self.head(_unrows(r + r @ a + b, h, self.head.feature_axis))
        w, b = self.params[f"W.{depth}"], self.params[f"c.{depth}"]
        return self.head.features(h) @ w + b

    def check_eval(self, trace) -> None:
        if self.fit and trace.fingerprint() == self.fit:
            raise UsageError(f"{trace.path}: refusing to evaluate a probe on the data it was fitted on; trace another split")
        sha = str(trace.attrs.get("checkpoint_sha256", ""))
        if self.fit.get("checkpoint_sha256") and sha != self.fit["checkpoint_sha256"]:
            raise UsageError(f"{trace.path}: probe was fitted on a different model (sha256 {self.fit['checkpoint_sha256'][:12]}…)")

    def errors(self, trace, rows: slice, positions: list[int]) -> dict[str, np.ndarray]:
        """Per-sample errors ``(rows, len(positions))`` of the lens on a trace's stored states."""
        states = trace.read("states", rows)
        targets = trace.read("targets", rows)
        cols = [per_sample_errors(self.predict(trace.depths[p], states[:, p]), targets, trace.kind) for p in positions]
        return {name: np.stack([c[name] for c in cols], axis=1) for name in cols[0]}

    def save(self, path: str | Path, force: bool = False) -> Path:
        from safetensors.numpy import save_file

        tensors = {f"param.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in self.params.items()}
        tensors |= {f"head.{k}": np.ascontiguousarray(v, dtype=np.float32) for k, v in self.head.params.items()}
        meta = {
            "format": FORMAT, "format_version": "1", "kind": self.kind, "depths": json.dumps(self.depths),
            "task_kind": self.task_kind, "fit": json.dumps(self.fit), "settings": json.dumps(self.settings),
            "head": json.dumps({"ops": self.head.ops, "feature_axis": self.head.feature_axis}),
        }
        with atomic_path(path, force=force) as tmp:
            save_file(tensors or {"empty": np.zeros(0, np.float32)}, str(tmp), metadata=meta)
        return Path(path)


def per_sample_errors(pred: np.ndarray, target: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """Numpy version of the tracer's per-sample errors (``se``; or ``ce`` and ``correct``)."""
    if kind == "regression":
        return {"se": ((pred - target.reshape(pred.shape)) ** 2).reshape(pred.shape[0], -1).mean(axis=1)}
    z = pred.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    ce = -np.take_along_axis(logp, target[..., None].astype(np.int64), axis=-1)[..., 0]
    correct = (pred.argmax(axis=-1) == target).astype(np.float64)
    if kind == "lm":
        ce, correct = ce.mean(axis=1), correct.mean(axis=1)
    return {"ce": ce, "correct": correct}


def _softmax_regression(x: np.ndarray, y: np.ndarray, w0: np.ndarray, b0: np.ndarray, ridge: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression by L-BFGS, L2 on the weights, started at (w0, b0)."""
    n, c = x.shape
    k = w0.shape[1]
    onehot_rows = np.arange(n)

    def loss(theta):
        w = theta[: c * k].reshape(c, k)
        b = theta[c * k :]
        z = x @ w + b
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        s = p.sum(axis=1, keepdims=True)
        value = -(z[onehot_rows, y] - np.log(s[:, 0])).mean() + 0.5 * ridge * (w * w).sum()
        p /= s
        p[onehot_rows, y] -= 1.0
        p /= n
        grad = np.concatenate([(x.T @ p + ridge * w).ravel(), p.sum(axis=0)])
        return value, grad

    theta0 = np.concatenate([w0.ravel(), b0]).astype(np.float64)
    res = optimize.minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return res.x[: c * k].reshape(c, k), res.x[c * k :]


def fit(trace, kind: str, depths: str | None = None, ridge: float = 1e-3, max_iter: int = 200, chunk_rows: int = 8192) -> Lens:
    """Fit a lens of ``kind`` on a trace with stored states (a training split)."""
    if kind not in KINDS:
        raise UsageError(f"unknown probe kind {kind!r}; expected {', '.join(KINDS)}")
    if not (isinstance(ridge, (int, float)) and np.isfinite(ridge) and ridge >= 0):
        raise UsageError(f"--ridge must be a finite number >= 0, got {ridge!r}")
    head = read_head(trace)
    if kind == "logit":
        return Lens("logit", [], {}, head, trace.kind, {}, {})
    if not trace.has("states"):
        raise UsageError(f"{trace.path}: fitting a probe needs block states; trace it with --states")
    positions = select_recorded(depths, trace.depths, trace.n_blocks + 1)
    last = len(trace.depths) - 1
    params: dict[str, np.ndarray] = {}
    axis = head.feature_axis
    if kind == "tuned":
        # Streamed normal equations per depth: [h, 1]' [h, 1] and [h, 1]' (h_N - h).
        c = trace.read("states", slice(0, 1))[:, 0].shape[axis]  # head axes count the batch axis
        xtx = {p: np.zeros((c + 1, c + 1)) for p in positions if p != last}
        xty = {p: np.zeros((c + 1, c)) for p in positions if p != last}
        for start in range(0, trace.n, chunk_rows):
            states = trace.read("states", slice(start, min(trace.n, start + chunk_rows))).astype(np.float64)
            final = _rows(states[:, last], axis)
            for p in xtx:
                x = _rows(states[:, p], axis)
                x1 = np.hstack([x, np.ones((x.shape[0], 1))])
                xtx[p] += x1.T @ x1
                xty[p] += x1.T @ (final - x)
        for p in xtx:
            sol = _ridge(xtx[p], xty[p], ridge)
            params[f"A.{trace.depths[p]}"], params[f"b.{trace.depths[p]}"] = sol[:-1], sol[-1]
    else:
        states = trace.read("states")
        targets = trace.read("targets")
        w_head, b_head = head.readout
        for p in positions:
            feats = head.features(states[:, p]).astype(np.float64)
            feats = feats.reshape(-1, feats.shape[-1])
            if trace.kind == "regression":
                x1 = np.hstack([feats, np.ones((feats.shape[0], 1))])
                sol = _ridge(x1.T @ x1, x1.T @ targets.reshape(feats.shape[0], -1), ridge)
                w, b = sol[:-1], sol[-1]
            else:
                y = targets.reshape(-1).astype(np.int64)
                b0 = b_head if b_head is not None else np.zeros(w_head.shape[0])
                w, b = _softmax_regression(feats, y, w_head.T.astype(np.float64), b0.astype(np.float64), ridge, max_iter)
            params[f"W.{trace.depths[p]}"], params[f"c.{trace.depths[p]}"] = w, b
    covered = sorted({int(k.split(".")[1]) for k in params})
    return Lens(kind, covered, params, head, trace.kind, trace.fingerprint(), {"ridge": ridge, "max_iter": max_iter})


def load_lens(spec: str) -> Lens:
    """``KIND:FILE`` (or just FILE) -> a saved lens."""
    from safetensors import SafetensorError
    from safetensors import safe_open

    kind, _, path = spec.partition(":") if ":" in spec else ("", "", spec)
    path = readable(Path(path), error=UsageError)  # a FIFO or device: refused, never opened
    if not path.is_file():
        raise UsageError(f"{path}: probe file not found")
    try:
        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise UsageError(f"{path}: not a probe file ({err})") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path}: not an lpa probe file")
    if kind and kind != meta.get("kind"):
        raise UsageError(f"{path}: holds a {meta.get('kind')} probe, not {kind}")
    try:
        head_spec = json.loads(meta["head"])
        head = Head(head_spec["ops"], {k[5:]: v for k, v in arrays.items() if k.startswith("head.")}, int(head_spec["feature_axis"]))
        return Lens(meta["kind"], json.loads(meta["depths"]), {k[6:]: v for k, v in arrays.items() if k.startswith("param.")},
                    head, meta["task_kind"], json.loads(meta["fit"]), json.loads(meta["settings"]))
    except (KeyError, ValueError, TypeError) as err:
        raise UsageError(f"{path}: malformed probe file ({err})") from None


def evaluate(lens: Lens, trace, chunk_rows: int = 8192) -> dict[str, list[float]]:
    """Per-depth summary metrics of ``lens`` on a (held-out) trace."""
    lens.check_eval(trace)
    if lens.kind != "logit" and not trace.has("states"):
        raise UsageError(f"{trace.path}: evaluating a probe needs block states; trace it with --states")
    positions = list(range(len(trace.depths)))
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, trace.n, chunk_rows):
        rows = slice(start, min(trace.n, start + chunk_rows))
        if lens.kind == "logit":
            errs = {name: trace.read(f"errors/{name}", rows) for name in trace.error_names}
        else:
            errs = lens.errors(trace, rows, positions)
        for k, v in errs.items():
            parts.setdefault(k, []).append(v)
    errors = {k: np.concatenate(v) for k, v in parts.items()}
    return summarize(errors, trace.kind, trace.attrs.get("target_var"))


__all__ = ["KINDS", "Lens", "LpaError", "evaluate", "fit", "load_lens"]
