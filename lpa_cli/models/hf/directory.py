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
from lpa_core.files import readable


TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
EXPORT_FILES = ("tokenizer.json",) + TOKENIZER_FILES  # every name a checkpoint's `hf` block may hold; export writes no other
MAX_NESTING = 32  # a model config is a few levels deep
MAX_FILE_CHARS = 1 << 20


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, stopping past ``limit``."""
    stack, deepest = [(value, 1)], 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def hf_block(raw: str, where: str, families) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(family, config, files) of a checkpoint's ``hf`` metadata, validated: a known family, a config
    object (its ``auto_map``, which names code, dropped), and tokenizer and generation files under the
    names `EXPORT_FILES` lists only, as text. Anything else is a one-line `CheckpointError`: the content
    hash covers tensors only, so this block is a claim from whoever last edited the file."""
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{where}: its Hugging Face metadata (hf) {why}")

    try:
        meta = json.loads(raw) if isinstance(raw, str) else None
    except (ValueError, RecursionError):
        raise bad("is not valid JSON") from None
    if not isinstance(meta, dict):
        raise bad("is not a JSON object")
    family, config, files = meta.get("family"), meta.get("config"), meta.get("files", {})
    if not isinstance(family, str) or family not in families:
        raise bad(f"names an unknown family {str(family)[:40]!r}")
    if not isinstance(config, dict):
        raise bad("has no config object")
    if _depth(config, MAX_NESTING) > MAX_NESTING:
        raise bad(f"has a config nested more than {MAX_NESTING} levels deep")
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise bad("files must map file names to text")
    unknown = sorted(set(files) - set(EXPORT_FILES))
    if unknown:
        raise bad(f"holds files lpa does not write ({', '.join(repr(n[:40]) for n in unknown[:3])}); expected only {', '.join(EXPORT_FILES)}")
    if any(len(v) > MAX_FILE_CHARS * 64 for v in files.values()):
        raise bad("holds a file larger than a tokenizer")
    config = {k: v for k, v in config.items() if k != "auto_map"}  # never hand transformers a name of code to import
    return family, config, dict(files)


def refuse(directory: Path | str, what: str) -> CheckpointError:
    return CheckpointError(f"{directory}: {what}; lpa refuses rather than approximate it")


def is_hf_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def read_config(directory: Path) -> dict[str, Any]:
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads(readable(directory / "config.json", "config", inside=directory, error=CheckpointError).read_text(encoding="utf-8"))
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
    """``path``, a regular file inside ``directory`` (`lpa_core.files.readable`: a link out of it is
    refused, except into a Hugging Face cache's blob store, where a snapshot's files link to)."""
    return readable(path, "checkpoint", inside=directory, error=CheckpointError)


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
        with _inside(directory, f).open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
