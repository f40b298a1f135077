"""Per-sample errors and training losses for each task kind, in torch.

These compute what `analyzers.metrics` summarises: ``se`` for regression, ``ce`` and ``correct`` for
classification and language modelling. LM targets equal to `IGNORE_INDEX` (padding) count nowhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lpa_cli.data.batch import IGNORE_INDEX

ERROR_NAMES = {"regression": ("se",), "classification": ("ce", "correct"), "lm": ("ce", "correct")}


def loss_sum(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """Sum over the batch of each sample's (or token's) loss; divide by `loss_denominator` for the mean.

    Regression: squared error averaged over output dimensions (so the mean is ``F.mse_loss``);
    classification and LMs: cross-entropy in nats (LMs: per token).
    """
    if kind == "regression":
        return (pred.float() - target.float()).pow(2).sum() / max(1, pred[0].numel() if pred.dim() > 1 else 1)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def loss_denominator(target: Tensor, kind: str) -> Tensor | int:
    """How many terms `loss_sum` adds up, at least 1, without reading anything back to the host: a device
    tensor for LMs (the count of real tokens), the row count otherwise."""
    if kind == "lm":
        return (target != IGNORE_INDEX).sum().clamp_min(1)
    return max(1, int(target.shape[0]))


def loss_rows(pred: Tensor, target: Tensor, kind: str) -> Tensor:
    """(rows,) each row's `loss_sum` term (an LM row of several tokens: their sum; padding: 0)."""
    n = pred.shape[0]
    if kind == "regression":
        return (pred.float() - target.float()).pow(2).reshape(n, -1).mean(1)
    ce = F.cross_entropy(pred.reshape(-1, pred.shape[-1]).float(), target.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return ce if target.dim() == 1 else ce.view(n, -1).sum(1)


def align_rows(pred: Tensor, final: Tensor, kind: str, target: Tensor) -> Tensor:
    """(rows,) each row's `align_sum` term."""
    n = pred.shape[0]
    if kind == "regression":
        return (pred.float() - final.float()).pow(2).reshape(n, -1).mean(1)
    logp = F.log_softmax(pred.reshape(-1, pred.shape[-1]).float(), dim=-1)
    logq = F.log_softmax(final.reshape(-1, final.shape[-1]).float(), dim=-1)
    kl = (logq.exp() * (logq - logp)).sum(dim=-1)
    if kind == "lm":
        kl = kl * (target.reshape(-1) != IGNORE_INDEX)
    return kl if kl.shape[0] == n else kl.view(n, -1).sum(1)


def align_sum(pred: Tensor, final: Tensor, kind: str, target: Tensor) -> Tensor:
    """Sum of each sample's (token's) distance to the final depth's detached prediction: the
    KL divergence KL(final || pred) for classification and LMs, squared error for regression."""
    if kind == "regression":
        return (pred.float() - final.float()).pow(2).sum() / max(1, pred[0].numel() if pred.dim() > 1 else 1)
    logp = F.log_softmax(pred.reshape(-1, pred.shape[-1]).float(), dim=-1)
    logq = F.log_softmax(final.reshape(-1, final.shape[-1]).float(), dim=-1)
    kl = (logq.exp() * (logq - logp)).sum(dim=-1)
    if kind == "lm":
        kl = kl * (target.reshape(-1) != IGNORE_INDEX)  # a mask, not an index: no host sync
    return kl.sum()


@torch.no_grad()
def per_sample_errors(pred: Tensor, target: Tensor, kind: str, extras: bool = False) -> dict[str, Tensor]:
    """Per-sample errors of one depth's prediction, each of shape ``(B,)``, float32.

    With ``extras``: for classification and LMs also the softmax's largest probability and entropy
    (for early exit), and for LMs the per-token ``ce_token`` / ``correct_token`` ``(B, T)``. LM
    samples average over their real tokens only.
    """
    if kind == "regression":
        return {"se": (pred.float() - target.float()).pow(2).reshape(pred.shape[0], -1).mean(dim=1)}
    logp = F.log_softmax(pred.float(), dim=-1)
    valid = target != IGNORE_INDEX
    safe = torch.where(valid, target, torch.zeros_like(target))
    ce = -logp.gather(-1, safe[..., None]).squeeze(-1)  # (B,) or (B, T)
    correct = (logp.argmax(dim=-1) == target).float()
    out = {"ce": ce, "correct": correct}
    if kind == "lm":
        w = valid.float()
        n = w.sum(dim=1).clamp_min(1)
        out = {"ce": (ce * w).sum(dim=1) / n, "correct": (correct * w).sum(dim=1) / n}
        if extras:
            out |= {"ce_token": ce * w, "correct_token": correct * w}
    if extras:
        prob = logp.exp()
        out["max_prob"] = prob.max(dim=-1).values
        out["entropy"] = -(prob * logp).sum(dim=-1)
    return out
