"""Training objectives, written once against the `ResidualModel` protocol.

- ``e2e``: the loss of depth N only (ordinary training).
- ``lpa``: a weighted sum of the losses of the selected depths, all read through the shared head, so
  block k is pushed to fit the residual target ``y - yhat_{k-1}`` left by the blocks before it.
- ``lpa-local``: as ``lpa``, but the stream is detached before every block, so the residual target
  each block sees is a constant: depth k's loss trains block k (and the head, and at depth 0 the
  embedding) and sends no gradient into blocks < k.

Depth weights (normalised to sum to 1): ``uniform``; ``linear`` (k + 1); ``sqrt`` (sqrt(k + 1));
``inv`` (1 / (k + 1)); or, with ``lpa_lambda``, the "task + lambda * alignment" form: weight 1 on
depth N and ``lambda`` on every other selected depth.

Sample fraction ``f`` (``sample_fraction``, default 1): the terms of every depth but the deepest are
computed on the first ``ceil(f * B)`` samples of the batch, which cuts the head's cost (large for LMs
with big vocabularies); with ``sample_depths`` it is the depth-sampling option for such heads.

Loss power ``p`` (``loss_power``, default 1): each depth's term is ``L_k ** p`` (``log L_k`` at p = 0)
instead of ``L_k``, so its gradient is scaled by ``L_k ** (p - 1)``. Shallow depths' losses are
orders of magnitude above the final depth's and, at p = 1, dominate the shared parameters' gradient;
p = 0.5 (the sum of per-depth RMSEs, for squared error) balances them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from analyzers.depths import parse_depths
from analyzers.errors import UsageError
from lpa_cli.config import ObjectiveConfig
from lpa_cli.losses import batch_loss, per_depth_loss
from lpa_cli.models.protocol import ResidualModel


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
    """Callable ``(model, x, y) -> LossOutput``; ``e2e``, ``lpa`` and ``lpa-local`` share this class."""

    def __init__(self, cfg: ObjectiveConfig, num_blocks: int, kind: str) -> None:
        self.cfg = cfg
        self.kind = kind
        self.last = num_blocks
        if cfg.name == "e2e":
            self.depths = [num_blocks]
        else:
            self.depths = parse_depths(cfg.depths, num_blocks + 1)
            if cfg.lpa_lambda is not None and num_blocks not in self.depths:
                self.depths.append(num_blocks)  # the lambda form is anchored on the task loss at depth N
        self.weights = depth_weights(self.depths, cfg.weights, cfg.lpa_lambda if cfg.name != "e2e" else None, num_blocks)
        self.detach_inputs = cfg.name == "lpa-local"
        self._weight_cache: dict[tuple, Tensor] = {}

    @property
    def name(self) -> str:
        return self.cfg.name

    def _choose(self, generator: torch.Generator | None) -> tuple[list[int], list[float]]:
        """Depth sampling: a random subset of the selected depths, always keeping the deepest one."""
        n = self.cfg.sample_depths
        if n <= 0 or n >= len(self.depths):
            return self.depths, self.weights
        deepest = len(self.depths) - 1
        others = torch.randperm(deepest, generator=generator)[: n - 1].tolist()
        idx = sorted(others + [deepest])
        weights = [self.weights[i] for i in idx]
        total = sum(weights)
        return [self.depths[i] for i in idx], [w / total for w in weights]

    def __call__(self, model: ResidualModel, x: Tensor, y: Tensor, generator: torch.Generator | None = None) -> LossOutput:
        depths, weights = self._choose(generator)
        if depths == [self.last] and not self.detach_inputs:
            loss = batch_loss(model(x), y, self.kind)
            return LossOutput(loss, depths, loss.detach()[None])
        # All selected depths go through the shared head in one call (stacked on the batch axis) and
        # one vectorised loss: the same terms as a loop over depths, without D head calls and D losses.
        wanted = set(depths)
        states = [h for k, h in enumerate(model.states(x, upto=max(depths), detach_inputs=self.detach_inputs)) if k in wanted]
        part = math.ceil(self.cfg.sample_fraction * x.shape[0])
        if part < x.shape[0] and len(states) > 1:
            # Shallower depths' terms on the first `part` samples of the (already random) batch: an
            # unbiased estimate of their mean loss at a fraction of the head's cost; the deepest
            # depth keeps the whole batch.
            shallow = per_depth_loss(model.head(torch.cat([h[:part] for h in states[:-1]], dim=0)), y[:part], self.kind, len(states) - 1)
            losses = torch.cat([shallow, batch_loss(model.head(states[-1]), y, self.kind)[None]])
        else:
            preds = model.head(torch.cat(states, dim=0))  # (D*B, ...)
            losses = per_depth_loss(preds, y, self.kind, len(depths))  # (D,)
        w = self._weight_tensor(weights, losses)
        detached = losses.detach()
        total = losses @ w
        power = self.cfg.loss_power
        if power != 1.0:
            # The gradient of sum w_k L_k^p, through detached per-term scales L_k^(p-1); the common
            # factor keeps the scalar's value (what is logged) equal to the plain weighted sum, and
            # Adam is indifferent to it.
            floor = detached.clamp_min(1e-12)
            total = (losses * w * floor ** (power - 1)).sum() * (total.detach() / (w * floor**power).sum())
        return LossOutput(total, depths, detached)

    def _weight_tensor(self, weights: list[float], like: Tensor) -> Tensor:
        """The weights as a tensor, made once per depth subset (steps are short enough to notice)."""
        key = (tuple(weights), like.dtype, like.device)
        if key not in self._weight_cache:
            self._weight_cache[key] = torch.tensor(weights, dtype=like.dtype, device=like.device)
        return self._weight_cache[key]
