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

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lpa_cli.integrations.hf_model import CHECKPOINT, LPAModel, hf_folder, load_weights_into, lpa_model, save_lpa_checkpoint, transformers
from lpa_core.errors import UsageError
from lpa_cli.config import ObjectiveConfig
from lpa_cli.training.objectives import LossOutput


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
        if not isinstance(model, LPAModel):  # the tokenizer the user trains with is the one its checkpoints store
            model = lpa_model(model, objective=objective, seed=args.seed if args is not None else 0, tokenizer=kwargs.get("processing_class"))
        elif objective is not None:
            raise UsageError("objective= is for a model LPATrainer converts; an LPAModel already has one (lpa_model(..., objective=))")
        super().__init__(model=model, args=args, **kwargs)
        self._depth_sum: Tensor | None = None
        self._eval_sum: Tensor | None = None  # evaluation: per-depth loss sums, counts and (classification) right answers
        self._depth_steps = 0

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        lpa = self.accelerator.unwrap_model(model)
        lpa.step = self.state.global_step
        outputs = model(**{k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "labels", "token_type_ids")})
        if lpa.training and lpa.last is not None:
            self._add_depths(lpa.last, lpa.model.num_depths)
        elif lpa.last is not None and "loss" in outputs:
            self._add_eval(lpa, inputs, lpa.last)
        return (outputs["loss"], outputs) if return_outputs else outputs["loss"]

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """transformers' own rule (no decay for biases and norms, told apart by name and type), applied to
        the names the parameters have in the transformers model: lpa's names (``norm1``) would slip past
        its patterns and decay the norms. Families the adapter converts by more than a renaming: the
        same rule on lpa's names, every module whose class is a norm counted as one."""
        lpa = self.accelerator.unwrap_model(model)
        names = getattr(lpa, "hf_names", None)
        ours = dict(lpa.model.named_parameters())
        if names is None or not set(ours) <= set(names):
            norms = {id(p) for m in lpa.modules() if "norm" in type(m).__name__.lower() for p in m.parameters(recurse=False)}
            return [n for n, p in lpa.named_parameters() if id(p) not in norms and "bias" not in n]
        proxy = nn.Module()  # a module tree under transformers' names holding the same parameters
        for mine, p in ours.items():
            *path, leaf = names[mine].split(".")
            node = proxy
            for part in path:
                if not hasattr(node, part):
                    node.add_module(part, nn.Module())
                node = getattr(node, part)
            node.register_parameter(leaf, p)
        back = {names[mine]: f"model.{mine}" for mine in ours}
        return [back[n] for n in super().get_decay_parameter_names(proxy)]

    def _add_eval(self, lpa: LPAModel, inputs: dict[str, Any], out: LossOutput) -> None:
        """An evaluation batch's per-depth losses (weighted by its rows) and, for classification, each
        depth's right answers: what `log` turns into ``eval_loss_depth_K`` / ``eval_accuracy_depth_K``."""
        D = lpa.model.num_depths
        if self._eval_sum is None:
            self._eval_sum = torch.zeros(3, D, device=out.losses.device)
        rows = float(inputs["input_ids"].shape[0])
        index = torch.tensor(out.depths, device=out.losses.device)
        self._eval_sum[0].index_add_(0, index, out.losses.detach().float() * rows)
        self._eval_sum[1].index_add_(0, index, torch.full_like(out.losses, rows, dtype=torch.float))
        if lpa.kind == "classification":
            batch = lpa.batch(inputs["input_ids"], inputs.get("attention_mask"), inputs["labels"])
            with torch.no_grad():
                preds = lpa.model.predictions(batch.x, list(range(D)), attention_mask=batch.mask)
            self._eval_sum[2] += torch.stack([(p.argmax(-1) == batch.y).sum() for p in preds]).float()

    def _add_depths(self, out: LossOutput, depths: int) -> None:
        """Sum each depth's loss on the device (no host read per step); NaN marks a depth a step skipped."""
        if self._depth_sum is None:
            self._depth_sum = torch.zeros(2, depths, device=out.losses.device)
        index = torch.tensor(out.depths, device=out.losses.device)
        self._depth_sum[0].index_add_(0, index, out.losses.float())
        self._depth_sum[1].index_add_(0, index, torch.ones_like(out.losses, dtype=torch.float))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._depth_sum is not None:  # summed over processes (DDP, FSDP): log() runs on every rank
            sums, counts = self.accelerator.reduce(self._depth_sum, reduction="sum").tolist()
            for k, (total, n) in enumerate(zip(sums, counts)):
                if n:
                    logs[f"loss_depth_{k}"] = total / n
            self._depth_sum = None
        prefix = next((key[: -len("_loss")] for key in logs if key.endswith("_loss") and key != "train_loss"), None)
        if prefix is not None and self._eval_sum is not None:  # evaluate() / predict(): the whole trajectory, not the last depth alone
            sums, counts, right = self.accelerator.reduce(self._eval_sum, reduction="sum").tolist()
            for k, (total, n) in enumerate(zip(sums, counts)):
                if n:
                    logs[f"{prefix}_loss_depth_{k}"] = total / n
                    if self.accelerator.unwrap_model(self.model).kind == "classification":
                        logs[f"{prefix}_accuracy_depth_{k}"] = right[k] / n
            self._eval_sum = None
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Every checkpoint folder and `save_model`: a Hugging Face model folder (config.json, the weights under
        transformers' names, the tokenizer, the generation config: `from_pretrained` loads it, its logits
        are the final depth's) with ``lpa.safetensors`` beside it (what lpa's commands and a resume read)."""
        if not self.args.should_save:
            return
        directory = Path(output_dir or self.args.output_dir)
        directory.mkdir(parents=True, exist_ok=True)
        lpa = self.accelerator.unwrap_model(self.model)
        # under FSDP the Trainer hands the gathered full state (``model.``-prefixed, LPAModel's names); else the module's own
        state = None if state_dict is None else {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
        hf_folder(save_lpa_checkpoint(lpa, directory, self.args, self.state.global_step, state=state), directory, lpa.model.num_blocks)
        if self.processing_class is not None:  # the user's own tokenizer files, over the exported ones
            self.processing_class.save_pretrained(str(directory))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        """Resume from the folder's ``lpa.safetensors``: the exact tensors lpa saved (tied weights once)."""
        path = Path(resume_from_checkpoint) / CHECKPOINT
        if not path.is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_weights_into(self.accelerator.unwrap_model(model or self.model).model, path)

    def _load_best_model(self) -> None:
        best = self.state.best_model_checkpoint
        if best and (Path(best) / CHECKPOINT).is_file():
            self._load_from_checkpoint(best)
        else:
            super()._load_best_model()


__all__ = ["CHECKPOINT", "LPAModel", "LPATrainer", "lpa_model", "save_lpa_checkpoint"]
