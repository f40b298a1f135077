"""Every selected depth's state through the shared head, to one loss per depth.

Two paths give the same values and gradients (tested to float tolerance):

- **stacked**: the states are stacked on the batch axis and read by one head call; one vectorised
  loss. Fast for small heads, but it holds every depth's output (D x B x T x V logits for an LM).
- **chunked**: a custom autograd function that, in its forward pass, runs the head over one chunk of
  rows at a time, takes the loss and, at once, the chunk's gradient for the states and the head's
  parameters (the approach of fused linear cross-entropy kernels, for any head). Only one chunk's
  output ever exists. The backward pass scales the stored gradients by the incoming one.

``auto`` picks chunked when the stacked output would exceed `AUTO_CHUNK_BYTES`.

A depth's term is its mean label loss or, with ``align = kl``, for depths below N a mix of it and the
distance to the final depth's detached prediction (KL for distributions, squared error for
regression). Weights and the loss power combine the terms through the objective's ``combine``; the
chunked path asks it for the coefficients dTotal/dL_k (for a nonlinear combination, after a first
forward-only pass that measures every L_k).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpa_cli.data.batch import IGNORE_INDEX, Batch
from lpa_cli.training.task_losses import align_sum, loss_count, loss_sum

AUTO_CHUNK_BYTES = 64 << 20  # stacked outputs above this take the chunked path
CHUNK_BYTES = 32 << 20  # about this much head output per chunk


@dataclass
class Terms:
    """What each depth's term is made of."""

    kind: str
    parts: list[int]  # rows (samples) each depth's term uses (sample fraction: fewer for shallow depths)
    align: bool = False  # depths below the last fit the final prediction too
    mix: float = 1.0  # weight of the alignment term


def _read(head: nn.Module, h: Tensor, mask: Tensor | None) -> Tensor:
    return head(h) if mask is None else head(h, attention_mask=mask)


def _term(pred: Tensor, target: Tensor, final: Tensor | None, kind: str, mix: float) -> Tensor:
    """Sum of one depth's per-row losses on a set of rows (divide by the row count for the mean)."""
    if final is None:
        return loss_sum(pred, target, kind)
    label = loss_sum(pred, target, kind) if mix < 1 else None
    align = align_sum(pred, final, kind, target)
    return align if label is None else (1 - mix) * label + mix * align


def stacked_losses(head: nn.Module, states: Sequence[Tensor], batch: Batch, terms: Terms) -> Tensor:
    """(D,) mean loss of each depth; one head call over all states stacked on the batch axis."""
    D = len(states)
    y, mask = batch.y, batch.mask
    if len({tuple(h.shape[1:]) for h in states}) > 1:  # depths of different shapes (stages): one call each
        preds_list = [_read(head, h[:part], None if mask is None else mask[:part]) for h, part in zip(states, terms.parts)]
    elif len(set(terms.parts)) == 1:  # every depth on the same rows: one call, one vectorised loss
        part = terms.parts[0]
        whole = part == len(y)  # no slices then: each is an autograd node, and on a small model they add up
        rows = states if whole else [h[:part] for h in states]
        m = None if mask is None else (mask if whole else mask[:part]).repeat(D, *[1] * (mask.dim() - 1))
        preds = _read(head, torch.cat(rows, dim=0), m).unflatten(0, (D, part))  # (D, part, ...)
        if not terms.align:
            return stacked_terms(preds, y if whole else y[:part], terms.kind)
        preds_list = list(preds.unbind(0))
    else:  # sample fraction: the shallow depths share one call on fewer rows, the deepest its own
        part = terms.parts[0]
        m = None if mask is None else mask[:part].repeat(D - 1, *[1] * (mask.dim() - 1))
        shallow = _read(head, torch.cat([h[:part] for h in states[:-1]], dim=0), m).unflatten(0, (D - 1, part))
        preds_list = list(shallow.unbind(0)) + [_read(head, states[-1], mask)]
    final = preds_list[-1].detach() if terms.align else None
    losses = []
    for j, pred in enumerate(preds_list):
        part = terms.parts[j]
        target = y[:part]
        fin = final[:part] if final is not None and j < D - 1 else None
        losses.append(_term(pred, target, fin, terms.kind, terms.mix) / max(1, loss_count(target, terms.kind)))
    return torch.stack(losses)


def stacked_terms(preds: Tensor, target: Tensor, kind: str) -> Tensor:
    """(D,) mean label loss of each depth from predictions stacked as (D, rows, ...), in one vectorised
    operation: the per-depth loop's values (`loss_sum` / `loss_count`), without its D x 5 small
    kernels and autograd nodes, which on a small model cost more than the head itself."""
    D = preds.shape[0]
    if kind == "regression":
        diff = preds.float() - target.float().reshape(1, *preds.shape[1:])
        return diff.pow(2).reshape(D, -1).mean(1)
    logits = preds.reshape(-1, preds.shape[-1]).float()
    ce = F.cross_entropy(logits, target.reshape(-1).repeat(D), ignore_index=IGNORE_INDEX, reduction="none").view(D, -1)
    return ce.sum(1) / max(1, loss_count(target, kind))


class _Chunked(torch.autograd.Function):
    """Forward: loss value and, already, its gradient; backward: the stored gradient, scaled."""

    @staticmethod
    def forward(ctx, job: _ChunkJob, *tensors: Tensor):
        total, losses, grads = job.run(tensors)
        ctx.save_for_backward(*grads)
        ctx.mark_non_differentiable(losses)
        return total, losses

    @staticmethod
    def backward(ctx, grad_total: Tensor, _grad_losses: Tensor):
        return (None, *[None if g is None else g * grad_total for g in ctx.saved_tensors])


@dataclass
class _ChunkJob:
    head: nn.Module
    batch: Batch
    terms: Terms
    combine: Callable[[Tensor], Tensor]  # (D,) per-depth losses -> the scalar to minimise
    linear_weights: Tensor | None  # the combination's constant coefficients, when it is linear
    tokenwise: bool
    n_states: int
    chunk_rows: int

    def _rows(self, h: Tensor) -> Tensor:
        return h.flatten(0, 1) if self.tokenwise else h  # an LM head reads tokens independently

    def _targets(self) -> Tensor:
        return self.batch.y.flatten(0, 1) if self.tokenwise else self.batch.y

    def _limits(self) -> list[int]:
        T = self.batch.y.shape[1] if self.tokenwise else 1
        return [p * T for p in self.terms.parts]

    def _chunks(self, limit: int):
        for start in range(0, limit, self.chunk_rows):
            yield slice(start, min(limit, start + self.chunk_rows))

    def run(self, tensors: Sequence[Tensor]):
        states, params = tensors[: self.n_states], list(tensors[self.n_states :])
        terms, kind = self.terms, self.terms.kind
        flat = [self._rows(h) for h in states]
        y = self._targets()
        mask = None if self.tokenwise else self.batch.mask
        limits = self._limits()
        D = len(flat)
        counts = [max(1, loss_count(y[:lim], kind)) for lim in limits]
        with torch.no_grad():
            if self.linear_weights is not None:
                coeff = self.linear_weights
            else:  # a nonlinear combination: measure every L_k first, then differentiate the combination
                measured = self._forward_only(flat, y, mask, limits, counts)
                probe = measured.clone().requires_grad_(True)
                with torch.enable_grad():
                    (coeff,) = torch.autograd.grad(self.combine(probe), probe)
        grad_states = [torch.zeros_like(h) if h.requires_grad else None for h in flat]
        grad_params = [torch.zeros_like(p) for p in params]
        sums = torch.zeros(D, dtype=torch.float64, device=y.device)
        with torch.enable_grad():
            for rows in self._chunks(max(limits)):
                final = None
                if terms.align:
                    with torch.no_grad():
                        final = _read(self.head, flat[-1][rows], None if mask is None else mask[rows]).detach()
                for k in range(D):
                    stop = min(rows.stop, limits[k])
                    if stop <= rows.start:
                        continue
                    r = slice(rows.start, stop)
                    h = flat[k][r].detach().requires_grad_(grad_states[k] is not None)
                    pred = _read(self.head, h, None if mask is None else mask[r])
                    fin = final[: stop - rows.start] if final is not None and k < D - 1 else None
                    term = _term(pred, y[r], fin, kind, terms.mix) / counts[k]
                    wanted = ([h] if grad_states[k] is not None else []) + params
                    if wanted:
                        grads = torch.autograd.grad(term * coeff[k].to(term.dtype), wanted, allow_unused=True)
                        if grad_states[k] is not None:
                            grad_states[k][r] += grads[0]
                            grads = grads[1:]
                        for acc, g in zip(grad_params, grads):
                            if g is not None:
                                acc += g
                    sums[k] += term.detach().double()
        losses = sums.to(flat[-1].dtype if flat[-1].is_floating_point() else torch.float32).float()
        with torch.no_grad():
            total = self.combine(losses)
        grads_out = [None if g is None else g.view_as(h) for g, h in zip(grad_states, states)] + grad_params
        return total, losses, grads_out

    @torch.no_grad()
    def _forward_only(self, flat, y, mask, limits, counts) -> Tensor:
        sums = torch.zeros(len(flat), dtype=torch.float64, device=y.device)
        for rows in self._chunks(max(limits)):
            final = None
            if self.terms.align:
                final = _read(self.head, flat[-1][rows], None if mask is None else mask[rows])
            for k in range(len(flat)):
                stop = min(rows.stop, limits[k])
                if stop <= rows.start:
                    continue
                r = slice(rows.start, stop)
                pred = _read(self.head, flat[k][r], None if mask is None else mask[r])
                fin = final[: stop - rows.start] if final is not None and k < len(flat) - 1 else None
                sums[k] += (_term(pred, y[r], fin, self.terms.kind, self.terms.mix) / counts[k]).double()
        return sums.float()


def chunked_loss(head: nn.Module, states: Sequence[Tensor], batch: Batch, terms: Terms, combine: Callable[[Tensor], Tensor],
                 linear_weights: Tensor | None, tokenwise: bool, out_per_row: int,
                 params: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """(total, per-depth losses) without ever holding more than one chunk of head output. ``params``:
    the tensors the head reads that get gradients (default: its trainable parameters)."""
    params = [p for p in head.parameters() if p.requires_grad] if params is None else params
    return _Chunked.apply(_job(head, batch, terms, combine, linear_weights, tokenwise, len(states), out_per_row), *states, *params)


def chunked_measure(head: nn.Module, states: Sequence[Tensor], batch: Batch, terms: Terms, tokenwise: bool, out_per_row: int) -> Tensor:
    """(D,) per-depth losses, forward only, one chunk of head output at a time."""
    job = _job(head, batch, terms, lambda L: L.sum(), None, tokenwise, len(states), out_per_row)
    flat = [job._rows(h.detach()) for h in states]
    y = job._targets()
    limits = job._limits()
    counts = [max(1, loss_count(y[:lim], terms.kind)) for lim in limits]
    return job._forward_only(flat, y, None if tokenwise else batch.mask, limits, counts)


def _job(head, batch, terms, combine, linear_weights, tokenwise, n_states, out_per_row) -> _ChunkJob:
    chunk_rows = max(1, CHUNK_BYTES // max(1, 4 * out_per_row))
    return _ChunkJob(head, batch, terms, combine, linear_weights, tokenwise, n_states, chunk_rows)


def output_per_row(head: nn.Module, state: Tensor, mask: Tensor | None, tokenwise: bool) -> int:
    """Elements of head output per row (per token for token-wise heads), from one row."""
    with torch.no_grad():
        h = state[:1].detach()
        out = _read(head, h.flatten(0, 1)[:1] if tokenwise else h, None if tokenwise or mask is None else mask[:1])
    return max(1, math.prod(out.shape[1:]))
