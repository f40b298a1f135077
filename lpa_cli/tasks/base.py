"""What every task yields: tensors for a train and a test split, plus what kind of prediction it wants."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class Task:
    """A data set ready for training.

    ``kind`` is ``regression`` (float targets ``(n, out_dim)``), ``classification`` (int64 labels
    ``(n,)``) or ``lm`` (int64 tokens: inputs ``(n, T)``, targets the next tokens ``(n, T)``).
    ``input_kind`` (``vector``, ``image``, ``tokens``) tells the model registry which architectures fit.
    """

    name: str
    kind: str
    input_kind: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    out_dim: int
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def in_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def split(self, name: str) -> tuple[Tensor, Tensor]:
        if name == "train":
            return self.x_train, self.y_train
        if name == "test":
            return self.x_test, self.y_test
        raise ValueError(f"unknown split {name!r}")

    def info(self) -> dict[str, Any]:
        """What a checkpoint records about its task (enough to rebuild the model without the data)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "input_kind": self.input_kind,
            "in_shape": list(self.in_shape),
            "out_dim": self.out_dim,
            "n_train": int(self.x_train.shape[0]),
            "n_test": int(self.x_test.shape[0]),
            "description": self.description,
            "meta": self.meta,
        }
