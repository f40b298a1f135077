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


def per_depth_loss(pred: Tensor, target: Tensor, kind: str, n_depths: int) -> Tensor:
    """Mean loss of each depth from predictions of D depths stacked on the batch axis: ``(D,)``.

    Equal to ``batch_loss`` of each depth's slice (batch-mean MSE or cross-entropy).
    """
    if kind == "regression":
        pred = pred.reshape(n_depths, -1)
        return (pred - target.reshape(1, -1)).pow(2).mean(dim=1)
    reps = [n_depths] + [1] * (target.dim() - 1)
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.repeat(*reps).reshape(-1), reduction="none")
    return ce.reshape(n_depths, -1).mean(dim=1)


@torch.no_grad()
def per_sample_errors(pred: Tensor, target: Tensor, kind: str, extras: bool = False) -> dict[str, Tensor]:
    """Per-sample errors of one depth's prediction, each of shape ``(B,)``, float32.

    With ``extras``: for classification and LMs also the softmax's largest probability and entropy
    (for early exit), and for LMs the per-token ``ce_token`` / ``correct_token`` ``(B, T)``.
    """
    if kind == "regression":
        return {"se": (pred.float() - target.float()).pow(2).reshape(pred.shape[0], -1).mean(dim=1)}
    logp = F.log_softmax(pred.float(), dim=-1)
    ce = -logp.gather(-1, target[..., None]).squeeze(-1)  # (B,) or (B, T)
    correct = (logp.argmax(dim=-1) == target).float()
    out = {"ce": ce, "correct": correct}
    if kind == "lm":
        out = {"ce": ce.mean(dim=1), "correct": correct.mean(dim=1)}
        if extras:
            out |= {"ce_token": ce, "correct_token": correct}
    if extras:
        prob = logp.exp()
        out["max_prob"] = prob.max(dim=-1).values
        out["entropy"] = -(prob * logp).sum(dim=-1)
    return out


ERROR_NAMES = {"regression": ("se",), "classification": ("ce", "correct"), "lm": ("ce", "correct")}
