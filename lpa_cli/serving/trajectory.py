"""The trajectory measures a trace streams beside the errors (issue 42), one depth at a time, in torch.

- ``kl_to_final``: KL(p_N || p_k) in nats, the final depth's distribution against depth k's (tuned-lens's
  direction and units); classification and LMs.
- ``alignment``: the cosine between the step the blocks since the previous traced depth made to the
  head's output and the negative loss gradient at that previous depth, the paper's residual target:
  ``y - yhat`` for squared error, ``onehot(y) - softmax(z)`` for a cross-entropy on logits. Logit steps
  are centred over the classes first (a shift of every logit changes no probability; the gradient is
  centred already). A step or a residual of zero length counts as 0; the first traced depth, with no
  step before it, is NaN.
- ``prediction``: the arg-max at each depth (classification, LMs), from which the analysis side reads
  prediction depth.

LM values are per token (``*_token``, 0 at padding, prediction -1 there) and per sample (the mean over
real tokens). `analyzers.trajectory.depth_measures` is the numpy twin the tests compare with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lpa_cli.data.batch import IGNORE_INDEX

def _cosine(dot: Tensor, a_sq: Tensor, b_sq: Tensor) -> Tensor:
    norm = (a_sq * b_sq).sqrt()
    return torch.where(norm > 0, dot / norm.clamp_min(1e-30), torch.zeros_like(dot)).clamp(-1.0, 1.0)


@torch.no_grad()
def depth_measures(pred: Tensor, prev: Tensor | None, final_logp: Tensor | None, target: Tensor, kind: str) -> dict[str, Tensor]:
    """One depth's measures per sample (and per token for LMs), float32 (prediction int32); the names
    are `analyzers.trace.spec.TRAJECTORY`'s.

    ``pred``: this depth's head output (B, ...); ``prev``: the previous traced depth's (None at the
    first); ``final_logp``: the final depth's log-softmax (classification and LMs). Rows may stack
    several depths of one batch (the vectorised tracer's (B * D, ...)); dimension 1 is the token axis
    for LMs."""
    B = pred.shape[0]
    if kind == "regression":
        if prev is None:
            return {"alignment": torch.full((B,), float("nan"))}
        step = (pred.float() - prev.float()).reshape(B, -1)
        residual = (target.float().reshape(B, -1) - prev.float().reshape(B, -1))
        return {"alignment": _cosine((step * residual).sum(1), step.pow(2).sum(1), residual.pow(2).sum(1))}
    logp = F.log_softmax(pred.float(), dim=-1)
    kl = (final_logp.exp() * (final_logp - logp)).sum(-1).clamp_min(0.0)
    out = {"kl_to_final": kl, "prediction": logp.argmax(-1).to(torch.int32)}
    if prev is None:
        out["alignment"] = torch.full(kl.shape, float("nan"))
    else:
        z = prev.float()
        p = F.softmax(z, dim=-1)
        step = pred.float() - z
        step = step - step.mean(-1, keepdim=True)
        valid = target != IGNORE_INDEX
        safe = torch.where(valid, target, torch.zeros_like(target))[..., None]
        # <step, onehot(y) - p> and |onehot(y) - p|^2 without building the one-hot, from the other classes'
        # probabilities q (1 - p_y as their sum: a confident token's 1 - 2 p_y + |p|^2 would cancel in float32)
        q = p.scatter(-1, safe, 0.0)
        rest = q.sum(-1)
        dot = step.gather(-1, safe)[..., 0] * rest - (step * q).sum(-1)
        r_sq = rest.pow(2) + q.pow(2).sum(-1)
        out["alignment"] = _cosine(dot, step.pow(2).sum(-1), r_sq)
    if kind != "lm":
        return out
    valid = target != IGNORE_INDEX
    w = valid.float()
    n = w.sum(1).clamp_min(1)
    tokens = {"kl_to_final_token": out["kl_to_final"] * w, "alignment_token": torch.where(valid, out["alignment"], torch.zeros_like(w)),
              "prediction_token": torch.where(valid, out["prediction"], torch.full_like(out["prediction"], -1))}
    if prev is None:
        tokens["alignment_token"] = torch.full_like(w, float("nan"))
    return tokens | {"kl_to_final": (out["kl_to_final"] * w).sum(1) / n, "alignment": (tokens["alignment_token"] * w).sum(1) / n}


__all__ = ["depth_measures"]
