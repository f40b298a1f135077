"""How a trajectory's distributions read depth by depth (toward issue 42): the measures tuned-lens and
the prediction-depth literature report per layer, from arrays a trace holds (torch-free).

- `kl_to_final`: KL divergence of each depth's distribution from the final depth's, D(p_N || p_k), in
  nats (tuned-lens's direction and units);
- `calibration_error`: expected calibration error per depth, equal-width bins on the top class's
  probability (15 bins, the common choice): sum over bins of (share of samples) x |accuracy - mean
  confidence|;
- `prediction_depth`: per sample, the first depth from which the arg-max equals the final depth's at
  every later depth (its distribution says how deep inputs must go before the answer stops changing);
- `depth_measures`: the numpy twin of what the tracer streams per depth (`lpa_cli.serving.trajectory`:
  KL to the final depth, the alignment of each step with its residual target, the arg-max), used for
  predictions read through a lens and as the tests' reference.

`analyzers.trajectory_summary` turns a trace's measures into per-depth curves with bootstrap bands.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

BINS = 15


def kl_to_final(logits: np.ndarray) -> np.ndarray:
    """(N, D) KL(p_final || p_k) in nats from (N, D, C) logits; 0 at the final depth."""
    logp = log_softmax(np.asarray(logits, dtype=np.float64), axis=-1)
    final = logp[:, -1:, :]
    return np.sum(np.exp(final) * (final - logp), axis=-1)


def calibration_error(max_prob: np.ndarray, correct: np.ndarray, bins: int = BINS) -> np.ndarray:
    """(D,) expected calibration error of each depth from (N, D) top-class probabilities and 0/1 correctness."""
    conf, right = np.asarray(max_prob, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    n, depths = conf.shape
    which = np.minimum((conf * bins).astype(int), bins - 1)  # bin b holds [b/bins, (b+1)/bins); 1.0 in the last
    out = np.zeros(depths)
    for d in range(depths):
        gap = np.abs(np.bincount(which[:, d], right[:, d], bins) - np.bincount(which[:, d], conf[:, d], bins))
        out[d] = gap.sum() / n if n else np.nan  # sum_b |sum acc - sum conf| / N = sum_b (n_b / N) |acc_b - conf_b|
    return out


def prediction_depth(predicted: np.ndarray) -> np.ndarray:
    """(N,) the first depth index from which (N, D) arg-max predictions equal the final depth's at every
    later depth (D - 1 when only the final depth has it)."""
    same = np.asarray(predicted) == np.asarray(predicted)[:, -1:]
    settled = np.flip(np.cumprod(np.flip(same, axis=1), axis=1), axis=1).astype(bool)  # same from this depth on
    return settled.shape[1] - settled.sum(axis=1)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    return log_softmax(np.asarray(z, dtype=np.float64), axis=-1)


def _cosine(dot: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    norm = np.sqrt(a_sq * b_sq)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(np.where(norm > 0, dot / np.where(norm > 0, norm, 1.0), 0.0), -1.0, 1.0)


def depth_measures(pred: np.ndarray, prev: np.ndarray | None, final_logits: np.ndarray | None, target: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """One depth's measures per sample (LMs: per token too, and their means over real tokens), as the
    tracer writes them: ``alignment`` the cosine between the step ``pred - prev`` (logits centred over
    the classes) and the negative loss gradient at ``prev`` (``y - prev``; ``onehot(y) - softmax(prev)``),
    0 where either has zero length and NaN without ``prev``; ``kl_to_final`` KL(p_final || p) in nats;
    ``prediction`` the arg-max (LMs: ``prediction_token``, -1 at padding, whose target is negative)."""
    n = len(pred)
    if kind == "regression":
        if prev is None:
            return {"alignment": np.full(n, np.nan)}
        step = (np.asarray(pred, np.float64) - prev).reshape(n, -1)
        residual = (np.asarray(target, np.float64).reshape(n, -1) - np.asarray(prev, np.float64).reshape(n, -1))
        return {"alignment": _cosine((step * residual).sum(1), (step**2).sum(1), (residual**2).sum(1))}
    logp, final = _log_softmax(pred), _log_softmax(final_logits)
    out = {"kl_to_final": np.maximum(np.sum(np.exp(final) * (final - logp), axis=-1), 0.0), "prediction": np.argmax(pred, axis=-1)}
    valid = np.asarray(target) >= 0
    if prev is None:
        out["alignment"] = np.full(out["kl_to_final"].shape, np.nan)
    else:
        p = np.exp(_log_softmax(prev))
        step = np.asarray(pred, np.float64) - prev
        step = step - step.mean(-1, keepdims=True)
        onehot = np.eye(pred.shape[-1])[np.where(valid, target, 0)]
        residual = onehot - p
        out["alignment"] = _cosine((step * residual).sum(-1), (step**2).sum(-1), (residual**2).sum(-1))
    if kind != "lm":
        return out
    w = valid.astype(np.float64)
    count = np.maximum(w.sum(1), 1)
    align_token = np.where(valid, out["alignment"], 0.0) if prev is not None else out["alignment"]
    return {"kl_to_final_token": out["kl_to_final"] * w, "alignment_token": align_token, "prediction_token": np.where(valid, out["prediction"], -1),
            "kl_to_final": (out["kl_to_final"] * w).sum(1) / count, "alignment": (align_token * w).sum(1) / count}


__all__ = ["BINS", "calibration_error", "depth_measures", "kl_to_final", "prediction_depth"]
