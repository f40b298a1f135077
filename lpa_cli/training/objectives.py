"""Training objectives, written once against the `ResidualModel` protocol: a registry of classes
(`lpa_cli.registry.OBJECTIVES`) with one interface, ``objective(model, batch, step, generator)``.

- `E2E` (``e2e``): the loss of depth N only (ordinary training).
- `LPA` (``lpa``): a weighted sum of the losses of the selected depths, all read through the shared
  head, so block k is pushed to fit the residual target ``y - yhat_{k-1}`` left by the blocks before it.
- `LPALocal` (``lpa-local``): as ``lpa``, but the stream is detached before every block, so the
  residual target each block sees is a constant: depth k's loss trains block k (and the head, and at
  depth 0 the embedding) and sends no gradient into blocks < k.

Depth weights (normalised to sum to 1): ``uniform``; ``linear`` (k + 1); ``sqrt`` (sqrt(k + 1));
``inv`` (1 / (k + 1)); or, with ``lpa_lambda``, the "task + lambda * alignment" form: weight 1 on
depth N and ``lambda`` on every other selected depth.

The call receives the step, so a subclass can make the depths a function of it (a curriculum, or
LayerSkip's rotation of exits) by overriding `plan`; the trainer knows nothing of how.

Sample fraction ``f``: the terms of every depth but the deepest are computed on the first
``ceil(f * B)`` samples of the batch, which cuts the head's cost (large for LMs with big
vocabularies); with ``sample_depths`` it is the depth-sampling option for such heads.

Loss power ``p`` (default 1): each depth's term is ``L_k ** p`` (``log L_k`` at p = 0) instead of
``L_k``, so its gradient is scaled by ``L_k ** (p - 1)``. Shallow depths' losses are orders of
magnitude above the final depth's and, at p = 1, dominate the shared parameters' gradient; p = 0.5
(the sum of per-depth RMSEs, for squared error) balances them.

How the head is read at every depth (stacked or chunked, and the KL alignment) is in
`lpa_cli.training.head_loss`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from lpa_core.depths import parse_depths
from lpa_core.errors import UsageError
from lpa_cli.data.batch import Batch
from lpa_cli.config import ObjectiveConfig
from lpa_cli.training.chunked_head import chunked_loss, chunked_measure
from lpa_cli.training.head_loss import Terms, chunk_rows, head_budget, output_per_row, stacked_losses
from lpa_cli.training.sampled_head import TOP_K, CandidateHead, always_in, candidate_batch, draw, final_top, parse_sampled, projection
from lpa_cli.models.protocol import ResidualModel
from lpa_cli.registry import OBJECTIVES


def depth_weights(depths: list[int], scheme: str, lpa_lambda: float | None, last: int) -> list[float]:
    """Normalised weights for the loss terms of ``depths`` (``last`` is depth N)."""
    if lpa_lambda is not None:
        raw = [1.0 if k == last else lpa_lambda for k in depths]
    elif scheme == "uniform":
        raw = [1.0 for _ in depths]
    elif scheme == "linear":
        raw = [float(k + 1) for k in depths]
    elif scheme == "sqrt":
        raw = [math.sqrt(k + 1) for k in depths]
    elif scheme == "inv":
        raw = [1.0 / (k + 1) for k in depths]
    else:
        raise UsageError(f"unknown depth weighting {scheme!r}")
    total = sum(raw)
    if total <= 0:
        raise UsageError("depth weights sum to zero; select depth N or use a positive --lpa-lambda")
    return [w / total for w in raw]


@dataclass
class LossOutput:
    loss: Tensor  # the scalar to backpropagate
    depths: list[int]  # the depths that had a term this step
    losses: Tensor  # (len(depths),) their unweighted losses, detached

    @property
    def per_depth(self) -> dict[int, Tensor]:
        """Depth -> its loss (built on demand: only logging reads it)."""
        return dict(zip(self.depths, self.losses.unbind()))


class Objective:
    """The interface: ``objective(model, batch, step, generator) -> LossOutput``.

    ``depths``/``weights`` are the selected depths and their normalised weights; `plan` picks the
    ones a step uses; `combine` turns per-depth losses into the scalar to minimise.
    """

    name: ClassVar[str] = ""
    detach_inputs: ClassVar[bool] = False

    def __init__(self, cfg: ObjectiveConfig, num_blocks: int, kind: str) -> None:
        self.cfg = cfg
        self.kind = kind
        self.last = num_blocks
        self.depths = self.select(cfg, num_blocks)
        self.weights = depth_weights(self.depths, cfg.weights, cfg.lpa_lambda if self.name != "e2e" else None, num_blocks)
        self._weight_cache: dict[tuple, Tensor] = {}
        self.sampled = parse_sampled(cfg.head_loss)  # K of sampled:K, else 0
        if self.sampled and kind != "lm":
            raise UsageError(f"--head-loss {cfg.head_loss}: a sampled head loss is for language models (a vocabulary to sample); "
                             f"this task is {kind}")
        self._out_per_row: dict[tuple, int] = {}
        self._budget: dict[torch.device, int] = {}  # the head loss's budget, chosen once per device
        self._index_cache: dict[tuple, Tensor] = {}  # the chunked head loss's index tensors, made once per shape

    def select(self, cfg: ObjectiveConfig, num_blocks: int) -> list[int]:
        return [num_blocks]

    def plan(self, step: int, generator: torch.Generator | None) -> tuple[list[int], list[float]]:
        """The depths (and their weights) that get a term at ``step``."""
        return self.depths, self.weights

    def leaves_parameters_unused(self, model: ResidualModel) -> bool:
        """Whether some step may give a parameter no gradient (DDP must then look for them)."""
        return max(self.depths) < model.num_blocks

    def combine(self, losses: Tensor, weights: Tensor) -> Tensor:
        """The scalar to minimise from per-depth losses. Its value is the plain weighted sum (what is
        logged); with a loss power p < 1 its gradient is that of sum_k w_k L_k^p, through detached
        per-term scales, and a common factor keeps the value (Adam is indifferent to it)."""
        total = losses @ weights
        power = self.cfg.loss_power
        if power == 1.0:
            return total
        floor = losses.detach().clamp_min(1e-12)
        return (losses * weights * floor ** (power - 1)).sum() * (total.detach() / (weights * floor**power).sum())

    def __call__(self, model: ResidualModel, batch: Batch, step: int = 0, generator: torch.Generator | None = None) -> LossOutput:
        depths, weights = self.plan(step, generator)
        wanted = set(depths)
        states = [h for k, h in enumerate(model.states(batch.x, upto=max(depths), detach_inputs=self.detach_inputs,
                                                        attention_mask=batch.mask)) if k in wanted]
        return self.from_states(model.head, states, batch, depths, weights, model.tokenwise_head, generator)

    def from_states(self, head: nn.Module, states: list[Tensor], batch: Batch, depths: list[int], weights: list[float],
                    tokenwise_head: bool = False, generator: torch.Generator | None = None) -> LossOutput:
        """The loss of the given depths' states (in depth order), read by the shared ``head``
        (``generator``: draws the sampled head loss's candidates)."""
        B = len(batch)
        part = math.ceil(self.cfg.sample_fraction * B) if len(states) > 1 else B
        terms = Terms(self.kind, [part] * (len(states) - 1) + [B], align=self.cfg.align == "kl" and len(states) > 1,
                      mix=self.cfg.align_mix)
        w = self._weight_tensor(weights, states[-1])
        if self.sampled and len(states) > 1:
            return self._sampled(head, states, batch, depths, terms, w, tokenwise_head, generator)
        if self._use_chunked(head, states, batch, terms, tokenwise_head):
            total, losses = chunked_loss(head, states, batch, terms, lambda L: self.combine(L, w),
                                         w if self.cfg.loss_power == 1.0 else None, tokenwise_head, self.budget(states[-1].device),
                                         self._row_size(head, states[-1], batch, tokenwise_head), cache=self._index_cache)
            return LossOutput(total, depths, losses)
        losses = stacked_losses(head, states, batch, terms)
        return LossOutput(self.combine(losses, w.to(losses.dtype)), depths, losses.detach())

    def budget(self, device: torch.device) -> int:
        """Bytes of fp32 head output the head loss may hold at once (`head_loss.head_budget`)."""
        if device not in self._budget:
            self._budget[device] = head_budget(self.cfg.head_chunk_mb, device)
        return self._budget[device]

    def _sampled(self, head: nn.Module, states: list[Tensor], batch: Batch, depths: list[int], terms: Terms, w: Tensor,
                 tokenwise_head: bool, generator: torch.Generator | None) -> LossOutput:
        """Depths < N through the candidate rows (`lpa_cli.training.sampled_head`), depth N exact. The
        candidate set is the step's one read back to the host; each group of heads is stacked or
        chunked by the same budget as the exact loss."""
        option = f"--head-loss {self.cfg.head_loss}"
        proj = projection(head, option)
        vocab = proj.out_features
        if self.sampled > vocab:
            raise UsageError(f"{option}: K must be at most the vocabulary ({vocab:,} rows)")
        device, budget = states[-1].device, self.budget(states[-1].device)
        wanted = batch.y.flatten()
        if terms.align:
            wanted = torch.cat([wanted, final_top(head, states[-1], TOP_K, chunk_rows(budget, vocab))])
        cand = draw(vocab, always_in(wanted.cpu()), self.sampled, generator, device)  # the one host sync
        reader, cbatch, last = CandidateHead(head, proj, cand), candidate_batch(batch, cand), Terms(self.kind, [len(batch)])
        size, csize = self._row_size(head, states[-1], batch, tokenwise_head), len(cand.ids)
        shallow_chunked = self._too_big(terms, batch, tokenwise_head, csize, budget)
        final_chunked = self._too_big(last, batch, tokenwise_head, size, budget)
        # the candidate head reads depths < N; with alignment depth N too (the distribution they fit), weighted 0
        shallow, sterms = (states, terms) if terms.align else (states[:-1], Terms(self.kind, terms.parts[:-1]))
        n = len(states) - 1
        if not shallow_chunked and not final_chunked:
            losses = torch.cat([stacked_losses(reader, shallow, cbatch, sterms)[:n], stacked_losses(head, states[-1:], batch, last)])
            return LossOutput(self.combine(losses, w.to(losses.dtype)), depths, losses.detach())
        cache = self._index_cache
        if self.cfg.loss_power == 1.0:
            coeff = w
        else:  # a nonlinear combination: measure every L_k, then differentiate the combination there
            measured = torch.cat([chunked_measure(reader, shallow, cbatch, sterms, tokenwise_head, budget, csize, cache)[:n],
                                  chunked_measure(head, states[-1:], batch, last, tokenwise_head, budget, size, cache)]).requires_grad_(True)
            with torch.enable_grad():
                (coeff,) = torch.autograd.grad(self.combine(measured, w), measured)
        wa = coeff[:n] if not terms.align else torch.cat([coeff[:n], coeff.new_zeros(1)])
        wb = coeff[n:]
        ta, la = chunked_loss(reader, shallow, cbatch, sterms, lambda L: L @ wa, wa, tokenwise_head, budget, csize, reader.extra_params(), cache)
        tb, lb = chunked_loss(head, states[-1:], batch, last, lambda L: L @ wb, wb, tokenwise_head, budget, size, cache=cache)
        losses = torch.cat([la[:n], lb])
        total = ta + tb  # its gradient is the combination's; its value, the combination's too
        if self.cfg.loss_power == 1.0:
            return LossOutput(total, depths, losses)
        return LossOutput(total - total.detach() + self.combine(losses, w).detach(), depths, losses)

    def _row_size(self, head: nn.Module, state: Tensor, batch: Batch, tokenwise_head: bool) -> int:
        key = (tuple(state.shape[1:]), state.dtype)
        if key not in self._out_per_row:
            self._out_per_row[key] = output_per_row(head, state, batch.mask, tokenwise_head)
        return self._out_per_row[key]

    def _too_big(self, terms: Terms, batch: Batch, tokenwise_head: bool, out_per_row: int, budget: int) -> bool:
        """Whether stacking these terms' head output would pass the budget."""
        rows = sum(terms.parts) * (batch.y.shape[1] if tokenwise_head and batch.y.dim() > 1 else 1)
        return rows * out_per_row * 4 > budget

    def _use_chunked(self, head: nn.Module, states: list[Tensor], batch: Batch, terms: Terms, tokenwise_head: bool) -> bool:
        mode = self.cfg.head_loss
        if mode != "auto" and not self.sampled:  # sampled:K reads its heads stacked or chunked as auto would
            return mode == "chunked"
        return self._too_big(terms, batch, tokenwise_head, self._row_size(head, states[-1], batch, tokenwise_head),
                             self.budget(states[-1].device))

    def _weight_tensor(self, weights: list[float], like: Tensor) -> Tensor:
        """The weights as a tensor, made once per depth subset (steps are short enough to notice)."""
        dtype = like.dtype if like.is_floating_point() else torch.float32
        key = (tuple(weights), dtype, like.device)
        if key not in self._weight_cache:
            self._weight_cache[key] = torch.tensor(weights, dtype=torch.float32, device=like.device)
        return self._weight_cache[key]


class E2E(Objective):
    """Ordinary training: the loss of depth N only."""

    name = "e2e"


class LPA(Objective):
    """Layer-wise progressive approximation: every selected depth's loss, weighted."""

    name = "lpa"

    def select(self, cfg: ObjectiveConfig, num_blocks: int) -> list[int]:
        depths = parse_depths(cfg.depths, num_blocks + 1)
        if cfg.lpa_lambda is not None and num_blocks not in depths:
            depths.append(num_blocks)  # the lambda form is anchored on the task loss at depth N
        return depths

    def plan(self, step: int, generator: torch.Generator | None) -> tuple[list[int], list[float]]:
        """Each step's depths, always keeping the deepest: all of them; a random subset (depth
        sampling); or LayerSkip's schedules, a pure function of the step (so a resumed run is exact):
        ``rotation:R`` gives the i-th shallower depth its loss at steps where (i + step) % R == 0, so
        each once every R steps; ``curriculum:S`` switches depths on from the top down, one more every
        S steps (the one just below N first)."""
        n = self.cfg.sample_depths
        deepest = len(self.depths) - 1
        kind, _, period = self.cfg.depth_schedule.partition(":")
        if kind == "rotation":
            idx = [i for i in range(deepest) if (i + step) % int(period) == 0] + [deepest]
        elif kind == "curriculum":
            on = min(deepest, step // int(period))  # shallower depths switched on so far
            idx = list(range(deepest - on, deepest + 1))
        elif n <= 0 or n >= len(self.depths):
            return self.depths, self.weights
        else:
            idx = sorted(torch.randperm(deepest, generator=generator)[: n - 1].tolist() + [deepest])
        if len(idx) == len(self.depths):
            return self.depths, self.weights
        weights = [self.weights[i] for i in idx]
        total = sum(weights)
        return [self.depths[i] for i in idx], [w / total for w in weights]

    def leaves_parameters_unused(self, model: ResidualModel) -> bool:
        return self.cfg.sample_depths > 0 or self.cfg.depth_schedule != "all" or super().leaves_parameters_unused(model)


class LPALocal(LPA):
    """LPA with the stream detached before every block: each block trained only by its own depth."""

    name = "lpa-local"
    detach_inputs = True

    def leaves_parameters_unused(self, model: ResidualModel) -> bool:
        return True


def build_objective(cfg: ObjectiveConfig, num_blocks: int, kind: str) -> Objective:
    """The registered objective class for ``cfg.name``."""
    cls = OBJECTIVES.get(cfg.name).load()
    return cls(cfg, num_blocks, kind)
