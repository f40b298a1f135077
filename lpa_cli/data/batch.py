"""One batch of training or evaluation data, as every data source yields it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

IGNORE_INDEX = -100  # LM targets at padded positions (cross-entropy skips them)


@dataclass
class Batch:
    """Inputs ``x`` (B, ...), targets ``y`` (B, ...) and, for padded token batches, ``mask`` (B, T) with 1
    at real tokens. Regression targets are float (B, out); classification labels int64 (B,); LM
    targets int64 (B, T), `IGNORE_INDEX` where there is nothing to predict."""

    x: Tensor
    y: Tensor
    mask: Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.x), move(self.y), move(self.mask))

    def rows(self, index: slice | Tensor) -> Batch:
        """A subset of the rows (a slice or an index tensor)."""
        return Batch(self.x[index], self.y[index], None if self.mask is None else self.mask[index])

    def trimmed(self) -> Batch:
        """Right-padded token rows cut to the longest real row (dynamic padding): every row keeps its
        tokens and positions, and the columns that only padding filled are not computed at all."""
        if self.mask is None or self.x.ndim != 2:
            return self
        used = self.mask.any(dim=0).nonzero()
        width = int(used[-1]) + 1 if used.numel() else 1
        if width == self.x.shape[1]:
            return self
        return Batch(self.x[:, :width], self.y[:, :width] if self.y.ndim == 2 else self.y, self.mask[:, :width])

    def split(self, parts: int) -> list[Batch]:
        """``parts`` nearly equal consecutive micro-batches (gradient accumulation)."""
        n = len(self)
        bounds = [round(i * n / parts) for i in range(parts + 1)]
        return [self.rows(slice(a, b)) for a, b in zip(bounds, bounds[1:]) if b > a]
