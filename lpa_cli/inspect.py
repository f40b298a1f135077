"""What `lpa info` reports about a checkpoint, as plain data (no terminal code here)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dataclasses

from safetensors.torch import load as st_load

from analyzers.errors import CheckpointError
from lpa_cli.checkpoint import file_sha256, read_header, read_info, tensor_hash
from lpa_cli.config import ModelConfig, _build
from lpa_cli.models import ARCHITECTURES


def resolved_options(model: ModelConfig) -> dict[str, Any]:
    """The architecture's options with defaults filled in."""
    arch = ARCHITECTURES.get(model.arch)
    if arch is None:
        return dict(model.options)
    return dataclasses.asdict(_build(arch.options, model.options, "model.options"))


def describe(path: str | Path, verify: bool = False) -> dict[str, Any]:
    """A checkpoint's description from its metadata; ``verify`` also re-hashes the tensor data."""
    path = Path(path)
    info = read_info(path)
    header, _ = read_header(path)
    params = sum(math.prod(e["shape"]) for k, e in header.items() if k != "__metadata__")
    cfg = info.config
    out: dict[str, Any] = {
        "path": str(path),
        "format_version": int(info.metadata.get("format_version", "0")),
        "lpa_version": info.metadata.get("lpa_version"),
        "architecture": cfg.model.arch,
        "depth": cfg.model.depth,
        "width": cfg.model.width,
        "model": cfg.model.__dict__ | {"options": resolved_options(cfg.model)},
        "head_applies": info.metadata.get("head_applies", ""),
        "task": info.task,
        "objective": cfg.objective.__dict__,
        "train": cfg.train.__dict__,
        "parameters": params,
        "training": info.training,
        "metrics": info.metrics,
        "sha256_content": info.sha256,
        "sha256_file": file_sha256(path),
        "parent": info.parent,
        "verified": None,
    }
    if verify:
        tensors = st_load(path.read_bytes())
        if tensor_hash(tensors) != info.sha256:
            raise CheckpointError(f"{path}: content hash mismatch: tensor data is corrupt or was modified")
        out["verified"] = True
    return out


def describe_trace(path: str | Path) -> dict[str, Any]:
    """A trace's attributes, datasets and per-depth metrics (reads only the per-sample errors)."""
    from analyzers.metrics import summarize
    from analyzers.trace_io import open_trace

    with open_trace(path) as t:
        attrs = t.attrs
        datasets = {}
        t.file.visititems(lambda name, obj: datasets.__setitem__(name, [list(obj.shape), str(obj.dtype)]) if hasattr(obj, "shape") else None)
        metrics = summarize({name: t.errors(name) for name in t.error_names}, t.kind, attrs.get("target_var"))
        return {
            "path": str(path),
            "format_version": attrs.get("format_version"),
            "lpa_version": attrs.get("lpa_version"),
            "source": attrs.get("source"),
            "checkpoint_path": attrs.get("checkpoint_path"),
            "checkpoint_sha256": attrs.get("checkpoint_sha256"),
            "kind": t.kind,
            "objective": attrs.get("objective"),
            "split": attrs.get("split"),
            "n_samples": t.n,
            "depths": t.depths,
            "head_applies": attrs.get("head_applies"),
            "created": attrs.get("created"),
            "compression": attrs.get("compression"),
            "datasets": datasets,
            "metrics": metrics,
        }
