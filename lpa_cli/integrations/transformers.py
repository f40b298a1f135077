"""LPA inside transformers' `Trainer`: the training loop people who fine-tune already have.

    from transformers import TrainingArguments
    from lpa_cli.integrations.transformers import LPATrainer, lpa_model

    model = lpa_model("path/to/hf-model")           # a directory or a loaded PreTrainedModel
    trainer = LPATrainer(model=model, args=TrainingArguments("out", max_steps=500),
                         train_dataset=tokenized, objective={"loss_power": 0.5})
    trainer.train()                                  # logs loss_depth_0 .. loss_depth_N
    trainer.save_model("out/final")                  # out/final/lpa.safetensors: every lpa command reads it

`lpa_model` turns the Hugging Face model into lpa's protocol model through the same adapter as
`lpa train --init` (`lpa_cli.models.hf`), so a family the adapter does not implement is refused, never
guessed. `LPATrainer` computes the loss with lpa's own objective (the lambda form, weights, ``align``,
the budgeted and sampled head losses: every `ObjectiveConfig` field), so per-depth losses are those of
`lpa train --init` for the same weights, batches and step. Everything else (optimizer, schedule,
accumulation, mixed precision, DDP, callbacks, W&B/TensorBoard/MLflow reporting) is the Trainer's.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

try:
    import transformers
except ImportError as err:  # the module is the integration: without transformers it has nothing to offer
    raise ImportError("lpa_cli.integrations.transformers needs transformers: pip install 'lpa[hf]'") from err

from lpa_core.atomic import write_bytes
from lpa_core.errors import DataError, UsageError
from lpa_core.files import readable
from lpa_cli import __version__
from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
from lpa_cli.data.batch import IGNORE_INDEX, Batch
from lpa_cli.formats.checkpoint import save_checkpoint
from lpa_cli.models.factory import build_from_config
from lpa_cli.models.hf import load as hf_load
from lpa_cli.models.hf.directory import EXPORT_FILES
from lpa_cli.models.hf.families import translate
from lpa_cli.models.open import init_metadata, reinitialise
from lpa_cli.models.protocol import ResidualModel
from lpa_cli.runtime import seed_everything
from lpa_cli.training.objectives import LossOutput, build_objective

CHECKPOINT = "lpa.safetensors"  # the lpa checkpoint `LPATrainer` writes into every save directory


class LPAModel(nn.Module):
    """lpa's model of a Hugging Face model, with the objective the Trainer minimises.

    ``forward(input_ids, attention_mask, labels)`` takes the Trainer's batches in Hugging Face's
    conventions (causal-LM ``labels`` unshifted, -100 where nothing is predicted; class ids for
    classification) and returns ``{"loss", "logits"}`` (logits of the final depth, outside training).
    """

    def __init__(self, model: ResidualModel, cfg: RunConfig, kind: str, tokenizer: Any, metadata: dict[str, str], info: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.cfg, self.kind, self.tokenizer, self.metadata = model, cfg, kind, tokenizer, metadata
        self.info = info  # the task description a checkpoint records (no lpa Task exists here)
        self.objective = build_objective(cfg.objective, model.num_blocks, kind)
        self.generator = torch.Generator().manual_seed(cfg.train.seed + 7919)  # `lpa train`'s depth sampler
        self.step = 0  # set by LPATrainer before each forward (depth schedules follow it)
        self.last: LossOutput | None = None

    def batch(self, input_ids: Tensor, attention_mask: Tensor | None, labels: Tensor | None) -> Batch:
        if self.kind == "lm":  # predict token t+1 from tokens <= t: the last position predicts nothing
            mask = None if attention_mask is None else attention_mask[:, :-1]
            y = (labels if labels is not None else input_ids)[:, 1:].clone()
            if attention_mask is not None:
                y = y.masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
            return Batch(input_ids[:, :-1], y, mask)
        if labels is None:
            raise ValueError("sequence classification needs labels in every training batch")
        return Batch(input_ids, labels, attention_mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> dict[str, Tensor]:
        if token_type_ids is not None and bool((token_type_ids != 0).any()):
            raise ValueError("lpa's encoder reads every token as type 0; sentence pairs (token_type_ids 1) are not implemented")
        batch = self.batch(input_ids, attention_mask, labels)
        out: dict[str, Tensor] = {}
        if labels is not None or self.kind == "lm":
            self.last = self.objective(self.model, batch, self.step, self.generator)
            out["loss"] = self.last.loss
        if not self.training:
            out["logits"] = self.model(batch.x, batch.mask)  # the final depth's prediction, for evaluation
        return out


def lpa_model(source: str | Path | Any, *, kind: str | None = None, objective: ObjectiveConfig | dict[str, Any] | None = None,
              num_labels: int | None = None, context: int | None = None, options: dict[str, Any] | None = None, reinit: str = "",
              seed: int = 0, data: str = "") -> LPAModel:
    """lpa's model of ``source`` (a Hugging Face directory with local safetensors, or a loaded
    ``PreTrainedModel``, which is written to a temporary directory and read back through the adapter).

    ``kind``: ``lm`` or ``classification`` (default: from the config's architectures; encoders
    classify); classification keeps the directory's classifier when it has one of ``num_labels``
    outputs (``num_labels``, default the config's), else starts a new one. ``objective``: `ObjectiveConfig` or its fields (``name`` lpa,
    lpa-local or e2e). ``context``: the longest sequence (default: the model's positions, capped at
    2,048). ``options``: the model options `lpa train --init` takes (``pool``: mean or cls, ``dropout``).
    ``reinit``: modules that start fresh (``head.pooler``). ``seed``: depth sampling's seed. ``data``: a
    task spec (``text:train.txt``, ``classify:texts.csv``) the checkpoints name, so ``lpa trace CKPT``
    needs no ``--data`` (default: none; give ``--data`` to the commands).
    """
    if not isinstance(source, (str, Path)):
        with tempfile.TemporaryDirectory(prefix="lpa-hf-") as tmp:
            source.save_pretrained(tmp, safe_serialization=True)
            if getattr(source, "name_or_path", "") and Path(source.name_or_path).is_dir():
                origin = Path(source.name_or_path)
                for name in EXPORT_FILES:  # the tokenizer, so checkpoints can read and write text: the reading rule's files only
                    src = readable(origin / name, "tokenizer", inside=origin, error=DataError)
                    if src.is_file():
                        write_bytes(Path(tmp) / name, src.read_bytes(), force=True)  # over save_pretrained's own
            return lpa_model(tmp, kind=kind, objective=objective, num_labels=num_labels, context=context, options=options,
                             reinit=reinit, seed=seed, data=data)
    directory = Path(source)
    family, config, t = translate(directory)
    kind = kind or _kind(config, t.arch)
    if kind not in ("lm", "classification"):
        raise UsageError(f"kind must be lm or classification, got {kind!r}")
    if kind == "lm" and t.arch != "decoder":
        raise UsageError(f"{directory}: a {family.name} model is an encoder; it trains for classification")
    obj = objective if isinstance(objective, ObjectiveConfig) else ObjectiveConfig(**(objective or {}))
    out_dim = int(num_labels or config.get("num_labels") or len(config.get("id2label") or {}) or 2) if kind == "classification" else t.options["vocab"]
    window = min(context, t.positions) if context else min(t.positions, hf_load.DEFAULT_CONTEXT_CAP)
    spec = "text" if kind == "lm" else "classify"
    cfg = RunConfig(ModelConfig(init=str(directory), reinit=reinit, options=dict(options or {})), TaskConfig(name=f"{spec}:transformers-trainer", options={"context": window}),
                    obj, TrainConfig(seed=seed))
    cfg = hf_load.resolve_init(cfg, directory)
    opts = {k: v for k, v in cfg.task.options.items() if k != "tokenizer"}  # the checkpoint stores the tokenizer itself
    cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, name=data or "custom", options=opts))
    seed_everything(seed)  # a new classifier starts from the weights `lpa train --init --seed SEED` gives it
    model = build_from_config(cfg, (window,), out_dim, "tokens", kind)
    hf_load.load_weights(model, directory)
    reinitialise(model, reinit)
    labels = config.get("id2label") or {}
    meta = {"context": window, "classes": [labels.get(str(i), str(i)) for i in range(out_dim)]} if kind == "classification" else {"context": window}
    info = {"name": cfg.task.name, "kind": kind, "input_kind": "tokens", "in_shape": [window], "out_dim": out_dim, "n_train": 0, "n_test": 0,
            "description": f"trained with lpa's LPATrainer (transformers {transformers.__version__})", "meta": meta}
    tokenizer = hf_load.directory_tokenizer(directory, config, int(t.options["vocab"]))
    return LPAModel(model, cfg, kind, tokenizer, init_metadata(cfg), info)


def _kind(config: dict, arch: str) -> str:
    names = " ".join(config.get("architectures") or [])
    if arch != "decoder" or "ForSequenceClassification" in names:
        return "classification"
    return "lm"


class LPATrainer(transformers.Trainer):
    """`transformers.Trainer` minimising lpa's objective over every depth of an `LPAModel`.

    ``model``: an `LPAModel` (from `lpa_model`), or a Hugging Face directory or ``PreTrainedModel``,
    converted with ``objective`` (an `ObjectiveConfig` or its fields). Each training log gains
    ``loss_depth_K`` for every depth, the mean over the steps since the last log, so every reporter the
    Trainer has (W&B, TensorBoard, MLflow) sees them. `save_model` and every checkpoint directory get
    ``lpa.safetensors``, which `lpa info`, `trace`, `monotonicity`, `compare`, `export` and `generate` read.
    """

    loss_is_scaled_for_ga = False  # lpa's loss is a per-batch mean: the Trainer divides it for accumulation

    def __init__(self, model: LPAModel | str | Path | Any = None, args: transformers.TrainingArguments | None = None, *,
                 objective: ObjectiveConfig | dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not isinstance(model, LPAModel):
            model = lpa_model(model, objective=objective, seed=args.seed if args is not None else 0)
        elif objective is not None:
            raise UsageError("objective= is for a model LPATrainer converts; an LPAModel already has one (lpa_model(..., objective=))")
        super().__init__(model=model, args=args, **kwargs)
        self._depth_sum: Tensor | None = None
        self._depth_steps = 0

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        lpa = self.accelerator.unwrap_model(model)
        lpa.step = self.state.global_step
        outputs = model(**{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels", "token_type_ids")})
        if lpa.training and lpa.last is not None:
            self._add_depths(lpa.last, lpa.model.num_depths)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def _add_depths(self, out: LossOutput, depths: int) -> None:
        """Sum each depth's loss on the device (no host read per step); NaN marks a depth a step skipped."""
        if self._depth_sum is None:
            self._depth_sum = torch.zeros(2, depths, device=out.losses.device)
        index = torch.tensor(out.depths, device=out.losses.device)
        self._depth_sum[0].index_add_(0, index, out.losses.float())
        self._depth_sum[1].index_add_(0, index, torch.ones_like(out.losses, dtype=torch.float))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._depth_sum is not None:
            sums, counts = self._depth_sum.tolist()
            for k, (total, n) in enumerate(zip(sums, counts)):
                if n:
                    logs[f"loss_depth_{k}"] = total / n
            self._depth_sum = None
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """``lpa.safetensors`` (what lpa reads) and ``model.safetensors`` (this module's state, tied weights
        once: what ``train(resume_from_checkpoint=...)`` reads), instead of the Trainer's state-dict dump."""
        if not self.args.should_save:
            return
        directory = Path(output_dir or self.args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        lpa = self.accelerator.unwrap_model(self.model)
        safetensors.torch.save_model(lpa, str(directory / "model.safetensors"), metadata={"format": "pt"})
        save_lpa_checkpoint(lpa, directory, self.args, self.state.global_step)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(str(directory))


    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Resuming: a tied weight is stored once, so its other name is "missing" though loaded."""
        seen: dict[int, int] = {}
        named = list(self.accelerator.unwrap_model(self.model).named_parameters(remove_duplicate=False))
        for _, p in named:
            seen[id(p)] = seen.get(id(p), 0) + 1
        tied = {name for name, p in named if seen[id(p)] > 1}
        super()._issue_warnings_after_load(load_result._replace(missing_keys=[k for k in load_result.missing_keys if k not in tied]))


def save_lpa_checkpoint(lpa: LPAModel, directory: Path, args: transformers.TrainingArguments | None = None, step: int = 0) -> Path:
    """Write ``directory/lpa.safetensors``: the protocol model, its config (the Trainer's settings as
    far as lpa has them) and the Hugging Face metadata `lpa export --format hf` needs."""
    train = TrainConfig(seed=lpa.cfg.train.seed)
    if args is not None:
        train = dataclasses.replace(train, steps=max(step, 0), lr=float(args.learning_rate), batch_size=int(args.per_device_train_batch_size),
                                    optimizer="adamw", weight_decay=float(args.weight_decay), warmup=int(args.warmup_steps or 0),
                                    grad_accum=int(args.gradient_accumulation_steps), seed=int(args.seed), grad_clip=float(args.max_grad_norm or 0))
    cfg = dataclasses.replace(lpa.cfg, train=train)
    training = {"steps": step, "trained_by": "lpa_cli.integrations.transformers.LPATrainer", "lpa_version": __version__,
                "transformers_version": transformers.__version__, "torch_version": torch.__version__.split("+")[0]}
    path = directory / CHECKPOINT
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, lpa.model, cfg, lpa.info, {}, training, force=True, tokenizer=lpa.tokenizer, extra=lpa.metadata)
    return path


__all__ = ["CHECKPOINT", "LPAModel", "LPATrainer", "lpa_model", "save_lpa_checkpoint"]
