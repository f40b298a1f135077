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

`DepthReader` computes a depth's errors (what `per_sample_errors` gives) and measures together, so the
log-softmax, the softmax and the arg-max are made once; with an LM vocabulary the cost is in writing
(batch, tokens, vocabulary) tensors, so products are reduced through one reused buffer and the
previous depth's softmax becomes the next depth's residual in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lpa_cli.data.batch import IGNORE_INDEX


def _cosine(dot: Tensor, a_sq: Tensor, b_sq: Tensor) -> Tensor:
    """dot / (|a| |b|), 0 where either has zero length (0 x inf is NaN, set to 0), in few ops (small heads
    are bound by op count)."""
    return torch.nan_to_num(dot * torch.rsqrt(a_sq * b_sq), nan=0.0, posinf=0.0, neginf=0.0).clamp_(-1.0, 1.0)


def _dot(a: Tensor, b: Tensor, scratch: Tensor) -> Tensor:
    """Sum over the last axis of a * b, the product written into ``scratch`` (no new vocabulary-sized tensor)."""
    return torch.mul(a, b, out=scratch).sum(-1)


@dataclass
class _Residual:
    """What the next depth needs of this one: its logits and its residual target onehot(y) - p, held as
    q = p with the target's entry zeroed (1 - p_y is q's sum: a confident token's 1 - p_y would cancel in
    float32 if taken from p_y)."""

    z: Tensor
    q: Tensor
    rest: Tensor  # 1 - p_y
    r_sq: Tensor  # |onehot(y) - p|^2


class DepthReader:
    """Errors and measures of consecutive depths of one batch (classification, LMs): call it with each
    traced depth's logits in order; ``final_logits``: the model's last depth's."""

    def __init__(self, final_logits: Tensor, target: Tensor, kind: str) -> None:
        self.kind, self.target = kind, target
        self.valid = target != IGNORE_INDEX
        self.safe = torch.where(self.valid, target, torch.zeros_like(target))[..., None]
        logq = F.log_softmax(final_logits.float(), dim=-1)
        self.final_p = logq.exp()
        self.scratch = torch.empty_like(self.final_p)
        self.scratch2: Tensor | None = None  # for the step's product with the residual, made on the first step
        self.neg_entropy = _dot(self.final_p, logq, self.scratch)  # sum p_N log p_N: KL's constant part
        self.prev: _Residual | None = None

    def _residual(self, z: Tensor, p: Tensor) -> _Residual:
        q = p.scatter_(-1, self.safe, 0.0)  # in place: p is not needed after this
        rest = q.sum(-1)
        return _Residual(z, q, rest, rest * rest + _dot(q, q, self.scratch))

    @torch.no_grad()
    def __call__(self, logits: Tensor, prev_logits: Tensor | None = None) -> dict[str, Tensor]:
        """This depth's errors and measures; ``prev_logits``: the previous depth's, when the reader was not
        called with them (the vectorised tracer's rows of several depths)."""
        if prev_logits is not None:
            z_prev = prev_logits.float()
            self.prev = self._residual(z_prev, F.softmax(z_prev, dim=-1))
        z = logits.float()
        logp = F.log_softmax(z, dim=-1)
        p = logp.exp()
        pred = logp.argmax(dim=-1)
        out = {"ce": -logp.gather(-1, self.safe)[..., 0], "correct": (pred == self.target).float(), "max_prob": p.amax(dim=-1),
               "entropy": -_dot(p, logp, self.scratch), "prediction": pred.to(torch.int32),
               "kl_to_final": (self.neg_entropy - _dot(self.final_p, logp, self.scratch)).clamp_min(0.0)}
        del logp
        first = self.prev is None
        if first:
            out["alignment"] = torch.full(out["ce"].shape, float("nan"), device=z.device)
        else:
            step = torch.sub(z, self.prev.z, out=self.scratch)
            if self.scratch2 is None:
                self.scratch2 = torch.empty_like(self.scratch)
            dot = step.gather(-1, self.safe)[..., 0] * self.prev.rest - _dot(step, self.prev.q, self.scratch2)  # the residual sums to 0
            step_sq = step.sub_(step.mean(-1, keepdim=True)).square_().sum(-1)  # |step - mean|^2 from the centred step, in place
            out["alignment"] = _cosine(dot, step_sq, self.prev.r_sq)
        self.prev = self._residual(z, p)
        return out if self.kind != "lm" else self._per_token(out, first)

    def _per_token(self, out: dict[str, Tensor], first: bool) -> dict[str, Tensor]:
        """An LM's per-sample values (means over real tokens) beside its per-token ones (0 or -1 at padding)."""
        valid = self.valid
        w = valid.float()
        n = w.sum(1).clamp_min(1)
        align = out["alignment"] if first else torch.where(valid, out["alignment"], torch.zeros_like(w))
        return {"ce": (out["ce"] * w).sum(1) / n, "correct": (out["correct"] * w).sum(1) / n, "ce_token": out["ce"] * w,
                "correct_token": out["correct"] * w, "max_prob": out["max_prob"], "entropy": out["entropy"],
                "kl_to_final_token": out["kl_to_final"] * w, "alignment_token": align,
                "prediction_token": torch.where(valid, out["prediction"], torch.full_like(out["prediction"], -1)),
                "kl_to_final": (out["kl_to_final"] * w).sum(1) / n, "alignment": (align * w).sum(1) / n}


MEASURES = {"regression": ("alignment",), "classification": ("kl_to_final", "alignment", "prediction"),
            "lm": ("kl_to_final", "alignment", "kl_to_final_token", "alignment_token", "prediction_token")}


@torch.no_grad()
def regression_alignment(pred: Tensor, prev: Tensor | None, target: Tensor) -> Tensor:
    """(B,) the cosine of the step ``pred - prev`` with the residual ``target - prev`` (NaN without ``prev``)."""
    if prev is None:
        return torch.full((pred.shape[0],), float("nan"), device=pred.device)
    return regression_alignments(torch.stack([prev, pred], dim=1), target)[:, 1]


@torch.no_grad()
def regression_alignments(stacked: Tensor, target: Tensor) -> Tensor:
    """(B, D): every traced depth's alignment from (B, D, *out) predictions at once (NaN at the first)."""
    B, D = stacked.shape[:2]
    s = stacked.float().reshape(B, D, -1)
    step, residual = s[:, 1:] - s[:, :-1], target.float().reshape(B, 1, -1) - s[:, :-1]

    def total(t: Tensor) -> Tensor:  # torch's CPU sum over a trailing axis of 1 can take milliseconds: index it
        return t[..., 0] if t.shape[-1] == 1 else t.sum(-1)

    cos = _cosine(total(step * residual), total(step.square()), total(residual.square()))
    return torch.cat([torch.full((B, 1), float("nan"), device=cos.device), cos], dim=1)


@torch.no_grad()
def depth_measures(pred: Tensor, prev: Tensor | None, final_logp: Tensor | None, target: Tensor, kind: str) -> dict[str, Tensor]:
    """One depth's measures alone (the names of `analyzers.trace.spec.TRAJECTORY`): ``pred`` this depth's
    head output, ``prev`` the previous traced depth's (None at the first), ``final_logp`` the final
    depth's log-softmax (classification and LMs)."""
    if kind == "regression":
        return {"alignment": regression_alignment(pred, prev, target)}
    out = DepthReader(final_logp, target, kind)(pred, prev_logits=prev)
    return {name: out[name] for name in MEASURES[kind]}


__all__ = ["DepthReader", "MEASURES", "depth_measures", "regression_alignment", "regression_alignments"]
