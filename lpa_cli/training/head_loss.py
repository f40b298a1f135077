"""Every selected depth's state through the shared head, to one loss per depth.

Two paths give the same values and gradients (tested to float tolerance):

- **stacked**: the states are stacked on the batch axis and read by one head call; one vectorised
  loss. It holds every depth's output at once (D x B x T x V logits for an LM).
- **chunked** (`lpa_cli.training.chunked_head`): the rows of every depth are laid end to end (depth 0's rows, then depth 1's, ...) and
  cut into chunks of at most a budget's worth of head output; a chunk may hold several depths' rows,
  which then go through the head in one call. A custom autograd function, in its forward pass, reads
  one chunk, takes its loss and, at once, the chunk's gradient for the states and the head's parameters
  (the approach of fused linear cross-entropy kernels, for any head). Only one chunk's output ever
  exists. The backward pass scales the stored gradients by the incoming one.

**The budget** (`head_budget`, ``objective.head_chunk_mb``) is the fp32 head output allowed to exist at
once. ``auto`` stacks when every depth's output fits it, and otherwise chunks of half of it (a chunk's
output and its gradient are alive together). Its default depends on the device: on a CPU 64 MB (small
chunks cost little there, and they stay in cache); on a GPU a sixteenth of the free memory, between
256 MB and 4 GiB, because there each chunk is a few kernel launches whatever its size, and the launches,
not the FLOPs, set the time of small chunks (a 32,000-token vocabulary cut into 256-row chunks made
exact LPA 7x a hand-written loop on an H200). No path reads a value back to the host: counts of real
targets stay on the device.

A depth's term is its mean label loss or, with ``align = kl``, for depths below N a mix of it and the
distance to the final depth's detached prediction (KL for distributions, squared error for
regression). Weights and the loss power combine the terms through the objective's ``combine``; the
chunked path asks it for the coefficients dTotal/dL_k (for a nonlinear combination, after a first
forward-only pass that measures every L_k).

Under autocast every path runs the head's matmuls in the autocast dtype and its softmax in fp32 (the
chunked path's precision rules: `lpa_cli.training.chunked_head`; the table: docs/scale.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpa_cli.data.batch import IGNORE_INDEX, Batch
from lpa_cli.training.task_losses import align_sum, loss_denominator, loss_sum

CPU_BUDGET = 64 << 20  # fp32 head output at once on a CPU: stacked up to 64 MB, else 32 MB chunks (0.3's sizes)
GPU_SHARE = 16  # on a GPU: this fraction of the free memory ...
GPU_BUDGET_RANGE = (256 << 20, 4 << 30)  # ... kept within these bounds


def head_budget(mb: int, device: torch.device) -> int:
    """Bytes of fp32 head output the head loss may hold at once: ``mb`` MiB when given, else chosen
    from the device (see the module's docstring)."""
    if mb > 0:
        return mb << 20
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # cached, reusable
        low, high = GPU_BUDGET_RANGE
        return int(min(high, max(low, free // GPU_SHARE)))
    return CPU_BUDGET


def chunk_rows(budget: int, out_per_row: int) -> int:
    """Rows per chunk: half the budget, since a chunk's output and its gradient exist together."""
    return max(1, budget // 2 // max(1, 4 * out_per_row))


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
        preds = _read(head, rows[0] if D == 1 else torch.cat(rows, dim=0), m).unflatten(0, (D, part))  # (D, part, ...)
        if not terms.align:
            return stacked_terms(preds, y if whole else y[:part], terms.kind)
        preds_list = list(preds.unbind(0))
    else:  # sample fraction: the shallow depths share one call on fewer rows, the deepest its own
        part = terms.parts[0]
        m = None if mask is None else mask[:part].repeat(D - 1, *[1] * (mask.dim() - 1))
        shallow = _read(head, torch.cat([h[:part] for h in states[:-1]], dim=0), m).unflatten(0, (D - 1, part))
        deepest = _read(head, states[-1], mask)
        if not terms.align:
            return torch.cat([stacked_terms(shallow, y[:part], terms.kind), stacked_terms(deepest[None], y, terms.kind)])
        preds_list = list(shallow.unbind(0)) + [deepest]
    final = preds_list[-1].detach() if terms.align else None
    losses = []
    for j, pred in enumerate(preds_list):
        part = terms.parts[j]
        target = y[:part]
        fin = final[:part] if final is not None and j < D - 1 else None
        losses.append(_term(pred, target, fin, terms.kind, terms.mix) / loss_denominator(target, terms.kind))
    return torch.stack(losses)


def stacked_terms(preds: Tensor, target: Tensor, kind: str) -> Tensor:
    """(D,) mean label loss of each depth from predictions stacked as (D, rows, ...), in one vectorised
    operation: the per-depth loop's values (`loss_sum` / `loss_denominator`), without its D x 5 small
    kernels and autograd nodes, which on a small model cost more than the head itself."""
    D = preds.shape[0]
    if kind == "regression":
        diff = preds.float() - target.float().reshape(1, *preds.shape[1:])
        return diff.pow(2).reshape(D, -1).mean(1)
    logits = preds.reshape(-1, preds.shape[-1]).float()
    ce = F.cross_entropy(logits, target.reshape(-1).repeat(D), ignore_index=IGNORE_INDEX, reduction="none").view(D, -1)
    return ce.sum(1) / loss_denominator(target, kind)


def output_per_row(head: nn.Module, state: Tensor, mask: Tensor | None, tokenwise: bool) -> int:
    """Elements of head output per row (per token for token-wise heads), from one row."""
    with torch.no_grad():
        h = state[:1].detach()
        out = _read(head, h.flatten(0, 1)[:1] if tokenwise else h, None if tokenwise or mask is None else mask[:1])
    return max(1, math.prod(out.shape[1:]))
