"""Resume snapshots: everything a killed run needs to continue to the same tensors.

``<output>.snapshot`` (safetensors, written atomically every ``--snapshot-every`` steps) holds the
model's weights, the optimiser's state, the RNG states, the gradient scaler's state (fp16) and the
step; its metadata holds the run's config, which a resume must match exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from lpa_core.atomic import atomic_path
from lpa_core.errors import CheckpointError, UsageError
from lpa_core.files import readable
from lpa_cli.formats.checkpoint import save_file
from lpa_cli.config import RunConfig

FORMAT = "lpa-snapshot"


def snapshot_path(output: Path) -> Path:
    return output.with_name(output.name + ".snapshot")


def save_snapshot(path: Path, cfg: RunConfig, step: int, model_state: dict[str, Tensor], opt_state: dict, depth_gen: torch.Generator,
                  scaler_state: dict | None) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    scalars: dict[str, dict[str, Any]] = {}
    for key, state in opt_state["state"].items():  # keys: parameter indices, or names (FSDP)
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{key}/{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(key), {})[name] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.depths"] = depth_gen.get_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta = {
        "format": FORMAT,
        "config": cfg.to_json(),
        "step": str(step),
        "param_groups": json.dumps(opt_state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "scaler": json.dumps(scaler_state or {}),
    }
    # Tied weights share storage; a snapshot stores a private copy of each name.
    tensors = {k: v.clone() for k, v in tensors.items()}
    with atomic_path(path, force=True) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _key(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def load_snapshot(path: Path, cfg: RunConfig) -> tuple[int, dict[str, Tensor], dict, dict[str, Tensor], dict]:
    """(step, model state, optimiser state, RNG tensors, scaler state) of a snapshot made by ``cfg``."""
    readable(path, error=CheckpointError)  # a FIFO planted at the snapshot's name would block the reader
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read snapshot ({err}); delete it to start over") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an lpa snapshot")
    try:
        saved = json.loads(meta["config"])
        step = int(meta["step"])
        groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta["optim_scalars"])
        scaler = json.loads(meta.get("scaler", "{}"))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{path}: malformed snapshot metadata ({err}); delete it to start over") from None
    if saved != json.loads(cfg.to_json()):
        raise UsageError(f"{path}: snapshot was made with different settings; rerun the same command, or use --force to start over")
    model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    state: dict[int | str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(_key(idx), {})[name] = value
    for idx, values in scalars.items():
        state.setdefault(_key(idx), {}).update(values)
    rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return step, model_state, {"state": state, "param_groups": groups}, rng, scaler


def restore_rng(rng: dict[str, Tensor], depth_gen: torch.Generator) -> None:
    torch.set_rng_state(rng["rng.torch"])
    depth_gen.set_state(rng["rng.depths"])
    cuda_states = [rng[k] for k in sorted(rng) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
