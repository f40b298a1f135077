"""What every task yields: a train and a test `Split`, plus what kind of prediction it wants."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lpa_core.files import readable
from lpa_core.errors import DataError
from lpa_cli.data.splits import Split

KINDS = ("regression", "classification", "lm")


@dataclass
class Task:
    """A data set ready for training.

    ``kind`` is ``regression`` (float targets ``(n, out_dim)``), ``classification`` (int64 labels
    ``(n,)``) or ``lm`` (int64 tokens: inputs ``(n, T)``, targets the next tokens ``(n, T)``).
    ``input_kind`` (``vector``, ``image``, ``tokens``) tells the model registry which architectures fit;
    ``in_shape`` is one input's shape (no batch axis).
    """

    name: str
    kind: str
    input_kind: str
    train: Split
    test: Split
    out_dim: int
    in_shape: tuple[int, ...]
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None  # token tasks: the `lpa_cli.formats.tokenizer.Tokenizer` (stored in checkpoints, for generation)

    def split(self, name: str) -> Split:
        if name == "train":
            return self.train
        if name == "test":
            return self.test
        raise DataError(f"unknown split {name!r}; expected train or test")

    def check_token_ids(self, vocab: int | None, model: str) -> None:
        """Every token id of the data is below ``vocab`` (``model``'s embedding size): an id beyond it
        would index out of range, or with a single bad id let a run finish without a word."""
        if vocab is None or self.input_kind != "tokens":
            return
        seen: set[int] = set()
        for split in (self.train, self.test):
            seq = getattr(split, "tokens", None)
            seq = seq if seq is not None else split.tensors()[0].reshape(-1)
            if id(seq) in seen:
                continue
            seen.add(id(seq))
            found = first_id_at_or_above(seq, vocab)
            if found is not None:
                tok = f" (the tokenizer has {self.tokenizer.vocab_size:,} ids)" if self.tokenizer is not None else ""
                raise DataError(f"{self.name}: token id {found[1]} at position {found[0]} is outside the vocabulary of "
                                f"{vocab:,} ids of {model}{tok}")

    def info(self) -> dict[str, Any]:
        """What a checkpoint records about its task (enough to rebuild the model without the data)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "input_kind": self.input_kind,
            "in_shape": list(self.in_shape),
            "out_dim": self.out_dim,
            "n_train": len(self.train),
            "n_test": len(self.test),
            "description": self.description,
            "meta": self.meta,
        }


def check_options(task: str, options: dict[str, Any], known: tuple[str, ...]) -> None:
    """Unknown ``task.options`` keys are errors, never ignored (a typo would silently change nothing)."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        choices = ", ".join(known) if known else "none"
        raise DataError(f"unknown task.options for {task}: {', '.join(unknown)} (it takes: {choices})")


def int_option(options: dict[str, Any], key: str, default: int, low: int = 1, high: int = 1 << 31) -> int:
    """An integer option (from TOML or --set), checked; a one-line DataError otherwise."""
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DataError(f"task.options.{key} must be an integer, got {value!r}")
    try:
        value = int(value)
    except ValueError:
        raise DataError(f"task.options.{key} must be an integer, got {value!r}") from None
    if not low <= value <= high:
        raise DataError(f"task.options.{key} must be between {low} and {high}, got {value}")
    return value


def float_option(options: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = options.get(key, default)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise DataError(f"task.options.{key} must be a number, got {value!r}") from None
    if not low <= value <= high:  # NaN fails this too
        raise DataError(f"task.options.{key} must be between {low:g} and {high:g}, got {value!r}")
    return value


def regular_file(path: str | Path, kind: str = "") -> Path:
    """``path``, unless it exists as something that is neither a file nor a folder (a device such as
    /dev/zero or a FIFO never ends, so reading one would run until killed) or, for a ``kind`` read
    whole (``text``), is larger than lpa reads (`lpa_core.files.LIMITS`)."""
    return readable(path, kind, error=DataError)


def first_id_at_or_above(tokens: Any, limit: int, block: int = 1 << 24) -> tuple[int, int] | None:
    """(position, id) of the first id >= ``limit`` in a 1-D token sequence (a tensor, an array or a
    `MappedArray` of a token file, read ``block`` ids at a time so memory stays flat); None if none is."""
    for start in range(0, len(tokens), block):
        chunk = np.asarray(tokens[start : start + block])
        over = np.flatnonzero(chunk >= limit)
        if over.size:
            return start + int(over[0]), int(chunk[over[0]])
    return None
