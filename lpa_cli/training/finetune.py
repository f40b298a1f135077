"""Fine-tuning: the training defaults a pretrained model gets, and what of a model trains.

- A pretrained transformer (``--init`` a Hugging Face directory or an lpa checkpoint of one; where
  a model comes from is `lpa_cli.models.open`) trains on Hugging Face Trainer's defaults.
- ``--train-only all|blocks|head`` freezes the rest; ``--lora-rank R`` trains LoRA adapters (peft)
  on the blocks' linear layers instead of their weights, merged back into plain weights before the
  checkpoint is saved, so every other command reads the result as an ordinary model.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lpa_core.errors import UsageError
from lpa_cli.config import RunConfig
from lpa_cli.formats.checkpoint import read_info
from lpa_cli.models.hf.families import translate
from lpa_cli.models.open import source_kind
from lpa_cli.models.protocol import ResidualModel

log = logging.getLogger(__name__)


# What a fine-tune of a pretrained transformer starts from when the user sets nothing: Hugging Face
# Trainer's defaults (AdamW at 5e-5, batch 8, linear decay to 0, no warmup or weight decay, 3 epochs).
# The toy tasks' defaults (Adam at 2e-3, batch 512, 2000 steps) would wreck pretrained weights.
# transformers' Trainer's defaults (TrainingArguments), its gradient clipping at 1.0 included
FINETUNE_DEFAULTS = {"optimizer": "adamw", "lr": 5e-5, "batch_size": 8, "schedule": "linear", "warmup": 0, "weight_decay": 0.0,
                     "epochs": 3.0, "grad_clip": 1.0}


# On top of those, LPA fine-tuning of a pretrained encoder (a BERT classifier) reads each depth's mean
# token state instead of [CLS], at lr 2e-4 with the head at 10x that: `lpa reproduce minilm` measured
# that only with these do the shallow depths leave chance (docs/hf.md, docs/results.md "minilm").
LPA_ENCODER_DEFAULTS = {"train": {"lr": 2e-4, "head_lr_scale": 10.0}, "model": {"options": {"pool": "mean"}}}

TRANSFORMERS = ("gpt", "decoder", "encoder", "vit")


def finetune_defaults(init: str | Path | None, steps_given: bool = False, objective: str = "lpa") -> dict[str, dict[str, object]]:
    """The training defaults for starting from ``init``: `FINETUNE_DEFAULTS` for a pretrained
    transformer (a Hugging Face directory, or an lpa checkpoint of a transformer), else none, and
    `LPA_ENCODER_DEFAULTS` over them when an LPA objective fine-tunes an encoder; the user's own step
    count (``steps_given``) replaces the epochs."""
    if not init:
        return {}
    path = Path(init)
    arch = read_info(path).config.model.arch if source_kind(path) == "checkpoint" else translate(path)[2].arch
    if arch not in TRANSFORMERS:
        return {}
    out: dict[str, dict[str, object]] = {"train": {k: v for k, v in FINETUNE_DEFAULTS.items() if not (steps_given and k == "epochs")}}
    if arch == "encoder" and objective != "e2e":
        out["train"] |= LPA_ENCODER_DEFAULTS["train"]
        out["model"] = copy.deepcopy(LPA_ENCODER_DEFAULTS["model"])
    return out


def describe_defaults(cfg: RunConfig, defaults: dict[str, dict[str, object]]) -> str:
    """One line naming the fine-tuning defaults ``cfg`` kept (the user overrode the others)."""
    t = cfg.train
    kept = {k: v for k, v in defaults.get("train", {}).items() if getattr(t, k) == v}
    pool = (defaults.get("model") or {}).get("options", {}).get("pool")
    if not kept and not (pool and cfg.model.options.get("pool") == pool):
        return ""
    names = {"optimizer": "optimizer {}", "lr": "lr {:g}", "batch_size": "batch {}", "schedule": "{} decay", "warmup": "warmup {}",
             "weight_decay": "weight decay {:g}", "epochs": "{:g} epochs", "head_lr_scale": "head lr x{:g}", "grad_clip": "clip {:g}"}
    flags = {"lr": "--lr", "batch_size": "--batch-size", "epochs": "--steps", "head_lr_scale": "--head-lr-scale", "grad_clip": "--clip-grad"}
    said = [names[k].format(v) for k, v in kept.items()]
    if pool and cfg.model.options.get("pool") == pool:
        said.append(f"{pool} pooling (--set model.options.pool=cls for BERT's own)")
    override = ", ".join(flags[k] for k in kept if k in flags) + ", --set train.KEY=VALUE"
    return f"fine-tuning defaults for a pretrained model: {', '.join(said)} (override with {override})"
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
