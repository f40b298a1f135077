"""Self-describing safetensors checkpoints.

One ``.safetensors`` file holds the weights and, in its string-to-string metadata, everything needed
to rebuild and interpret the model (see docs/checkpoint-format.md):

``format`` = ``lpa-checkpoint``, ``format_version``, ``lpa_version``, ``config`` (the `RunConfig` as
JSON), ``task`` (task info as JSON: kind, shapes, description), ``metrics`` (per-depth test metrics as
JSON), ``training`` (steps, final loss ... as JSON), ``sha256`` (content hash of the tensors),
``meta_sha256`` (format 2: hash of every other metadata field, so the task and data a checkpoint is
evaluated on are covered as its tensors are),
optionally ``aliases`` (tied tensors), ``parent`` (what an exported model was cut from),
``tokenizer`` (token models: the tokenizer, so text can be encoded without its source) and ``hf``
(models started from a Hugging Face directory: family and config, for ``export --format hf``).

Files are never unpickled. The header is validated here before safetensors reads any tensor; the
config is checked against the tensors' shapes (the model is built on torch's ``meta`` device, which
allocates nothing) before anything real is built; and the content hash is checked on load unless
``verify=False``. No timestamps are stored, so the same seeded run writes a byte-identical file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from dataclasses import dataclass, field
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lpa_core.files import readable
from lpa_core.atomic import atomic_path
from lpa_cli.formats.hashes import metadata_hash, tensor_hash
from lpa_core.errors import CheckpointError, DataError, LpaError
from lpa_cli import __version__
from lpa_cli.config import RunConfig
from lpa_cli.config import ModelConfig, ObjectiveConfig, TaskConfig, TrainConfig
from lpa_cli.registry import ARCHITECTURES

FORMAT = "lpa-checkpoint"
CUSTOM = "custom"  # config.model.arch of a model built in Python and trained through train(model=...)
FORMAT_VERSION = 2  # 2: ``meta_sha256`` covers the metadata (1: the tensors only; still read)
# lpa headers are a few KB (a stored tokenizer adds a few MB); a larger header is refused before it is
# read (safetensors itself allows 100 MB).
MAX_HEADER_BYTES = 16 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model plus everything its metadata says."""

    path: Path
    model: torch.nn.Module
    config: RunConfig
    task: dict[str, Any]
    metrics: dict[str, list[float]]
    training: dict[str, Any]
    sha256: str
    parent: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    info: CheckpointInfo | None = None

    @property
    def kind(self) -> str:
        return self.task["kind"]

    def task_config(self):
        """The task it was trained on, reading text with the tokenizer stored in the file (so the
        directory the tokenizer came from is not needed)."""
        cfg = self.config.task
        if cfg.name in ("", "custom"):
            raise DataError(f"{self.path}: it records no data set (saved by LPATrainer or save_model without data=); "
                            "give --data FILE (a task spec or a data file)")
        if "tokenizer" in self.metadata and "tokenizer" in cfg.options:
            return dataclasses.replace(cfg, options=dict(cfg.options) | {"tokenizer": str(self.path)})
        return cfg


_TORCH_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def save_file(tensors: dict[str, torch.Tensor], filename: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file deterministically (sorted JSON header), streaming tensor data.

    safetensors' own writer emits metadata in hash-map order, which differs between calls; a
    deterministic header is what makes seeded runs byte-identical.
    """
    ordered = sorted(tensors.items(), key=lambda kv: (-kv[1].element_size(), kv[0]))  # aligned offsets
    header: dict[str, Any] = {}
    offset = 0
    for name, t in ordered:
        if t.dtype not in _TORCH_DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} cannot be stored")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _TORCH_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned
    with open(filename, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, t in ordered:
            t = t.detach().cpu().contiguous()
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """safetensors refuses shared storage: keep one name per tied tensor and record the others."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name in sorted(state):
        t = state[name]
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            kept[name] = t.detach().cpu().contiguous()
    return kept, aliases


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    config: RunConfig,
    task: dict[str, Any],
    metrics: dict[str, list[float]] | None = None,
    training: dict[str, Any] | None = None,
    parent: dict[str, Any] | None = None,
    force: bool = False,
    *,
    state: dict[str, torch.Tensor] | None = None,
    tokenizer: Any = None,
    extra: dict[str, str] | None = None,
    before_rename: Callable[[str], None] | None = None,
) -> str:
    """Write ``model`` and its description atomically; returns the content hash.

    ``state`` replaces ``model.state_dict()`` (a state gathered from sharded ranks); ``tokenizer``
    (an `lpa_cli.formats.tokenizer.Tokenizer`) and ``extra`` metadata are stored beside the config.
    ``before_rename(content hash)`` runs once the file is complete, before it takes the target's name
    (the training log seals itself to the checkpoint there).
    """
    model = getattr(model, "module", model)  # save the raw module, never a DDP wrapper
    tensors, aliases = _dedupe(state if state is not None else model.state_dict())
    digest = tensor_hash(tensors)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "lpa_version": __version__,
        "config": config.to_json(),
        "task": json.dumps(task, sort_keys=True),
        "metrics": json.dumps(metrics or {}, sort_keys=True),
        "training": json.dumps(training or {}, sort_keys=True),
        "head_applies": model.head_applies,
        "sha256": digest,
    }
    if aliases:
        metadata["aliases"] = json.dumps(aliases, sort_keys=True)
    if parent:
        metadata["parent"] = json.dumps(parent, sort_keys=True)
    if tokenizer is not None:
        metadata["tokenizer"] = json.dumps(tokenizer.to_dict(), sort_keys=True)
    metadata |= extra or {}
    metadata["meta_sha256"] = metadata_hash(metadata)
    with atomic_path(path, force=force) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        if before_rename is not None:
            before_rename(digest)
    return digest


def save_model(path: str | Path, model: torch.nn.Module, *, kind: str, in_shape: tuple[int, ...], out_dim: int, data: str = "",
               input_kind: str = "", factory: str = "", options: dict[str, Any] | None = None, objective: str = "lpa",
               metrics: dict[str, list[float]] | None = None, force: bool = False, train: dict[str, Any] | None = None) -> str:
    """Save a model trained in your own loop as an lpa checkpoint.

    ``factory`` (``"package.module:function"``, called with ``options``) is how the commands that run the
    model (`trace`, `monotonicity`, `compare`, `export`, `predict`) rebuild it, given ``--model`` with
    the same name; without it they refuse and Python loads it with ``load_checkpoint(path, model=...)``
    (`lpa info` reads either). ``data``: a task spec or data file (``file:train.npz``) they evaluate on
    when given the checkpoint alone. ``train``: the settings your loop used (`TrainConfig` fields:
    ``steps``, ``batch_size``, ``lr``, ``optimizer`` ...); only those are shown as the run's, the rest
    as not recorded. Returns the content hash.
    """
    input_kind = input_kind or {1: "vector", 3: "image"}.get(len(in_shape), "vector")
    config = RunConfig(ModelConfig(arch=CUSTOM, depth=model.num_blocks, width=0, zero_init=False, options=dict(options or {}), factory=factory),
                       TaskConfig(name=data or "custom"), ObjectiveConfig(name=objective), TrainConfig(**(train or {})))
    task = {"name": data or "custom", "kind": kind, "input_kind": input_kind, "in_shape": list(in_shape), "out_dim": out_dim,
            "description": "trained in a user's own loop"}
    training = {"trained_by": "a user's own loop", "recorded": sorted(train or {})}  # which TrainConfig fields are the loop's
    return save_checkpoint(path, model, config, task, metrics or {}, training, force=force)


def checkpoint_error(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: {why}")


def read_header(path: str | Path) -> tuple[dict[str, Any], int]:
    """Parse and validate a safetensors header without reading tensor data.

    Returns (header dict, byte offset of the data section). Rejects anything a well-formed file
    cannot contain: a header longer than the file or than 16 MiB, offsets out of bounds, overlapping
    or not matching the dtype and shape, unknown dtypes, trailing bytes.
    """
    path = readable(path, "checkpoint", error=CheckpointError)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise checkpoint_error(path, "is a directory, not a checkpoint file")
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise checkpoint_error(path, f"not a safetensors file ({size} bytes, too short)")
            (n,) = struct.unpack("<Q", prefix)
            # A zip (a torch .pt) or a pickle read as a header length is absurd; a real length may
            # still start with these bytes (0x80 is just a length's low byte), so only then say so.
            implausible = n > MAX_HEADER_BYTES or 8 + n > size
            if prefix == b"\x89HDF\r\n\x1a\n":  # a trace under a checkpoint's name: refused, not read as what its bytes say
                raise checkpoint_error(path, "is an HDF5 file (a trace?), not a safetensors checkpoint; traces are named .h5")
            if implausible and (prefix[:2] == b"PK" or (prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))):
                raise checkpoint_error(path, "looks like a zip/pickle (e.g. a torch .pt file), not safetensors; refusing to load it")
            if n > MAX_HEADER_BYTES:
                raise checkpoint_error(path, f"safetensors header of {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
            if 8 + n > size:
                raise checkpoint_error(path, f"truncated: header says {n} bytes but the file has {size - 8}")
            raw = f.read(n)
    except FileNotFoundError:
        raise checkpoint_error(path, "no such file") from None
    except IsADirectoryError:
        raise checkpoint_error(path, "is a directory, not a checkpoint file") from None
    except PermissionError:
        raise checkpoint_error(path, "permission denied") from None
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        raise checkpoint_error(path, "not a safetensors file (header is not valid JSON)") from None
    except RecursionError:
        raise checkpoint_error(path, "safetensors header is nested too deeply") from None
    if not isinstance(header, dict):
        raise checkpoint_error(path, "not a safetensors file (header is not a JSON object)")
    data_start = 8 + n
    data_size = size - data_start
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
                raise checkpoint_error(path, "safetensors metadata must map strings to strings")
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise checkpoint_error(path, f"tensor {name!r}: malformed header entry")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise checkpoint_error(path, f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise checkpoint_error(path, f"tensor {name!r}: bad shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise checkpoint_error(path, f"tensor {name!r}: bad data offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise checkpoint_error(path, f"tensor {name!r}: data offsets {offsets} outside the {data_size}-byte data section (truncated?)")
        if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise checkpoint_error(path, f"tensor {name!r}: {end - begin} bytes do not match dtype {dtype} and shape {shape}")
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin < position:
            raise checkpoint_error(path, f"tensor {name!r}: data overlaps another tensor")
        position = end
    if position != data_size:
        raise checkpoint_error(path, f"{data_size - position} unexpected bytes after the tensor data (file corrupt or appended to)")
    return header, data_start


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_field(path: Path, meta: dict[str, str], key: str, required: bool = True) -> Any:
    if key not in meta:
        if required:
            raise checkpoint_error(path, f"not an lpa checkpoint (metadata has no {key!r})")
        return None
    try:
        return json.loads(meta[key], parse_constant=_reject_constant)
    except ValueError:
        raise checkpoint_error(path, f"metadata {key!r} is not valid JSON") from None
    except RecursionError:
        raise checkpoint_error(path, f"metadata {key!r} is nested too deeply") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    """The checkpoint's metadata, checked to be ours and of a version this lpa reads."""
    path = Path(path)
    header, _ = read_header(path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise checkpoint_error(path, "not an lpa checkpoint (safetensors metadata lacks format=lpa-checkpoint)")
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        raise checkpoint_error(path, f"bad format_version {meta.get('format_version')!r}") from None
    if version > FORMAT_VERSION:
        raise checkpoint_error(path, f"checkpoint format version {version} is newer than this lpa reads ({FORMAT_VERSION}); upgrade lpa")
    return meta


@dataclass
class CheckpointInfo:
    """Everything in a checkpoint's metadata, parsed, without its tensors."""

    config: RunConfig
    task: dict[str, Any]
    metrics: dict[str, list[float]]
    training: dict[str, Any]
    sha256: str
    aliases: dict[str, str]
    parent: dict[str, Any] | None
    metadata: dict[str, str]


def read_info(path: str | Path) -> CheckpointInfo:
    path = Path(path)
    meta = read_metadata(path)
    raw_config = _json_field(path, meta, "config")
    try:
        config = RunConfig.from_dict(raw_config)
    except LpaError as err:
        raise checkpoint_error(path, f"invalid config in metadata ({err})") from None

    if config.model.arch not in ARCHITECTURES and config.model.arch != CUSTOM and not config.model.factory:
        raise checkpoint_error(path, f"unknown architecture {config.model.arch!r} in metadata (this lpa knows {', '.join(ARCHITECTURES)})")
    task = _json_field(path, meta, "task")
    if not isinstance(task, dict) or not {"kind", "in_shape", "out_dim"} <= set(task):
        raise checkpoint_error(path, "metadata 'task' lacks kind/in_shape/out_dim")
    if task["kind"] not in ("regression", "classification", "lm"):
        raise checkpoint_error(path, f"unknown task kind {task['kind']!r}")
    shape_ok = isinstance(task["in_shape"], list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in task["in_shape"])
    out_ok = isinstance(task["out_dim"], int) and not isinstance(task["out_dim"], bool) and task["out_dim"] > 0
    if not shape_ok or not out_ok:
        raise checkpoint_error(path, "metadata 'task' has invalid in_shape/out_dim")
    metrics = _json_field(path, meta, "metrics", required=False) or {}
    training = _json_field(path, meta, "training", required=False) or {}
    aliases = _json_field(path, meta, "aliases", required=False) or {}
    parent = _json_field(path, meta, "parent", required=False)
    if not isinstance(metrics, dict) or not isinstance(training, dict) or not isinstance(aliases, dict):
        raise checkpoint_error(path, "metadata 'metrics', 'training' and 'aliases' must be JSON objects")
    for name, values in metrics.items():
        if not isinstance(values, list) or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
            raise checkpoint_error(path, f"metadata 'metrics' {name!r} must be a list of numbers (one per depth)")
    sha = meta.get("sha256", "")
    return CheckpointInfo(config, task, metrics, training, sha, aliases, parent, meta)
