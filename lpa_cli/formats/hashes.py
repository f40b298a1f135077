"""The hashes a checkpoint carries: of its tensors (``sha256``, independent of the file's layout), of
its metadata (``meta_sha256``, format 2: every other field, so the task and data it is evaluated on are
covered as its weights are), and of the whole file. They detect corruption and edits; they are no
signature (whoever edits a file can recompute them)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from lpa_core.errors import CheckpointError
from lpa_core.files import readable


def metadata_hash(meta: dict[str, str]) -> str:
    """sha256 over every metadata field but ``meta_sha256`` itself, in key order (length-prefixed, so no
    two different tables hash alike)."""
    h = hashlib.sha256()
    for key in sorted(k for k in meta if k != "meta_sha256"):
        for part in (key.encode(), str(meta[key]).encode()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


def check_metadata_hash(path: str | Path, meta: dict[str, str]) -> bool:
    """True when the metadata is covered and intact, False for a format-1 file (not covered); a changed
    field is a `CheckpointError`."""
    stored = meta.get("meta_sha256")
    if stored is None:
        if int(meta.get("format_version", "1")) >= 2:
            raise CheckpointError(f"{path}: format 2 without meta_sha256: its metadata was edited")
        return False
    if stored != metadata_hash(meta):
        raise CheckpointError(f"{path}: metadata hash mismatch: its description (config, task, tokenizer) was modified "
                              "after it was saved (use --no-verify to load anyway)")
    return True


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in name order; independent of file layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with readable(path, error=CheckpointError).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
