"""Per-sample errors and batch losses for each task kind, in torch.

These compute what `analyzers.metrics` summarises: ``se`` for regression, ``ce`` and ``correct`` for
classification and language modelling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def batch_loss(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Mean training loss of one depth's prediction: MSE for regression, cross-entropy otherwise."""
    if kind == "regression":
        return F.mse_loss(pred, target)
    if kind == "classification":
        return F.cross_entropy(pred, target)
    # lm: pred (B, T, V), target (B, T)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))


@torch.no_grad()
def per_sample_errors(pred: Tensor, target: Tensor, kind: str) -> dict[str, Tensor]:
    """Per-sample errors of one depth's prediction, each of shape ``(B,)``, float32."""
    if kind == "regression":
        return {"se": (pred.float() - target.float()).pow(2).reshape(pred.shape[0], -1).mean(dim=1)}
    if kind == "classification":
        logits = pred.float()
        return {
            "ce": F.cross_entropy(logits, target, reduction="none"),
            "correct": (logits.argmax(dim=-1) == target).float(),
        }
    logits = pred.float()  # (B, T, V)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    return {
        "ce": ce.reshape(target.shape).mean(dim=1),
        "correct": (logits.argmax(dim=-1) == target).float().mean(dim=1),
    }


ERROR_NAMES = {"regression": ("se",), "classification": ("ce", "correct"), "lm": ("ce", "correct")}
