"""Where a model comes from and what of it trains.

- Built from the registry (``--arch``), from the user's own factory (``--model package.module:function``
  with ``--set model.options.KEY=VALUE`` as its keyword arguments), or started from existing weights
  (``--init``: a Hugging Face model directory, through `lpa_cli.hf`, or an lpa checkpoint).
- ``--train-only all|blocks|head`` freezes the rest; ``--lora-rank R`` trains LoRA adapters (peft)
  on the blocks' linear layers instead of their weights, merged back into plain weights before the
  checkpoint is saved, so every other command reads the result as an ordinary model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from analyzers.errors import CheckpointError, UsageError
from lpa_cli.config import RunConfig
from lpa_cli.models.factory import build_from_config, check_factory
from lpa_cli.models.protocol import ResidualModel

log = logging.getLogger(__name__)


# What a fine-tune of a pretrained transformer starts from when the user sets nothing: Hugging Face
# Trainer's defaults (AdamW at 5e-5, batch 8, linear decay to 0, no warmup or weight decay, 3 epochs).
# The toy tasks' defaults (Adam at 2e-3, batch 512, 2000 steps) would wreck pretrained weights.
FINETUNE_DEFAULTS = {"optimizer": "adamw", "lr": 5e-5, "batch_size": 8, "schedule": "linear", "warmup": 0, "weight_decay": 0.0,
                     "epochs": 3.0}
TRANSFORMERS = ("gpt", "decoder", "encoder", "vit")


def finetune_defaults(init: str | Path | None, steps_given: bool = False) -> dict[str, dict[str, object]]:
    """The training defaults for starting from ``init``: `FINETUNE_DEFAULTS` for a pretrained
    transformer (a Hugging Face directory, or an lpa checkpoint of a transformer), else none; the
    user's own step count (``steps_given``) replaces the epochs."""
    if not init:
        return {}
    path = Path(init)
    pretrained = path.is_dir()
    if path.is_file():
        from lpa_cli.checkpoint import read_info

        pretrained = read_info(path).config.model.arch in TRANSFORMERS
    if not pretrained:
        return {}
    return {"train": {k: v for k, v in FINETUNE_DEFAULTS.items() if not (steps_given and k == "epochs")}}


def describe_defaults(cfg: RunConfig, defaults: dict[str, dict[str, object]]) -> str:
    """One line naming the fine-tuning defaults ``cfg`` kept (the user overrode the others)."""
    t = cfg.train
    kept = {k: v for k, v in defaults.get("train", {}).items() if getattr(t, k) == v}
    if not kept:
        return ""
    names = {"optimizer": "optimizer {}", "lr": "lr {:g}", "batch_size": "batch {}", "schedule": "{} decay", "warmup": "warmup {}",
             "weight_decay": "weight decay {:g}", "epochs": "{:g} epochs"}
    flags = {"lr": "--lr", "batch_size": "--batch-size", "epochs": "--steps"}
    override = ", ".join(flags[k] for k in kept if k in flags) + ", --set train.KEY=VALUE"
    return f"fine-tuning defaults for a pretrained model: {', '.join(names[k].format(v) for k, v in kept.items())} (override with {override})"


def resolve_init(cfg: RunConfig, trust_factory: bool = False) -> RunConfig:
    """With ``--init``: the model settings come from where the weights do (a Hugging Face config, or
    the lpa checkpoint's own model config). A checkpoint's factory is used only when it is the one
    ``cfg`` names (``--model``) or ``trust_factory`` allows it."""
    init = cfg.model.init
    if not init:
        return cfg
    path = Path(init)
    if path.is_dir():
        from lpa_cli import hf

        return hf.resolve_init(cfg, path)
    if not path.is_file():
        raise UsageError(f"--init {init}: no such file or directory")
    from lpa_cli.checkpoint import read_info

    info = read_info(path)
    check_factory(info.config.model.factory, path, cfg.model.factory, trust_factory)
    model = dataclasses.replace(info.config.model, init=str(path))
    options = dict(cfg.task.options)
    if info.task.get("input_kind") == "tokens" and cfg.task.name.partition(":")[0] in ("text", "classify", "tokens"):
        # the same tokens and (for position embeddings) the same context as the model was made for
        if "tokenizer" in info.metadata and cfg.task.name.partition(":")[0] != "tokens":
            options.setdefault("tokenizer", str(path))
        options.setdefault("context", int(info.task["in_shape"][0]))
    return dataclasses.replace(cfg, model=model, task=dataclasses.replace(cfg.task, options=options))


def complete(cfg: RunConfig, task) -> RunConfig:
    """Settings the data decides: the token vocabulary of a token model (a classifier's output size is
    its classes, so the embedding's size must be written down for the checkpoint to rebuild it)."""
    m = cfg.model
    if m.factory or task.input_kind != "tokens" or m.options.get("vocab"):
        return cfg
    from lpa_cli.registry import ARCHITECTURES

    if m.arch in ARCHITECTURES and "vocab" in {f.name for f in dataclasses.fields(ARCHITECTURES[m.arch].load_options())}:
        vocab = task.tokenizer.vocab_size if task.tokenizer is not None else int(task.meta.get("vocab", task.out_dim))
        return dataclasses.replace(cfg, model=dataclasses.replace(m, options=dict(m.options) | {"vocab": vocab}))
    return cfg


def build_initial_model(cfg: RunConfig, task) -> ResidualModel:
    """The model to train: built from ``cfg.model`` and, with ``--init``, given the starting weights."""
    model = build_from_config(cfg, task.in_shape, task.out_dim, task.input_kind, task.kind)
    init = cfg.model.init
    if not init:
        return model
    path = Path(init)
    if path.is_dir():
        from lpa_cli import hf

        hf.load_weights(model, path)
        return model
    from lpa_cli.checkpoint import load_checkpoint

    source = load_checkpoint(path, factory=cfg.model.factory)  # resolve_init checked it is the one allowed
    theirs = source.model.state_dict()
    ours = model.state_dict()
    fresh = sorted(k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape)
    if any(not k.startswith("head.") for k in fresh):
        raise CheckpointError(f"--init {path}: its weights do not fit this model ({', '.join(fresh[:3])} ...)")
    if fresh:
        log.warning("--init %s: new head for this task (%s start fresh)", path, ", ".join(fresh))
    model.load_state_dict({k: theirs[k] for k in ours if k not in fresh}, strict=False)
    return model


def init_metadata(cfg: RunConfig) -> dict[str, str]:
    """Metadata a checkpoint keeps about the weights it started from (a Hugging Face family and
    config, so `lpa export --format hf` can give the model back)."""
    path = Path(cfg.model.init)
    if path.is_dir():
        from lpa_cli import hf

        return hf.checkpoint_metadata(path)
    from lpa_cli.checkpoint import read_info

    meta = read_info(path).metadata
    return {"hf": meta["hf"]} if "hf" in meta else {}


def prepare_training(model: ResidualModel, cfg: RunConfig) -> tuple[list[nn.Parameter], Callable[[ResidualModel], None]]:
    """(the parameters to optimise, what to do to the model before it is saved)."""
    t = cfg.train
    if t.lora_rank:
        return _lora(model, cfg)
    groups = {"all": [model], "blocks": [model.blocks], "head": [model.head]}[t.train_only]
    keep = {id(p) for g in groups for p in g.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [p for p in model.parameters() if p.requires_grad], lambda m: None


def _lora(model: ResidualModel, cfg: RunConfig) -> tuple[list[nn.Parameter], Callable[[ResidualModel], None]]:
    """LoRA adapters (peft) on every linear layer inside the blocks; the head trains too unless
    ``--train-only blocks``. Merged into the plain weights by the returned function."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise UsageError("--lora-rank needs the optional extra: pip install 'lpa[hf]' (or pip install peft)") from None
    t = cfg.train
    targets = sorted({name.rsplit(".", 1)[-1] for name, m in model.blocks.named_modules() if isinstance(m, nn.Linear)})
    if not targets:
        raise UsageError("--lora-rank: the blocks have no linear layers to adapt")
    for p in model.parameters():
        p.requires_grad_(False)
    lora = LoraConfig(r=t.lora_rank, lora_alpha=t.lora_alpha, target_modules=targets, lora_dropout=0.0, bias="none")
    for i, block in enumerate(model.blocks):
        model.blocks[i] = inject_adapter_in_model(lora, block)
    if t.train_only != "blocks":
        for p in model.head.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    return params, merge_lora


@torch.no_grad()
def merge_lora(model: ResidualModel) -> None:
    """Fold every LoRA adapter into its base layer and put the plain layer back in its place."""
    from peft.tuners.lora import LoraLayer

    for block in model.blocks:
        for name, module in list(block.named_modules()):
            if isinstance(module, LoraLayer):
                module.merge()
                parent = block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else block
                setattr(parent, name.rsplit(".", 1)[-1], module.get_base_layer())
    for p in model.parameters():
        p.requires_grad_(True)
