"""The constant predictor's error on a trace's own targets: the floor a model that learned must beat
(`analyzers.monotonicity`'s "no descent" verdict and "never left chance" warning)."""

from __future__ import annotations

import numpy as np


def constant_baseline(trace, base: str) -> float | None:
    """The mean per-sample error (``se``, ``ce`` or ``err``) of the best constant predictor on the
    trace's targets: the targets' mean (regression), the class prior (classification), the unigram
    distribution of the target tokens (language models). None when it does not apply.

    Estimated leave-one-out, each sample judged by the constant fitted to the others (add-one smoothed
    over the classes or the vocabulary for ``ce``), because the in-sample figure flatters the constant:
    on 1,152 test tokens of an 8,192-token vocabulary the test set's own unigram distribution has a
    cross-entropy far below what any predictor fitted elsewhere could reach, and a model that learned
    would be called "no descent". With many samples per class both are the same."""
    if not trace.has("targets") or (trace.kind == "regression") != (base == "se"):
        return None
    total, sq, counts, n = 0.0, 0.0, np.zeros(0, dtype=np.int64), 0
    for block in trace.iter_rows("targets", rows=1 << 16):  # streamed: an LM trace holds n x T targets
        if trace.kind == "regression":
            y = np.asarray(block, dtype=np.float64).reshape(len(block), -1)
            total, sq, n = total + y.sum(axis=0), sq + (y * y).sum(axis=0), n + len(y)
            continue
        labels = np.asarray(block).reshape(-1).astype(np.int64)
        labels = labels[labels >= 0]  # LM targets mark padding with a negative index
        c = np.bincount(labels)
        counts = np.pad(counts, (0, max(0, c.size - counts.size)))
        counts[: c.size] += c
    if trace.kind == "regression":  # the mean of the other n - 1: (n / (n - 1))^2 times the variance
        return float(np.mean(sq / n - (total / n) ** 2)) * (n / (n - 1)) ** 2 if n > 1 else None
    m = int(counts.sum())
    if m < 2:
        return None
    if base == "err":
        return float(1.0 - counts.max() / m)
    if base == "ce":
        classes = max(counts.size, int(trace.task.get("out_dim") or 0))
        seen = counts[counts > 0]
        return float(-(seen / m * np.log(seen / (m - 1 + classes))).sum())  # p_-i(c) = (n_c - 1 + 1) / (m - 1 + K)
    return None
