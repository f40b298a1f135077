"""Per-depth evaluation, streamed: a split is read a batch at a time and only sums are kept."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from analyzers.metrics import summarize
from lpa_cli.training.task_losses import ERROR_NAMES, per_sample_errors
from lpa_cli.models.protocol import ResidualModel
from lpa_cli.runtime import resolve_precision
from lpa_cli.data.splits import Split, TensorSplit

EVAL_BATCH = {"regression": 4096, "classification": 512, "lm": 32}


def autocast(device: torch.device, precision: str):
    """The autocast context of a precision setting (a no-op for fp32)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@torch.no_grad()
def evaluate(model: ResidualModel, split: Split, kind: str, *, batch_size: int = 0, samples: int = 0,
             depths: Sequence[int] | None = None, precision: str = "fp32") -> dict[str, list[float]]:
    """Summary metrics per depth (names from `analyzers.metrics`) on ``split``, or on ``samples`` rows
    spread evenly over it; memory does not grow with the split's size."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    depths = list(range(model.num_depths)) if depths is None else list(depths)
    split = split.subset(samples)
    sums = {name: np.zeros(len(depths)) for name in ERROR_NAMES[kind]}
    y_sum = y_sq = None
    n = 0
    for _, batch in split.iter_batches(batch_size or EVAL_BATCH[kind]):
        batch = batch.to(device)
        with autocast(device, precision):
            preds = model.predictions(batch.x, depths, attention_mask=batch.mask)
        for j, pred in enumerate(preds):
            for name, values in per_sample_errors(pred, batch.y, kind).items():
                sums[name][j] += float(values.double().sum())
        if kind == "regression":  # the target variance of R^2, from running sums
            y = batch.y.double().reshape(len(batch), -1)
            y_sum = y.sum(0) if y_sum is None else y_sum + y.sum(0)
            y_sq = (y * y).sum(0) if y_sq is None else y_sq + (y * y).sum(0)
        n += len(batch)
    model.train(was_training)
    target_var = None
    if kind == "regression" and n:
        mean = y_sum / n
        target_var = float((y_sq / n - mean * mean).clamp_min(0).mean())
    return summarize({name: (s / max(n, 1))[None, :] for name, s in sums.items()}, kind, target_var)


def depth_metrics(model: ResidualModel, x: Tensor, y: Tensor, kind: str, batch_size: int = 4096) -> dict[str, list[float]]:
    """`evaluate` on in-memory tensors."""
    return evaluate(model, TensorSplit(x, y), kind, batch_size=batch_size)
