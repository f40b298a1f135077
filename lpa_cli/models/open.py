"""Where a model comes from, decided once: an lpa checkpoint (rebuilt from its own config, its factory
only as the user allows), a Hugging Face directory, or the registry / the user's factory for a fresh one."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as st_load_file

from lpa_core.files import readable
from lpa_core.errors import CheckpointError, LpaError, UsageError
from lpa_cli.config import RunConfig
from lpa_cli.formats.checkpoint import CUSTOM, Checkpoint, CheckpointInfo, checkpoint_error, read_header, read_info
from lpa_cli.formats.hashes import check_metadata_hash, tensor_hash
from lpa_cli.models.factory import build_from_config, check_factory
from lpa_cli.models.hf import load as hf_load
from lpa_cli.models.hf.directory import hf_block, is_hf_dir
from lpa_cli.models.hf.families import FAMILIES
from lpa_cli.models.protocol import ResidualModel
from lpa_cli.registry import ARCHITECTURES

log = logging.getLogger(__name__)


Source = Literal["checkpoint", "hf"]


def source_kind(path: str | Path, option: str = "--init") -> Source:
    """Where weights at ``path`` come from: a Hugging Face model directory (``config.json`` plus
    safetensors) or an lpa checkpoint file. The one place lpa decides it; ``option`` names the flag in
    the error."""
    path = Path(path)
    if is_hf_dir(path):
        return "hf"
    if path.is_dir():
        raise UsageError(f"{option} {path}: a folder with no config.json, so not a Hugging Face model directory")
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file or directory")
    readable(path, "checkpoint", error=UsageError)  # a FIFO or a device: one line, never a hang
    return "checkpoint"


def _build(path: Path, info: CheckpointInfo, device: str | torch.device | None, factory: str, trust_factory: bool) -> ResidualModel:
    """The model the config describes (on ``device``; "meta" allocates nothing), once the user has
    allowed the factory it names, if any."""
    check_factory(info.config.model.factory, path, factory, trust_factory)
    task = info.task
    try:
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return build_from_config(info.config, tuple(task["in_shape"]), int(task["out_dim"]), task.get("input_kind", "vector"), task["kind"])
    except LpaError as err:
        raise checkpoint_error(path, f"its config cannot build a model ({err})") from None
    except (ValueError, RuntimeError, TypeError, OverflowError, MemoryError) as err:
        raise checkpoint_error(path, f"its config cannot build a model ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None


def check_consistency(path: str | Path, info: CheckpointInfo | None = None, model: ResidualModel | None = None, *,
                      factory: str = "", trust_factory: bool = False) -> None:
    """The config's model has exactly the file's tensors, names and shapes (from the header only).

    The model is built on the meta device, so a config that claims a huge input or a negative width is
    refused without allocating anything. A model built by a factory is built only as `load_checkpoint`
    allows (``factory``, ``trust_factory``).
    """
    path = Path(path)
    info = info or read_info(path)
    if "hf" in info.metadata:  # what export --format hf would write from: validated on opening, as the config is
        hf_block(info.metadata["hf"], str(path), FAMILIES)
    header, _ = read_header(path)
    stored = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    for alias, target in info.aliases.items():
        if target not in stored:
            raise checkpoint_error(path, f"alias {alias!r} points to missing tensor {target!r}")
        stored[alias] = stored[target]
    if model is None:
        if info.config.model.arch == CUSTOM and not info.config.model.factory:
            return  # a model built in Python: checked when the caller passes it
        if info.config.model.arch != CUSTOM:  # every built-in block has parameters; a factory's might not
            _check_depth(path, info.config.model.depth, stored)
        model = _build(path, info, "meta", factory, trust_factory)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise checkpoint_error(path, f"config and tensors disagree: the config's {info.config.model.arch} model needs "
                          f"{len(expected)} tensors (missing here: {missing[:3]}; not in it: {unexpected[:3]})")
    for name, shape in expected.items():
        if stored[name] != shape:
            raise checkpoint_error(path, f"config and tensors disagree: tensor {name!r} has shape {stored[name]}, the config's model needs {shape}")


def _check_depth(path: Path, depth: int, stored: dict) -> None:
    """Every protocol model stores block k's tensors under ``blocks.k.``: a config claiming more blocks
    than the header holds is refused from the names alone, before building (a depth of 100,000 took
    minutes and gigabytes to build on the meta device before the comparison said so)."""
    found = {name.split(".", 2)[1] for name in stored if name.startswith("blocks.") and name.count(".") >= 2}
    if depth > len(found):
        raise checkpoint_error(path, f"config and tensors disagree: the config claims {depth} blocks, the file holds tensors "
                               f"for {len(found)}")


def load_checkpoint(path: str | Path, verify: bool = True, device: str | torch.device = "cpu", model: ResidualModel | None = None, *,
                    factory: str = "", trust_factory: bool = False) -> Checkpoint:
    """Rebuild the model from the file alone and load its weights (hash-checked unless ``verify=False``).

    ``model``: load the weights into this model instead (checkpoints of models built in Python).
    A checkpoint whose model is built by a factory (``save_model(..., factory=...)``, ``--model``) is
    rebuilt only when ``factory`` names that same function or ``trust_factory=True``: lpa never
    imports code because a file names it (`lpa_cli.models.factory`).
    """
    path = Path(path)
    info = read_info(path)
    if model is None and info.config.model.arch == CUSTOM and not info.config.model.factory:
        raise checkpoint_error(path, "it holds a model built in Python (no registered architecture or factory); load it with load_checkpoint(path, model=...)")
    check_consistency(path, info, model, factory=factory, trust_factory=trust_factory)
    try:
        tensors = st_load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError, OSError) as err:
        raise checkpoint_error(path, f"cannot read tensors ({err})") from None
    if verify:
        if not info.sha256:
            raise checkpoint_error(path, "no sha256 in metadata; cannot verify (use --no-verify to load anyway)")
        actual = tensor_hash(tensors)
        if actual != info.sha256:
            raise checkpoint_error(path, "content hash mismatch: tensor data is corrupt or was modified (use --no-verify to load anyway)")
        check_metadata_hash(path, info.metadata)
    model = model if model is not None else _build(path, info, None, factory, trust_factory)
    for alias, target in info.aliases.items():
        tensors[alias] = tensors[target]
    model.load_state_dict(tensors, strict=True)
    model.to(device).eval()
    return Checkpoint(path, model, info.config, info.task, info.metrics, info.training, info.sha256, info.parent, info.metadata, info)


def resolve_init(cfg: RunConfig, trust_factory: bool = False) -> RunConfig:
    """With ``--init``: the model settings come from where the weights do (a Hugging Face config, or
    the lpa checkpoint's own model config). A checkpoint's factory is used only when it is the one
    ``cfg`` names (``--model``) or ``trust_factory`` allows it."""
    init = cfg.model.init
    if not init:
        return cfg
    path = Path(init)
    if source_kind(path) == "hf":
        return hf_load.resolve_init(cfg, path)
    info = read_info(path)
    check_factory(info.config.model.factory, path, cfg.model.factory, trust_factory)
    model = dataclasses.replace(info.config.model, init=str(path), reinit=cfg.model.reinit)
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
    if m.arch in ARCHITECTURES and "vocab" in {f.name for f in dataclasses.fields(ARCHITECTURES[m.arch].load_options())}:
        vocab = task.tokenizer.vocab_size if task.tokenizer is not None else int(task.meta.get("vocab", task.out_dim))
        return dataclasses.replace(cfg, model=dataclasses.replace(m, options=dict(m.options) | {"vocab": vocab}))
    return cfg


def build_initial_model(cfg: RunConfig, task) -> ResidualModel:
    """The model to train: built from ``cfg.model`` and, with ``--init``, given the starting weights
    (then the modules ``--reinit`` names start fresh again)."""
    model = build_from_config(cfg, task.in_shape, task.out_dim, task.input_kind, task.kind)
    init = cfg.model.init
    if cfg.model.reinit and not init:
        raise UsageError("--reinit names modules to start fresh instead of --init's weights; give --init too")
    if not init:
        return model
    path = Path(init)
    if source_kind(path) == "hf":
        hf_load.load_weights(model, path)
    else:
        _load_checkpoint_weights(model, path, cfg)
    reinitialise(model, cfg.model.reinit)
    return model


def reinitialise(model: ResidualModel, names: str) -> None:
    """Give the named modules (``head.pooler``, ``blocks.5``) fresh weights from their own initialiser."""
    for name in filter(None, (n.strip() for n in names.split(","))):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            known = ", ".join(n for n, _ in model.named_modules() if n and n.count(".") <= 1)
            raise UsageError(f"--reinit {name}: the model has no such module (it has {known})") from None
        resets = [m for m in module.modules() if hasattr(m, "reset_parameters")]
        if not resets:
            raise UsageError(f"--reinit {name}: that module has no weights to re-initialise")
        for m in resets:
            m.reset_parameters()


def _load_checkpoint_weights(model: ResidualModel, path: Path, cfg: RunConfig) -> None:
    source = load_checkpoint(path, factory=cfg.model.factory)  # resolve_init checked it is the one allowed
    theirs = source.model.state_dict()
    ours = model.state_dict()
    fresh = sorted(k for k in ours if k not in theirs or theirs[k].shape != ours[k].shape)
    if any(not k.startswith("head.") for k in fresh):
        raise CheckpointError(f"--init {path}: its weights do not fit this model ({', '.join(fresh[:3])} ...)")
    if fresh:
        log.warning("--init %s: new head for this task (%s start fresh)", path, ", ".join(fresh))
    model.load_state_dict({k: theirs[k] for k in ours if k not in fresh}, strict=False)


def init_metadata(cfg: RunConfig) -> dict[str, str]:
    """Metadata a checkpoint keeps about the weights it started from (a Hugging Face family and
    config, so `lpa export --format hf` can give the model back)."""
    path = Path(cfg.model.init)
    if source_kind(path) == "hf":
        return hf_load.checkpoint_metadata(path)
    meta = read_info(path).metadata
    return {"hf": meta["hf"]} if "hf" in meta else {}
