"""Language modelling on text: the built-in corpus, a UTF-8 file, or a directory of ``.txt`` files,
tokenised as bytes (default) or with a model's ``tokenizer.json``.

The built-in corpus (``text`` or ``text:builtin``) is ``lpa_cli/data/corpus.txt``: the GNU GPL v3,
Apache 2.0, MPL 2.0, LGPL 2.1 and GFDL 1.3 licence texts (112,718 bytes, copied verbatim, which
each licence permits). It ships with the package, so it exists on every install without a download.

The first 90% of the tokens train, the last 10% test (no overlap). Each split is read as windows of
``context + 1`` tokens: inputs are tokens 0..T-1, targets tokens 1..T. Training windows start every
``context // 2`` tokens, test windows do not overlap. Options: ``context`` (64), ``tokenizer``
(``bytes`` or a tokenizer.json / model directory), ``stride`` (training window stride).
For corpora larger than memory, tokenise once into a token file (``lpa data tokenize``) and train
on that (`lpa_cli.data.tokens`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch

from lpa_core.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.data.base import Task, check_options, int_option, regular_file
from lpa_cli.data.splits import Windows
from lpa_cli.formats.tokenizer import BYTES, Tokenizer, load_tokenizer

VOCAB = 256
OPTIONS = ("context", "tokenizer", "stride")


def builtin_corpus() -> bytes:
    return resources.files("lpa_cli").joinpath("data/corpus.txt").read_bytes()


def read_text(source: str) -> tuple[str, str, str]:
    """(text, label, description) of the built-in corpus, a UTF-8 file or a directory of .txt files."""
    if source in ("", "builtin"):
        return builtin_corpus().decode("utf-8"), "builtin", "built-in corpus: GPL-3, Apache-2.0, MPL-2.0, LGPL-2.1, GFDL-1.3 licence texts"
    path = Path(source)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise DataError(f"{path}: directory holds no .txt files")
    parts = []
    for f in files:
        try:
            raw = regular_file(f, "text").read_bytes()  # read whole: a corpus larger than this goes through `lpa data tokenize`
        except FileNotFoundError:
            raise DataError(f"{f}: text file not found") from None
        except OSError as err:
            raise DataError(f"{f}: cannot read ({err.strerror or err})") from None
        try:
            parts.append(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{f}: not UTF-8 text (byte {err.start})") from None
    what = f"{len(files)} text files in {path.name}" if path.is_dir() else f"text file {path.name}"
    return "\n".join(parts), str(path), what


def tokenize(text: str, tokenizer: Tokenizer) -> torch.Tensor:
    """The whole text as one token sequence (uint8 for bytes, int32 otherwise, to stay small)."""
    if tokenizer.kind == "bytes":
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8) if text else torch.zeros(0, dtype=torch.uint8)
    return torch.from_numpy(np.asarray(tokenizer.encode(text), dtype=np.int32))


def load_text_task(source: str, cfg: TaskConfig) -> Task:
    check_options("text", cfg.options, OPTIONS)
    context = int_option(cfg.options, "context", 64, 2, 1 << 20)
    tokenizer = load_tokenizer(str(cfg.options.get("tokenizer", "bytes")))
    text, label, description = read_text(source)
    tokens = tokenize(text, tokenizer)
    n = tokens.numel()
    cut = int(n * 0.9)
    if cut < 2 * (context + 1) or n - cut < context + 1:
        raise DataError(f"{label}: text of {n} tokens is too short for context {context} (it needs at least {10 * (context + 1)})")
    stride = int_option(cfg.options, "stride", max(1, context // 2), 1, 1 << 20)
    train = Windows(tokens, context, stride, 0, cut)
    test = Windows(tokens, context, context, cut, n)
    if cfg.n_train:
        train = _first(train, cfg.n_train)
    if cfg.n_test:
        test = _first(test, cfg.n_test)
    meta = {"context": context, "vocab": tokenizer.vocab_size, "tokens": n, "tokenizer": tokenizer.name}
    if tokenizer.kind == "bytes":
        meta["bytes"] = n
    return Task(
        name=f"text:{label}", kind="lm", input_kind="tokens", train=train, test=test, out_dim=tokenizer.vocab_size,
        in_shape=(context,), description=f"{description} ({tokenizer.name})", meta=meta,
        tokenizer=tokenizer,
    )


def _first(split: Windows, count: int) -> Windows:
    """The first ``count`` windows of a split."""
    out = Windows(split.tokens, split.context, split.stride, split.start)
    out.count = min(count, split.count)
    return out


__all__ = ["BYTES", "VOCAB", "builtin_corpus", "load_text_task", "read_text", "tokenize"]
