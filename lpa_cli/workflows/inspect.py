"""What `lpa info` reports about a checkpoint or a trace, as plain data (no terminal code here).
Describing a trace needs no torch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import dataclasses

from lpa_core.errors import CheckpointError
from lpa_cli.config import ModelConfig
from lpa_cli.registry import ARCHITECTURES


def resolved_options(model: ModelConfig) -> dict[str, Any]:
    """The architecture's options with defaults filled in (a factory's keyword arguments as given)."""
    if model.arch not in ARCHITECTURES or model.factory:
        return dict(model.options)
    from lpa_cli.models import resolve_options

    return dataclasses.asdict(resolve_options(model))


def describe(path: str | Path, verify: bool = False) -> dict[str, Any]:
    """A checkpoint's description from its metadata; ``verify`` also re-hashes the tensor data."""
    from safetensors.torch import load_file

    from lpa_cli.formats.checkpoint import read_header, read_info
    from lpa_cli.formats.hashes import check_metadata_hash, file_sha256, tensor_hash
    from lpa_cli.models.open import check_consistency

    path = Path(path)
    info = read_info(path)
    if not info.config.model.factory:  # a factory is never imported to describe a file (docs/security.md)
        check_consistency(path, info)  # the config describes exactly these tensors
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
        "model": dataclasses.asdict(cfg.model) | {"options": resolved_options(cfg.model),
                                                  "factory_imported": False if cfg.model.factory else None},
        "head_applies": info.metadata.get("head_applies", ""),
        "task": info.task,
        "objective": dataclasses.asdict(cfg.objective),
        "train": dataclasses.asdict(cfg.train),
        "parameters": params,
        "training": info.training,
        "metrics": info.metrics,
        "sha256_content": info.sha256,
        "sha256_file": file_sha256(path),
        "parent": info.parent,
        "verified": None,
    }
    if verify:
        tensors = load_file(str(path))
        if tensor_hash(tensors) != info.sha256:
            raise CheckpointError(f"{path}: content hash mismatch: tensor data is corrupt or was modified")
        out["verified"] = True
        out["metadata_verified"] = check_metadata_hash(path, info.metadata)  # False: format 1, not covered
    return out


def describe_trace(path: str | Path) -> dict[str, Any]:
    """A trace's attributes, datasets and per-depth metrics (reads only the per-sample errors)."""
    from analyzers.metrics import summarize
    from analyzers.trace import open_trace

    with open_trace(path) as t:
        attrs = t.attrs
        datasets = {name: [list(d.shape), d.dtype] for name, d in t.datasets().items()}
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
