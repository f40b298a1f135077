"""Per-depth evaluation: per-sample errors at every depth, and their summary metrics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from analyzers.metrics import summarize
from lpa_cli.losses import ERROR_NAMES, per_sample_errors
from lpa_cli.models.protocol import ResidualModel


def target_variance(y: Tensor, kind: str) -> float | None:
    """Variance of regression targets, averaged over outputs (the denominator of R^2)."""
    if kind != "regression":
        return None
    return float(y.double().var(dim=0, unbiased=False).mean())


@torch.no_grad()
def depth_errors(
    model: ResidualModel, x: Tensor, y: Tensor, kind: str, depths: Sequence[int] | None = None, batch_size: int = 4096
) -> dict[str, np.ndarray]:
    """Per-sample errors at each depth: ``{name: array (n_samples, n_depths)}``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    depths = list(range(model.num_depths)) if depths is None else list(depths)
    out = {name: np.empty((x.shape[0], len(depths)), dtype=np.float32) for name in ERROR_NAMES[kind]}
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].to(device)
        yb = y[start : start + batch_size].to(device)
        for j, pred in enumerate(model.predictions(xb, depths)):
            for name, values in per_sample_errors(pred, yb, kind).items():
                out[name][start : start + xb.shape[0], j] = values.cpu().numpy()
    model.train(was_training)
    return out


def depth_metrics(model: ResidualModel, x: Tensor, y: Tensor, kind: str, batch_size: int = 4096) -> dict[str, list[float]]:
    """Summary metrics per depth 0..N (names from `analyzers.metrics.METRICS`)."""
    return summarize(depth_errors(model, x, y, kind, batch_size=batch_size), kind, target_variance(y, kind))
