"""Exporting a prefix: "train once, use N models" as a file you can ship."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from lpa_core.atomic import same_file
from lpa_core.errors import UsageError
from lpa_cli.formats.checkpoint import save_checkpoint
from lpa_cli.models.open import load_checkpoint
from lpa_cli.config import RunConfig
from lpa_cli.formats.tokenizer import read_tokenizer

log = logging.getLogger(__name__)

FORMATS = ("lpa", "hf")


def export_prefix(checkpoint: str | Path, depth: int, output: str | Path, force: bool = False, verify: bool = True,
                  format: str = "lpa", *, factory: str = "", trust_factory: bool = False, assistant_exit: bool = True,
                  data: str | None = None) -> dict:
    """Write the embedding, the first ``depth`` blocks and the shared head: an lpa checkpoint
    (``format="lpa"``) or a Hugging Face model directory (``format="hf"``, for models started from
    one). Its predictions are exactly the original's depth-``depth`` predictions; an lpa checkpoint's
    metadata says what it was cut from (``parent``). ``factory``/``trust_factory``: as `load_checkpoint`.
    ``assistant_exit``: a full-depth Hugging Face export of a language model gets the draft depth
    measured best for self-speculative decoding (`recommend_early_exit`) as ``assistant_early_exit``
    in its generation_config.json, which transformers' ``generate`` then uses.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown --format {format!r}; expected {' or '.join(FORMATS)}")
    if Path(output).exists() and same_file(output, checkpoint):
        raise UsageError(f"{output}: is the input {checkpoint}; choose another -o (lpa never writes over its own input)")
    ckpt = load_checkpoint(checkpoint, verify=verify, factory=factory, trust_factory=trust_factory)
    n = ckpt.model.num_blocks
    if not 1 <= depth <= n:
        raise UsageError(f"--at must be between 1 and {n} for {checkpoint} ({n} blocks), got {depth}")
    small = ckpt.model.truncated(depth)
    metrics = {name: values[: depth + 1] for name, values in ckpt.metrics.items()}
    parent = {"path": str(checkpoint), "sha256": ckpt.sha256, "depth": depth, "depths_of_parent": n}
    result = {"output": str(output), "format": format, "depth": depth, "parent": parent, "metrics": metrics,
              "parameters": sum(p.numel() for p in small.parameters()), "parameters_of_parent": sum(p.numel() for p in ckpt.model.parameters())}
    if depth in (ckpt.training.get("chance_depths") or []):  # shipped anyway (the user asked), but never in silence
        result["warning"] = (f"depth {depth} never left chance when it was trained: no better than {ckpt.training.get('chance_baseline')} "
                             "on the test split; the exported model answers at chance (export a deeper depth, or see docs/hf.md)")
        log.warning("%s", result["warning"])
    if format == "hf":
        from lpa_cli.models.hf.save import export_hf
        from lpa_cli.serving.exits import lm_prompts, recommend_early_exit
        from lpa_cli.serving.generate import decodable

        generation = {}
        if assistant_exit and depth == n > 1 and ckpt.kind == "lm" and decodable(ckpt.model):
            result["assistant_early_exit"] = recommend_early_exit(ckpt, lm_prompts(ckpt, data=data))
            if result["assistant_early_exit"]["assistant_early_exit"] is not None:
                generation["assistant_early_exit"] = result["assistant_early_exit"]["assistant_early_exit"]
        return result | export_hf(ckpt, small, Path(output), force=force, generation=generation)
    config = RunConfig(dataclasses.replace(ckpt.config.model, depth=depth), ckpt.config.task, ckpt.config.objective, ckpt.config.train)
    training = ckpt.training | {"exported_from": str(checkpoint)}
    extra = {"hf": ckpt.metadata["hf"]} if "hf" in ckpt.metadata else {}
    sha = save_checkpoint(output, small, config, ckpt.task, metrics, training, parent=parent, force=force,
                          tokenizer=read_tokenizer(ckpt.info), extra=extra)
    return result | {"sha256": sha}
