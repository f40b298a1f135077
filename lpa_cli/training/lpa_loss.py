"""`LPALoss`: LPA as a loss for a training loop you already have.

    from lpa_cli import LPALoss
    loss_fn = LPALoss("classification", loss_power=0.5)      # every option `lpa train` has
    out = loss_fn(model, (x, y))                             # a ResidualModel and a batch ...
    out = loss_fn(states, y, head=model_head)                # ... or your own per-depth states h_0..h_N
    out.loss.backward()                                      # out.per_depth: each depth's loss

It is the trainer's own objective (`lpa_cli.training.objectives`), with the same stacked or chunked head loss,
so a loop using it trains what `lpa train` trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lpa_cli.data.batch import Batch
from lpa_cli.config import ObjectiveConfig
from lpa_cli.models.protocol import ResidualModel
from lpa_cli.training.objectives import LossOutput, Objective, build_objective


class LPALoss(nn.Module):
    """Layer-wise progressive approximation as an ``nn.Module`` loss.

    ``kind``: ``regression`` (MSE), ``classification`` or ``lm`` (cross-entropy). The keywords are
    `lpa_cli.config.ObjectiveConfig`'s: ``objective`` (``lpa``, ``lpa-local``, ``e2e``), ``weights``,
    ``lpa_lambda``, ``depths``, ``sample_depths``, ``sample_fraction``, ``loss_power``, ``align``,
    ``align_mix``, ``head_loss``, ``head_chunk_mb``, ``depth_schedule`` (which follows ``step``). ``seed`` seeds depth sampling (one draw per call, or per ``step``).
    """

    def __init__(self, kind: str, objective: str = "lpa", *, seed: int = 0, **options) -> None:
        super().__init__()
        self.kind = kind
        self.cfg = ObjectiveConfig(name=objective, **options)
        self.generator = torch.Generator().manual_seed(seed)
        self._objectives: dict[int, Objective] = {}

    def objective(self, num_blocks: int) -> Objective:
        if num_blocks not in self._objectives:
            self._objectives[num_blocks] = build_objective(self.cfg, num_blocks, self.kind)
        return self._objectives[num_blocks]

    def forward(self, model_or_states: ResidualModel | Sequence[Tensor], batch_or_targets, head: nn.Module | None = None, *,
                step: int = 0, attention_mask: Tensor | None = None, tokenwise_head: bool = False) -> LossOutput:
        """``(model, batch)`` with a `ResidualModel` and a `Batch` or ``(x, y)``; or ``(states, y,
        head=...)`` with the states of depths 0..N computed by your own loop (``tokenwise_head``: the
        head maps each token on its own, as an LM head does, so the chunked loss may split tokens).
        With states, ``lpa-local``'s detaching before each block is yours to do."""
        if isinstance(model_or_states, ResidualModel):
            batch = batch_or_targets if isinstance(batch_or_targets, Batch) else Batch(*batch_or_targets)
            return self.objective(model_or_states.num_blocks)(model_or_states, batch, step, self.generator)
        if head is None:
            raise TypeError("LPALoss(states, targets) needs the shared head: LPALoss(...)(states, y, head=model_head)")
        states = list(model_or_states)
        objective = self.objective(len(states) - 1)
        depths, weights = objective.plan(step, self.generator)
        batch = Batch(states[0], batch_or_targets, attention_mask)
        return objective.from_states(head, [states[k] for k in depths], batch, depths, weights, tokenwise_head)


__all__ = ["LPALoss", "LossOutput"]
