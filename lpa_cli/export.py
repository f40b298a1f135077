"""Exporting a prefix: "train once, use N models" as a file you can ship."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from analyzers.errors import UsageError
from lpa_cli.checkpoint import load_checkpoint, save_checkpoint
from lpa_cli.config import RunConfig


def export_prefix(checkpoint: str | Path, depth: int, output: str | Path, force: bool = False, verify: bool = True) -> dict:
    """Write a normal checkpoint made of the embedding, the first ``depth`` blocks and the shared head.

    Its predictions are exactly the original's depth-``depth`` predictions; its metadata says what it
    was cut from (``parent``).
    """
    ckpt = load_checkpoint(checkpoint, verify=verify)
    n = ckpt.model.num_blocks
    if not 1 <= depth <= n:
        raise UsageError(f"--depth must be between 1 and {n} for {checkpoint} ({n} blocks), got {depth}")
    small = ckpt.model.truncated(depth)
    config = RunConfig(dataclasses.replace(ckpt.config.model, depth=depth), ckpt.config.task, ckpt.config.objective, ckpt.config.train)
    metrics = {name: values[: depth + 1] for name, values in ckpt.metrics.items()}
    parent = {"path": str(checkpoint), "sha256": ckpt.sha256, "depth": depth, "depths_of_parent": n}
    training = ckpt.training | {"exported_from": str(checkpoint)}
    sha = save_checkpoint(output, small, config, ckpt.task, metrics, training, parent=parent, force=force)
    return {"output": str(output), "sha256": sha, "depth": depth, "parent": parent, "metrics": metrics,
            "parameters": sum(p.numel() for p in small.parameters()), "parameters_of_parent": sum(p.numel() for p in ckpt.model.parameters())}
