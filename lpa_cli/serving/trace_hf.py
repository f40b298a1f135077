"""Trace a local Hugging Face decoder on a text through the logit lens (`lpa trace DIR`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lpa_core.errors import DataError, UsageError
from lpa_cli.data.base import first_id_at_or_above
from lpa_cli.models.hf.directory import weights_sha256
from lpa_cli.models.hf.families import translate
from lpa_cli.models.hf.load import load_model
from lpa_cli.data.text import read_text
from lpa_cli.serving.trace import trace_model


def _tokens(text: str | None, tokenizer) -> Tensor:
    raw = read_text(text or "")[0]
    return torch.tensor(tokenizer.encode(raw), dtype=torch.long)


def trace_hf(directory: str | Path, output: str | Path | None, *, text: str | None = None, context: int | None = None, bos: bool = False,
             device: str = "cpu", **kwargs: Any):
    """Trace a local Hugging Face decoder on a text (default: the built-in corpus) through the logit lens.

    Windows of ``context`` tokens, tokenised without special tokens; ``bos`` starts every window with
    the tokenizer's BOS token instead (the model then predicts the window's first text token from it).
    """
    directory = Path(directory)
    family, config, t = translate(directory)
    context = min(128, t.positions) if context is None else context
    if context < 2:
        raise UsageError(f"--context must be at least 2, got {context}")
    if context > t.positions:
        raise UsageError(f"--context {context} is longer than the {t.positions} positions {directory} can read")
    model, tokenizer, _ = load_model(directory, device, context)
    ids = _tokens(text, tokenizer)
    bad = first_id_at_or_above(ids, model.input_vocab or ids.max().item() + 1)
    if bad is not None:
        raise DataError(f"{text or 'the built-in corpus'}: token id {bad[1]} at position {bad[0]} is outside the vocabulary of "
                        f"{model.input_vocab:,} ids of {directory} (its tokenizer has {tokenizer.vocab_size:,} ids)")
    if bos and tokenizer.bos_id is None:
        raise UsageError(f"{directory}: --bos, but the model's tokenizer has no BOS token")
    span = context if bos else context + 1  # text tokens per window
    n = ids.numel() // span if bos else (ids.numel() - 1) // context
    if n < 1:
        raise DataError(f"text of {ids.numel()} tokens is too short for context {context}")
    if bos:
        w = ids[: n * span].view(n, span)
        x = torch.cat([torch.full((n, 1), tokenizer.bos_id), w[:, :-1]], dim=1)
        y = w
    else:
        starts = torch.arange(n) * context
        idx = starts[:, None] + torch.arange(context + 1)[None, :]
        w = ids[idx]
        x, y = w[:, :-1], w[:, 1:]
    output = Path(output) if output else directory.with_name(directory.name + ".trace.h5")
    attrs = {
        "source": "hf",
        "checkpoint_path": str(directory),
        "checkpoint_sha256": weights_sha256(directory),
        "config": json.dumps({"model": {"arch": config["model_type"], "depth": t.depth}, "objective": {"name": "pretrained"}, "hf_config": config},
                             sort_keys=True, default=str),
        "task": json.dumps({"name": f"text:{text or 'builtin'}", "kind": "lm", "in_shape": [context], "out_dim": t.options["vocab"],
                            "bos": bos}, sort_keys=True),
        "objective": "pretrained",
        "split": "text",
        "data_id": json.dumps({"text": text or "builtin", "context": context, "bos": bos}),
    }
    return trace_model(model, x, y, "lm", output, attrs=attrs, **kwargs)
