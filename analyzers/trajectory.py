"""How a trajectory's distributions read depth by depth (toward issue 42): the measures tuned-lens and
the prediction-depth literature report per layer, from arrays a trace holds (torch-free).

- `kl_to_final`: KL divergence of each depth's distribution from the final depth's, D(p_N || p_k), in
  nats (tuned-lens's direction and units);
- `calibration_error`: expected calibration error per depth, equal-width bins on the top class's
  probability (15 bins, the common choice): sum over bins of (share of samples) x |accuracy - mean
  confidence|;
- `prediction_depth`: per sample, the first depth from which the arg-max equals the final depth's at
  every later depth (its distribution says how deep inputs must go before the answer stops changing).
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


__all__ = ["BINS", "calibration_error", "kl_to_final", "prediction_depth"]
