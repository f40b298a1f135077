"""A Hugging Face directory into lpa: the run config it describes, its weights copied into lpa's model,
its tokenizer, and what a checkpoint keeps so `lpa export --format hf` can give the model back."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch

from lpa_core.files import readable
from lpa_core.errors import CheckpointError, DataError, UsageError
from lpa_cli.config import ModelConfig, RunConfig
from lpa_cli.models.hf.directory import TOKENIZER_FILES, read_config, read_weights, refuse
from lpa_cli.models.hf.families import Family, canonical, translate
from lpa_cli.models import build_model
from lpa_cli.formats.tokenizer import BYTES, load_tokenizer

log = logging.getLogger(__name__)


DEFAULT_CONTEXT_CAP = 2048  # language-model windows default to the model's positions, at most this many


def resolve_init(cfg: RunConfig, directory: Path) -> RunConfig:
    """The run config with the model a Hugging Face directory describes, its tokenizer for text tasks,
    and its context (capped at `DEFAULT_CONTEXT_CAP`) unless the task sets one."""
    family, _, t = translate(directory)
    options = dict(t.options) | {k: v for k, v in cfg.model.options.items() if k in ("pool", "dropout")}
    model = ModelConfig(arch=t.arch, depth=t.depth, width=t.width, zero_init=False, options=options, init=str(directory),
                        reinit=cfg.model.reinit)
    task = cfg.task
    spec = task.name.partition(":")[0]
    opts = dict(task.options)
    if spec in ("text", "classify") and "tokenizer" not in opts:
        opts["tokenizer"] = str(directory)
    if spec in ("text", "tokens"):
        opts.setdefault("context", min(t.positions, DEFAULT_CONTEXT_CAP))
    context = opts.get("context")
    if isinstance(context, int) and context > t.positions:
        raise UsageError(f"context {context} is longer than the {t.positions} positions {directory} can read")
    if spec not in ("text", "tokens", "classify"):
        raise UsageError(f"--init {directory}: a {family.name} model reads text; give --data a text file, token file or classification file")
    return dataclasses.replace(cfg, model=model, task=dataclasses.replace(task, options=opts))


def load_weights(model, directory: Path) -> None:
    """Copy a directory's weights into ``model`` (built from `resolve_init`'s config). A classifier the
    checkpoint lacks (a language model fine-tuned for classification) starts fresh."""
    family, config, t = translate(directory)
    kind = "classification" if not model.tokenwise_head else "lm"
    hf = canonical(read_weights(directory), family, directory)
    ours = model.state_dict()
    if family.to_lpa is not None:
        try:
            state = family.to_lpa(hf, model.num_blocks, t.options, kind)
        except KeyError as err:
            raise CheckpointError(f"{directory}: weight {err.args[0]!r} is missing") from None
    else:
        names = family.names(model.num_blocks, t.options, kind)
        if t.options.get("tie_embeddings") and kind == "lm":
            names.pop("head.proj.weight", None)
        missing = [theirs for mine, theirs in names.items() if theirs not in hf and not _fresh_head(mine, kind, family)]
        if missing:
            raise CheckpointError(f"{directory}: weights {', '.join(missing[:3])} are missing")
        state = {mine: hf[theirs] for mine, theirs in names.items() if theirs in hf}
        used = set(names.values())
        extra = sorted(k for k in hf if k not in used and not k.startswith(("lm_head", "score", "classifier")))
        if kind == "classification" and family.name != "bert":
            extra = [k for k in extra if k != "lm_head.weight"]
        if extra:
            raise refuse(directory, f"weights lpa has no place for ({', '.join(extra[:3])})")
    fresh = sorted(k for k in ours if k not in state and not (t.options.get("tie_embeddings") and k == "head.proj.weight"))
    if any(not k.startswith("head.") for k in fresh):
        raise CheckpointError(f"{directory}: no weights for {', '.join(fresh[:3])}")
    for key, value in state.items():
        if key in ours and tuple(value.shape) != tuple(ours[key].shape):
            raise CheckpointError(f"{directory}: weight for {key} has shape {tuple(value.shape)}, the config says {tuple(ours[key].shape)}")
    if fresh:
        log.warning("%s: a new %s head (%s) starts from random weights", directory, kind, ", ".join(fresh))
    model.load_state_dict(state, strict=False)


def _fresh_head(name: str, kind: str, family: Family) -> bool:
    return kind == "classification" and name.startswith(("head.score", "head.fc"))


def checkpoint_metadata(directory: Path) -> dict[str, str]:
    """What a checkpoint trained from ``directory`` keeps for `export_hf`: family, config, tokenizer files."""
    config = read_config(directory)
    files = {}
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.is_file() and path.stat().st_size < 1 << 20:
            files[name] = readable(path, "json", inside=directory, error=CheckpointError).read_text(encoding="utf-8", errors="replace")
    return {"hf": json.dumps({"family": config["model_type"], "config": config, "files": files}, sort_keys=True)}


def load_model(directory: str | Path, device: str | torch.device = "cpu", context: int | None = None):
    """(protocol model, tokenizer, translation) of a Hugging Face LM directory, for tracing."""
    directory = Path(directory)
    family, config, t = translate(directory)
    if t.arch != "decoder":
        raise UsageError(f"{directory}: a {family.name} model is an encoder; trace it after fine-tuning: lpa train --init {directory} --data FILE")
    window = min(context or t.positions, t.positions)
    cfg = ModelConfig(arch="decoder", depth=t.depth, width=t.width, zero_init=False, options=t.options)
    model = build_model(cfg, (window,), t.options["vocab"], "tokens", "lm")
    load_weights(model, directory)
    return model.to(device).eval(), directory_tokenizer(directory, config, t.options["vocab"]), t


def directory_tokenizer(directory: Path, config: dict, vocab: int):
    """The directory's tokenizer.json; without any tokenizer files, bytes (when the vocabulary has room)."""
    if not any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")):
        if vocab < 256:
            raise DataError(f"{directory}: no tokenizer files and a vocabulary of {vocab} < 256, so bytes cannot be used as tokens")
        log.warning("%s: no tokenizer files; reading text as UTF-8 bytes (token ids 0-255)", directory)
        return BYTES
    return load_tokenizer(directory, config)
