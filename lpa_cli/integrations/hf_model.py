"""lpa's model of a Hugging Face model for transformers' `Trainer` (`LPAModel`, `lpa_model`) and the
files it writes: the lpa checkpoint beside a Hugging Face model folder, the tokenizer it stores.
`lpa_cli.integrations.transformers` (the `LPATrainer`) is built on it."""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn

try:
    import transformers
except ImportError as err:  # the module is the integration: without transformers it has nothing to offer
    raise ImportError("lpa_cli.integrations needs transformers: pip install 'lpa[hf]'") from err

from lpa_core.atomic import write_bytes
from lpa_core.errors import CheckpointError, DataError, UsageError
from lpa_core.files import readable
from lpa_cli import __version__
from lpa_cli.config import SCHEDULES, ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
from lpa_cli.data.batch import IGNORE_INDEX, Batch
from lpa_cli.formats.checkpoint import read_info, save_checkpoint
from lpa_cli.formats.tokenizer import BYTES
from lpa_cli.models.factory import build_from_config
from lpa_cli.models.hf import load as hf_load
from lpa_cli.models.hf.directory import EXPORT_FILES
from lpa_cli.models.hf.families import translate
from lpa_cli.models.open import init_metadata, reinitialise
from lpa_cli.models.protocol import ResidualModel
from lpa_cli.runtime import seed_everything
from lpa_cli.serving.export import export_prefix
from lpa_cli.training.objectives import LossOutput, build_objective

CHECKPOINT = "lpa.safetensors"  # the lpa checkpoint `LPATrainer` writes into every save directory

log = logging.getLogger(__name__)


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
        self.hf_names: dict[str, str] | None = None  # lpa's parameter name -> transformers' (the adapter's renaming), where plain

    @property
    def _no_split_modules(self) -> list[str]:
        """The block classes, for Accelerate's FSDP auto-wrap (transformers models name theirs the same way):
        each residual block is sharded as one unit, as transformers' own decoder layers are."""
        return sorted({type(b).__name__ for b in self.model.blocks})

    @staticmethod
    def right_padding(attention_mask: Tensor | None) -> Tensor | None:
        """For left-padded rows (a tokenizer with ``padding_side="left"``): the (B, T) index that rolls each
        row so its tokens come first (``row.gather(1, index)``), so positions count from each text's first
        token, as for the same rows unpadded. None when no row starts with padding."""
        if attention_mask is None or bool(attention_mask[:, 0].all()):
            return None
        T = attention_mask.shape[1]
        lead = (attention_mask.long().cumsum(1) == 0).sum(1, keepdim=True)  # (B, 1) leading pads
        return (torch.arange(T, device=attention_mask.device)[None, :] + lead) % T

    def to_transformers(self, depth: int | None = None):
        """transformers' own model of this model's first ``depth`` blocks (default: all) and the shared head,
        in this process: exactly its depth-``depth`` predictions, made by the code of `lpa export --format hf`."""
        with tempfile.TemporaryDirectory(prefix="lpa-to-hf-") as tmp:
            checkpoint = save_lpa_checkpoint(self, Path(tmp) / "lpa")
            hf = Path(tmp) / "hf"
            export_prefix(checkpoint, depth or self.model.num_blocks, hf, format="hf", assistant_exit=False)
            auto = transformers.AutoModelForCausalLM if self.kind == "lm" else transformers.AutoModelForSequenceClassification
            return auto.from_pretrained(hf, local_files_only=True)  # the folder just written: never the hub

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
        index = self.right_padding(attention_mask)
        if index is not None:
            attention_mask, input_ids = attention_mask.gather(1, index), input_ids.gather(1, index)
            labels = labels.gather(1, index) if labels is not None and self.kind == "lm" else labels
        batch = self.batch(input_ids, attention_mask, labels)
        out: dict[str, Tensor] = {}
        if labels is not None or self.kind == "lm":
            self.last = self.objective(self.model, batch, self.step, self.generator)
            out["loss"] = self.last.loss
        if not self.training:  # the final depth's prediction, for evaluation and predict()
            if self.kind == "lm":  # one per input position, as a causal LM's (position t predicts label t + 1): labels align
                logits = self.model(input_ids, attention_mask)
                out["logits"] = logits if index is None else torch.empty_like(logits).scatter_(1, index[..., None].expand_as(logits), logits)
            else:
                out["logits"] = self.model(batch.x, batch.mask)
        return out


def lpa_model(source: str | Path | Any, *, kind: str | None = None, objective: ObjectiveConfig | dict[str, Any] | None = None,
              num_labels: int | None = None, context: int | None = None, options: dict[str, Any] | None = None, reinit: str = "",
              seed: int = 0, data: str = "", tokenizer: Any = None) -> LPAModel:
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
    ``tokenizer``: the one the checkpoints store, so lpa's commands read text as the model does: a
    transformers tokenizer (`LPATrainer` passes its ``processing_class``), ``"bytes"`` (UTF-8 bytes as
    ids, asked for explicitly), or None: the model folder's tokenizer files, else, for a model loaded
    from the hub (``name_or_path`` an id), the files in the local hub cache; a model with none of these
    is refused in one line, never read as bytes.
    """
    if not isinstance(source, (str, Path)):
        with tempfile.TemporaryDirectory(prefix="lpa-hf-") as tmp:
            source.save_pretrained(tmp, safe_serialization=True)
            for name, src in tokenizer_files(getattr(source, "name_or_path", "") or "").items():  # the reading rule's files only
                write_bytes(Path(tmp) / name, src.read_bytes(), force=True)  # over save_pretrained's own
            made = lpa_model(tmp, kind=kind, objective=objective, num_labels=num_labels, context=context, options=options,
                             reinit=reinit, seed=seed, data=data, tokenizer=tokenizer)
            origin = str(getattr(source, "name_or_path", "") or "a PreTrainedModel in memory")
            made.cfg = dataclasses.replace(made.cfg, model=dataclasses.replace(made.cfg.model, init=origin))  # not the temporary folder
            return made
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
    made = LPAModel(model, cfg, kind, _tokenizer(tokenizer, directory, config, int(t.options["vocab"])), init_metadata(cfg), info)
    made.hf_names = family.names(t.depth, t.options, kind) if family.names is not None else None
    return made


def tokenizer_files(name_or_path: str) -> dict[str, Path]:
    """The tokenizer and generation files of a model: from its folder, or, for a hub id, from the local
    hub cache (huggingface_hub's own lookup; nothing is downloaded), each through the reading rule."""
    if not name_or_path:
        return {}
    folder = Path(name_or_path)
    if folder.is_dir():
        found = {name: folder / name for name in EXPORT_FILES}
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return {}
        cached = {name: try_to_load_from_cache(name_or_path, name) for name in EXPORT_FILES}
        found = {name: Path(p) for name, p in cached.items() if isinstance(p, str)}
    return {name: p for name, p in found.items() if readable(p, "tokenizer", inside=p.parent, error=DataError).is_file()}


def _tokenizer(given: Any, directory: Path, config: dict, vocab: int):
    """The tokenizer a checkpoint stores (see `lpa_model`'s ``tokenizer``)."""
    if isinstance(given, str) and given == "bytes":
        return BYTES
    if given is not None:
        if not callable(getattr(given, "save_pretrained", None)):
            raise UsageError(f"tokenizer= takes a transformers tokenizer or \"bytes\", got {type(given).__name__}")
        with tempfile.TemporaryDirectory(prefix="lpa-tok-") as tmp:
            given.save_pretrained(tmp)
            return hf_load.directory_tokenizer(Path(tmp), config, vocab)
    if not any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")) and vocab > 256:
        raise UsageError(f"the model has no tokenizer files in its folder or the local hub cache, and a vocabulary of {vocab:,} "
                         "is not bytes: give the tokenizer, LPATrainer(processing_class=tok) or lpa_model(model, tokenizer=tok) "
                         "(tokenizer=\"bytes\" if its ids really are bytes)")
    return hf_load.directory_tokenizer(directory, config, vocab)


def _kind(config: dict, arch: str) -> str:
    names = " ".join(config.get("architectures") or [])
    if arch != "decoder" or "ForSequenceClassification" in names:
        return "classification"
    return "lm"


def load_weights_into(model: ResidualModel, path: Path) -> None:
    """``path``'s tensors into ``model`` as they are (a resume is bit-exact), through lpa's checkpoint reader."""
    path = readable(path, error=CheckpointError)
    info = read_info(path)
    tensors = safetensors.torch.load_file(str(path))
    for alias, target in info.aliases.items():
        tensors[alias] = tensors[target]
    model.load_state_dict(tensors, strict=True)


def hf_folder(checkpoint: Path, directory: Path, depth: int) -> bool:
    """The Hugging Face files of ``checkpoint`` at full ``depth`` into ``directory``, through `lpa export
    --format hf`'s own code; False (with a warning) for a model transformers has no class for (a
    mean-pooled BERT classifier): the folder then holds ``lpa.safetensors`` for lpa's commands."""
    try:
        export_prefix(checkpoint, depth, directory, force=True, verify=False, format="hf", assistant_exit=False)
        return True
    except UsageError as err:
        log.warning("%s: no Hugging Face model written (%s); lpa.safetensors is there for lpa's commands", directory, err)
        return False


def save_lpa_checkpoint(lpa: LPAModel, directory: Path, args: transformers.TrainingArguments | None = None, step: int = 0,
                        state: dict[str, Tensor] | None = None) -> Path:
    """Write ``directory/lpa.safetensors``: the protocol model, its config (the Trainer's settings as
    far as lpa has them) and the Hugging Face metadata `lpa export --format hf` needs."""
    train = TrainConfig(seed=lpa.cfg.train.seed)
    trainer_settings: dict[str, Any] = {}
    if args is not None:  # what the Trainer ran: its schedule, warm-up, precision, accumulation
        schedule = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
        max_steps = max(step, int(args.max_steps or 0))
        warmup = int(args.warmup_steps or 0) or int(float(getattr(args, "warmup_ratio", 0) or 0) * max_steps)
        precision = "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32"
        train = dataclasses.replace(train, steps=max(step, 0), lr=float(args.learning_rate), batch_size=int(args.per_device_train_batch_size),
                                    optimizer="adamw", weight_decay=float(args.weight_decay), warmup=warmup, precision=precision,
                                    schedule=schedule if schedule in SCHEDULES else train.schedule,
                                    grad_accum=int(args.gradient_accumulation_steps), seed=int(args.seed), grad_clip=float(args.max_grad_norm or 0))
        trainer_settings = {"lr_scheduler_type": schedule, "optim": str(getattr(args.optim, "value", args.optim)), "warmup_steps": warmup,
                            "precision": precision, "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
                            "per_device_train_batch_size": int(args.per_device_train_batch_size), "world_size": int(args.world_size)}
    cfg = dataclasses.replace(lpa.cfg, train=train)
    training = {"steps": step, "trained_by": "lpa_cli.integrations.transformers.LPATrainer", "lpa_version": __version__,
                "transformers_version": transformers.__version__, "torch_version": torch.__version__.split("+")[0],
                "trainer_settings": trainer_settings}
    path = directory / CHECKPOINT
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, lpa.model, cfg, lpa.info, {}, training, force=True, tokenizer=lpa.tokenizer, extra=lpa.metadata, state=state)
    return path


__all__ = ["CHECKPOINT", "LPAModel", "hf_folder", "load_weights_into", "lpa_model", "save_lpa_checkpoint", "tokenizer_files"]
