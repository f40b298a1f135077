"""A Hugging Face model directory on disk: its config.json and local safetensors weights (no hub, no
pickles, no code from the directory)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor

from lpa_core.errors import CheckpointError


TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def refuse(directory: Path | str, what: str) -> CheckpointError:
    return CheckpointError(f"{directory}: {what}; lpa refuses rather than approximate it")


def is_hf_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def read_config(directory: Path) -> dict[str, Any]:
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{directory}/config.json: not valid JSON ({err})") from None
    except RecursionError:
        raise CheckpointError(f"{directory}/config.json: nested too deeply to be a model config") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory}/config.json: not a JSON object")
    return config


def weight_files(directory: Path) -> list[Path]:
    """The directory's safetensors files; pickled weights alone are refused, never opened."""
    files = sorted(directory.glob("*.safetensors"))
    for f in files:
        _inside(directory, f)
    if not files:
        pickled = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt")]
        hint = f" (found {', '.join(pickled)})" if pickled else ""
        raise CheckpointError(f"{directory}: no *.safetensors weights{hint}; lpa never loads pickled weights")
    return files


def _inside(directory: Path, path: Path) -> Path:
    """``path``, unless it is a symlink that leads out of ``directory``: only the blob store of a
    Hugging Face cache (``models--*/blobs/``, where a snapshot's files link to) is followed."""
    target = path.resolve()
    if path.is_symlink() and not target.is_relative_to(directory.resolve()):
        cache_blob = target.parent.name == "blobs" and target.parent.parent.name.startswith("models--")
        if not cache_blob:
            raise CheckpointError(f"{path}: is a symlink to {target}, outside the model directory (only a Hugging Face cache's "
                                  "blobs are followed); copy the file into the directory")
    return path


def read_weights(directory: Path) -> dict[str, Tensor]:
    """Every tensor of the directory's safetensors files (shards included), as float32."""
    files = weight_files(directory)
    tensors: dict[str, Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), "pt") as handle:
                for key in handle.keys():
                    t = handle.get_tensor(key)
                    tensors[key] = t.float() if t.is_floating_point() else t
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{f}: cannot read safetensors ({str(err).splitlines()[0]})") from None
    return tensors


def weights_sha256(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.glob("*.safetensors")):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
