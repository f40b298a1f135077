"""Byte-level language modelling on any UTF-8 text file, or on the built-in corpus.

The built-in corpus (``text`` or ``text:builtin``) is ``lpa_cli/data/corpus.txt``: the GNU GPL v3,
Apache 2.0, MPL 2.0, LGPL 2.1 and GFDL 1.3 licence texts (112,718 bytes, copied verbatim, which
each licence permits). It ships with the package, so it exists on every install without a download.

The first 90% of the bytes train, the last 10% test (no overlap). Each split is cut into windows of
``context + 1`` bytes: inputs are bytes 0..T-1, targets bytes 1..T. Training windows start every
``context // 2`` bytes, test windows do not overlap.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from analyzers.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.tasks.base import Task

VOCAB = 256


def builtin_corpus() -> bytes:
    return resources.files("lpa_cli").joinpath("data/corpus.txt").read_bytes()


def _windows(data: Tensor, context: int, stride: int) -> tuple[Tensor, Tensor]:
    starts = torch.arange(0, data.numel() - context, stride)
    idx = starts[:, None] + torch.arange(context + 1)[None, :]
    w = data[idx]  # (n, T+1)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def load_text_task(source: str, cfg: TaskConfig) -> Task:
    context = int(cfg.options.get("context", 64))
    if context < 2:
        raise DataError(f"text: context must be at least 2, got {context}")
    if source in ("", "builtin"):
        raw, label = builtin_corpus(), "builtin"
        description = "built-in corpus: GPL-3, Apache-2.0, MPL-2.0, LGPL-2.1, GFDL-1.3 licence texts (bytes)"
    else:
        path = Path(source)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise DataError(f"{path}: text file not found") from None
        except OSError as err:
            raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
        label, description = str(path), f"text file {path.name} (bytes)"
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    cut = int(data.numel() * 0.9)
    if cut < 2 * (context + 1) or data.numel() - cut < context + 1:
        raise DataError(f"{label}: text of {data.numel()} bytes is too short for context {context}")
    x_train, y_train = _windows(data[:cut], context, max(1, context // 2))
    x_test, y_test = _windows(data[cut:], context, context)
    if cfg.n_train:
        x_train, y_train = x_train[: cfg.n_train], y_train[: cfg.n_train]
    if cfg.n_test:
        x_test, y_test = x_test[: cfg.n_test], y_test[: cfg.n_test]
    return Task(
        name=f"text:{label}", kind="lm", input_kind="tokens",
        x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, out_dim=VOCAB,
        description=description, meta={"context": context, "vocab": VOCAB, "bytes": int(data.numel())},
    )
