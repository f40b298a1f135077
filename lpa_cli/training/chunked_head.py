"""The chunked head loss: every selected depth's rows laid end to end and read in chunks of at most a
budget's worth of head output (`lpa_cli.training.head_loss` says what the budget is), one head call a
chunk even when it holds several depths. A custom autograd function computes each chunk's loss and, at
once, its gradients, so only one chunk of logits ever exists; for heads that are features plus one
linear map the chunk is a fused linear cross-entropy (`_Layout._fused_chunk`).

**Precision.** Under autocast (or with a head in bf16/fp16) every head matmul runs in the low-precision
dtype, as a hand-written loss under autocast does: the logits, the features' gradient and the weight's
gradient. Softmax and cross-entropy run in fp32, and gradients are summed over chunks in fp32, then
returned in each input's dtype. The gradients are computed inside the forward pass, before a loss
scaler's factor reaches them, so in fp16 the per-row weights (about 1 / tokens) would underflow: there
the rows' weights are first multiplied by a power of two that brings the largest to 1 and the result
divided by it again in fp32 (exact), which keeps fp16 the range a loss scaler gives the stacked path."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lpa_core.errors import UsageError
from lpa_cli.data.batch import IGNORE_INDEX, Batch
from lpa_cli.training.head_loss import Terms, _read, chunk_rows
from lpa_cli.training.task_losses import align_rows, loss_rows

CACHE_ENTRIES = 64  # index tensors kept per objective (a few per batch shape)


class _Chunked(torch.autograd.Function):
    """Forward: the weighted loss and, already, its gradient; backward: the stored gradient, scaled."""

    @staticmethod
    def forward(ctx, job: _Layout, *tensors: Tensor):
        total, sums, grads = job.run(tensors)
        ctx.save_for_backward(*grads)
        ctx.dtypes = [t.dtype for t in tensors]
        ctx.mark_non_differentiable(sums)
        return total, sums

    @staticmethod
    def backward(ctx, grad_total: Tensor, _grad_sums: Tensor):
        # stored gradients may be fp32 for a low-precision input: scaled first (a loss scaler's factor
        # arrives here), then cast, so nothing small underflows on the way
        return (None, *[None if g is None else (g * grad_total).to(dt) for g, dt in zip(ctx.saved_tensors, ctx.dtypes)])


@dataclass
class _Layout:
    """One group of depths whose rows are laid end to end (``rows``: the concatenated states, an input of
    the autograd function), with what every row needs: its target, its depth, its weight."""

    head: nn.Module
    terms: Terms
    depths: list[int]  # indices into the selected depths (0..D-1) this group holds, in order
    limits: list[int]  # rows each of them contributes
    y: Tensor  # (R, ...) every row's target
    mask: Tensor | None  # (R, T) attention-mask rows, for heads that read whole samples
    final_at: Tensor | None  # (R,) with alignment: the row of the final depth at each row's position
    depth_of: Tensor  # (R,) each row's position in ``depths``
    align_w: Tensor | None  # (R,) with alignment: each row's mix (0 on the final depth's own rows)
    last: bool  # whether the layout holds the final depth (and so is what alignment compares with)
    rows_per_chunk: int

    def chunks(self):
        total = sum(self.limits)
        for start in range(0, total, self.rows_per_chunk):
            yield slice(start, min(total, start + self.rows_per_chunk))

    def row_terms(self, pred: Tensor, rows: slice, final: Tensor | None) -> Tensor:
        """(rows,) each row's term: its label loss, or with alignment its mix with the distance to the
        final depth's prediction."""
        kind, y = self.terms.kind, self.y[rows]
        if final is None:
            return loss_rows(pred, y, kind)
        align = align_rows(pred, final, kind, y)
        if self.terms.mix == 1.0 and not self.last:
            return align
        label = loss_rows(pred, y, kind)
        return label + self.align_w[rows] * (align - label)

    def final(self, rows_t: Tensor, rows: slice) -> Tensor | None:
        """The final depth's detached prediction at the chunk's positions (alignment only)."""
        if self.final_at is None:
            return None
        with torch.no_grad():
            at = self.final_at[rows]
            return _read(self.head, rows_t.index_select(0, at), None if self.mask is None else self.mask[rows]).detach()

    def run(self, tensors: Sequence[Tensor]):
        """(weighted total, per-depth sums of row terms, gradients for every input)."""
        rows_t, scale, params = tensors[0], tensors[1], list(tensors[2:])
        row_scale = scale.index_select(0, self.depth_of)  # (R,) d total / d row term
        need_rows = rows_t.requires_grad
        values, grads_rows, grads_params = [], [], [None] * len(params)
        plain = self.terms.kind != "regression" and self.final_at is None and self.mask is None and self.y.dim() == 1
        fused = linear_map(self.head) if plain else None  # rows of one token or sample each, cross-entropy, no alignment
        lowp = compute_dtype(rows_t, fused[0] if fused is not None else None)
        guard = fp16_guard(row_scale) if lowp == torch.float16 else None  # (s, 1/s) on the device, no host read
        seed = row_scale if guard is None else row_scale * guard[0]  # the weights the gradients are taken with
        scratch: dict[str, Tensor] = {}  # the fused path's logits buffer, one for every chunk of this call
        if fused is not None:  # what every row needs, made once per call rather than once per chunk
            valid = self.y != IGNORE_INDEX
            weight_col = (seed * valid).unsqueeze(1)  # d total / d row, 0 on padding
            scratch |= {"valid": valid, "target": self.y.clamp_min(0).unsqueeze(1), "w": weight_col, "-w": -weight_col}
            if lowp is not None:  # the weight in the matmul dtype, cast once per call (autocast casts it once per forward too)
                scratch["weight"] = fused[0].detach().to(lowp)
        with torch.enable_grad():
            for rows in self.chunks():
                h = rows_t[rows].detach().requires_grad_(need_rows)
                if fused is not None:
                    per_row, grads = self._fused_chunk(h, rows, fused, params, need_rows, grads_params, scratch, lowp)
                else:
                    pred = _read(self.head, h, None if self.mask is None else self.mask[rows])
                    per_row = self.row_terms(pred, rows, self.final(rows_t, rows))
                    wanted = ([h] if need_rows else []) + params
                    grads = list(torch.autograd.grad((per_row * seed[rows]).sum(), wanted, allow_unused=True)) if wanted else []
                if need_rows:
                    grads_rows.append(grads.pop(0))
                for i, g in enumerate(grads):
                    if g is not None:  # summed over chunks in fp32 (a no-op cast for fp32 parameters)
                        grads_params[i] = g.float() if grads_params[i] is None else grads_params[i].add_(g)
                values.append(per_row.detach().float())
        per_row = values[0] if len(values) == 1 else torch.cat(values)
        if fused is not None:
            per_row = per_row * scratch["valid"]  # padding's rows count nowhere
        sums = segment_sums(per_row, self.limits)
        total = (per_row * row_scale).sum()
        grad_rows = (grads_rows[0] if len(grads_rows) == 1 else torch.cat(grads_rows)) if need_rows else None
        grads = [grad_rows, None, *grads_params]
        if guard is not None:  # back to the true scale, in fp32 (the backward casts after the loss scaler's factor)
            grads = [None if g is None else g.float() * guard[1] for g in grads]
        return total, sums, grads

    def _fused_chunk(self, h: Tensor, rows: slice, fused: tuple, params: list[Tensor], need_rows: bool,
                     grads_params: list[Tensor | None], scratch: dict[str, Tensor], lowp: torch.dtype | None):
        """(per-row cross-entropy, gradients for [h] + params) of one chunk of a head that is features
        followed by one linear map, with the gradient of the logits written by hand, in place: softmax
        minus the target's one-hot, times the row's weight (fused linear cross-entropy). The logits live
        in one buffer reused by every chunk (no fresh allocation per chunk: on a CPU freed blocks of
        varying sizes fragment the heap), the weight's gradient is accumulated into its sum with one
        matmul, and autograd only differentiates the features: about 16 kernels a chunk besides them.
        With ``lowp`` (autocast or a low-precision head) the three matmuls run in that dtype, the softmax
        and every sum over chunks in fp32 (see the module)."""
        weight, bias, shift = fused
        feats = self.head.features(h)  # (n, C), with its graph back to h and the features' parameters
        f = feats.detach()
        with torch.no_grad(), torch.autocast(f.device.type, enabled=False):  # dtypes chosen here, not by autocast
            if "z" not in scratch:
                scratch["z"] = torch.empty(self.rows_per_chunk, weight.shape[0], dtype=torch.float32, device=f.device)
            z = scratch["z"][: h.shape[0]]  # (n, V)
            if lowp is None:
                torch.mm(f, weight.t(), out=z)
            else:  # logits rounded to the matmul dtype, as a low-precision linear layer's are; the softmax in fp32
                f = f.to(lowp)
                z.copy_(torch.mm(f, scratch["weight"].t()))
            if bias is not None:
                z.add_(bias)
            if shift is not None:
                z.add_(shift)
            target, w = scratch["target"][rows], scratch["w"][rows]
            picked = z.gather(1, target)
            top = z.amax(dim=-1, keepdim=True)  # logsumexp by hand, in place: its own would allocate another (n, V)
            total = z.sub_(top).exp_().sum(dim=-1, keepdim=True)
            per_row = (top + total.log() - picked).squeeze(1)  # cross-entropy (padding rows: masked by the caller)
            z.mul_(w / total)  # softmax x weight ...
            z.scatter_add_(1, target, scratch["-w"][rows])  # ... minus the one-hot: the logits' gradient
            if lowp is None:
                grad_f = (z @ weight).to(feats.dtype)
            else:
                zl = z.to(lowp)
                grad_f = torch.mm(zl, scratch["weight"]).to(feats.dtype)
            for i, p in enumerate(params):
                if p is weight and p.requires_grad:  # summed over chunks in fp32
                    if lowp is None:  # accumulated in place: no (V, C) temporary per chunk
                        grads_params[i] = z.t() @ f if grads_params[i] is None else grads_params[i].addmm_(z.t(), f)
                    else:
                        g = torch.mm(zl.t(), f)
                        grads_params[i] = g.float() if grads_params[i] is None else grads_params[i].add_(g)
                elif p is bias and p.requires_grad:
                    grads_params[i] = z.sum(0) if grads_params[i] is None else grads_params[i].add_(z.sum(0))
        own = [p for p in params if p is not weight and p is not bias]
        inner = list(torch.autograd.grad(feats, ([h] if need_rows else []) + own, grad_f, allow_unused=True)) if (need_rows or own) else []
        grad_h = inner.pop(0) if need_rows else None
        by_id = dict(zip(map(id, own), inner))
        return per_row, ([grad_h] if need_rows else []) + [by_id.get(id(p)) for p in params]

    @torch.no_grad()
    def measure(self, rows_t: Tensor) -> Tensor:
        """Per-depth sums of row terms, forward only."""
        values = []
        for rows in self.chunks():
            pred = _read(self.head, rows_t[rows], None if self.mask is None else self.mask[rows])
            values.append(self.row_terms(pred, rows, self.final(rows_t, rows)).float())
        return segment_sums(values[0] if len(values) == 1 else torch.cat(values), self.limits)


def compute_dtype(rows: Tensor, weight: Tensor | None) -> torch.dtype | None:
    """The dtype the head's matmuls run in: autocast's when it is on, a low-precision head weight's (or
    states') otherwise, None for fp32."""
    device = rows.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    for t in (weight, rows):
        if t is not None and t.dtype in (torch.float16, torch.bfloat16):
            return t.dtype
    return None


def fp16_guard(row_scale: Tensor) -> tuple[Tensor, Tensor]:
    """(s, 1/s): the power of two that brings the largest row weight to 1, and its inverse, as device
    scalars (fp16's smallest number is 6e-8; a mean over 10^5 tokens weighs each row 1e-5)."""
    s = torch.exp2(-torch.floor(torch.log2(row_scale.abs().amax().float().clamp_min(1e-30))))
    return s, 1.0 / s


def linear_map(head: nn.Module) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
    """(weight, bias, shift) when the head is ``features(h)`` followed by one linear map to the logits
    (lpa's language-model heads, and the sampled loss's candidate head), else None (the generic path)."""
    if hasattr(head, "logit_map"):
        return head.logit_map()
    proj = getattr(head, "proj", None)
    if callable(getattr(head, "features", None)) and isinstance(proj, nn.Linear):
        return proj.weight, proj.bias, None
    return None


def segment_sums(values: Tensor, limits: list[int]) -> Tensor:
    """(len(limits),) sums of consecutive segments of ``values`` of the given lengths, a reshape per run
    of equal lengths (deterministic, unlike an atomic index_add, and no host sync)."""
    out, start, i = [], 0, 0
    while i < len(limits):
        j = i
        while j < len(limits) and limits[j] == limits[i]:
            j += 1
        n = (j - i) * limits[i]
        out.append(values[start : start + n].view(j - i, limits[i]).sum(1))
        start, i = start + n, j
    return out[0] if len(out) == 1 else torch.cat(out)


class ChunkedHeadLoss:
    """Every selected depth's rows laid end to end and read in budget-sized chunks (see the module).

    ``cache``: a dict the caller keeps between steps, for the small index tensors a layout needs (made
    once per shape: building them from host lists on every step would copy them to the device, and a
    plain host-to-device copy waits for the device)."""

    def __init__(self, head: nn.Module, states: Sequence[Tensor], batch: Batch, terms: Terms, tokenwise: bool, budget: int,
                 out_per_row: int, cache: dict | None = None) -> None:
        self.head, self.terms, self.tokenwise = head, terms, tokenwise
        self.cache = {} if cache is None else cache
        T = batch.y.shape[1] if tokenwise else 1
        self.limits = [p * T for p in terms.parts]  # rows of each depth, in the flattened unit
        self.flat = [h if lim == len(h) else h[:lim] for h, lim in zip(map(self._rows, states), self.limits)]
        y = self._rows(batch.y)
        self.device = y.device
        self.counts = self._counts(y)
        per_chunk = chunk_rows(budget, out_per_row)
        self.layouts = self._layouts(y, None if tokenwise else batch.mask, per_chunk)

    def _rows(self, h: Tensor) -> Tensor:
        return h.flatten(0, 1) if self.tokenwise else h  # an LM head reads tokens independently

    def _cached(self, key: tuple, make: Callable[[], Tensor]) -> Tensor:
        key = key + (self.device,)
        if key not in self.cache:
            if len(self.cache) >= CACHE_ENTRIES:  # batches of ever-new shapes (padding to each batch's longest): start over
                self.cache.clear()
            self.cache[key] = make().to(self.device)
        return self.cache[key]

    def _counts(self, y: Tensor) -> Tensor:
        """(D,) float terms of each depth's mean (an LM's real tokens, counted on the device)."""
        if self.terms.kind != "lm":
            return self._cached(("counts", tuple(self.limits)), lambda: torch.tensor(self.limits, dtype=torch.float32).clamp_min(1))
        valid = y != IGNORE_INDEX
        runs, i = [], 0
        while i < len(self.limits):
            j = i
            while j < len(self.limits) and self.limits[j] == self.limits[i]:
                j += 1
            lim = self.limits[i]
            runs.append((valid if lim == len(y) else valid[:lim]).sum().float().clamp_min(1).expand(j - i))
            i = j
        return runs[0] if len(runs) == 1 else torch.cat(runs)

    def _layouts(self, y: Tensor, mask: Tensor | None, per_chunk: int) -> list[_Layout]:
        """Consecutive depths whose rows have one shape share a layout (a staged network's do not)."""
        D, out, k = len(self.flat), [], 0
        while k < D:
            g = [k]
            while g[-1] + 1 < D and self.flat[g[-1] + 1].shape[1:] == self.flat[k].shape[1:]:
                g.append(g[-1] + 1)
            lims = [self.limits[i] for i in g]
            if len(g) == 1:
                ys = y if lims[0] == len(y) else y[: lims[0]]
            elif len(set(lims)) == 1 and lims[0] == len(y):
                ys = y.repeat(len(g), *[1] * (y.dim() - 1))
            else:
                ys = torch.cat([y[:lim] for lim in lims])
            ms = None if mask is None else torch.cat([mask[:lim] for lim in lims])
            last = g[-1] == D - 1
            final_at = None
            if self.terms.align and D > 1:
                if not last or self.flat[-1].shape[1:] != self.flat[g[0]].shape[1:]:
                    raise UsageError("--align kl needs every selected depth's states in one shape (this model has stages)")
                offset = sum(lims[:-1])  # the final depth's rows start here in the layout
                final_at = self._cached(("final_at", tuple(lims)), lambda: offset + torch.cat([torch.arange(lim) for lim in lims]))
            depth_of = self._cached(("depth_of", tuple(lims)), lambda: torch.repeat_interleave(torch.arange(len(lims)), torch.tensor(lims)))
            align_w = None
            if self.terms.align and D > 1:
                mixes = torch.tensor([0.0 if d == D - 1 else self.terms.mix for d in g])
                align_w = self._cached(("align_w", tuple(lims), tuple(mixes.tolist())), lambda: mixes.repeat_interleave(torch.tensor(lims)))
            out.append(_Layout(self.head, self.terms, g, lims, ys, ms, final_at, depth_of, align_w, last, per_chunk))
            k = g[-1] + 1
        return out

    def _inputs(self, layout: _Layout) -> Tensor:
        g = layout.depths
        return self.flat[g[0]] if len(g) == 1 else torch.cat([self.flat[i] for i in g])

    def measure(self) -> Tensor:
        """(D,) per-depth mean losses, forward only."""
        sums = [layout.measure(self._inputs(layout).detach()) for layout in self.layouts]
        return (sums[0] if len(sums) == 1 else torch.cat(sums)) / self.counts

    def loss(self, coeff: Tensor, params: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(sum_k coeff_k L_k with its gradient, (D,) detached L_k)."""
        scale = coeff.float() / self.counts
        totals, sums = [], []
        for layout in self.layouts:
            part = scale if len(self.layouts) == 1 else scale[layout.depths[0] : layout.depths[-1] + 1]
            total, s = _Chunked.apply(layout, self._inputs(layout), part, *params)
            totals.append(total)
            sums.append(s)
        total = totals[0] if len(totals) == 1 else torch.stack(totals).sum()
        return total, (sums[0] if len(sums) == 1 else torch.cat(sums)) / self.counts


def chunked_loss(head: nn.Module, states: Sequence[Tensor], batch: Batch, terms: Terms, combine: Callable[[Tensor], Tensor],
                 linear_weights: Tensor | None, tokenwise: bool, budget: int, out_per_row: int,
                 params: list[Tensor] | None = None, cache: dict | None = None) -> tuple[Tensor, Tensor]:
    """(total, per-depth losses) without ever holding more than one chunk of head output. ``params``:
    the tensors the head reads that get gradients (default: its trainable parameters); ``cache``: see
    `ChunkedHeadLoss`."""
    params = [p for p in head.parameters() if p.requires_grad] if params is None else params
    job = ChunkedHeadLoss(head, states, batch, terms, tokenwise, budget, out_per_row, cache)
    if linear_weights is not None:
        return job.loss(linear_weights, params)
    measured = job.measure().requires_grad_(True)  # a nonlinear combination: its gradient where the losses are
    with torch.enable_grad():
        (coeff,) = torch.autograd.grad(combine(measured), measured)
    total, losses = job.loss(coeff, params)
    return total - total.detach() + combine(losses).detach(), losses


def chunked_measure(head: nn.Module, states: Sequence[Tensor], batch: Batch, terms: Terms, tokenwise: bool, budget: int,
                    out_per_row: int, cache: dict | None = None) -> Tensor:
    """(D,) per-depth losses, forward only, one chunk of head output at a time."""
    return ChunkedHeadLoss(head, [h.detach() for h in states], batch, terms, tokenwise, budget, out_per_row, cache).measure()
