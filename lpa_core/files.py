"""The two rules for every file lpa touches (docs/security.md).

- **Reading** (`readable`): a regular file (a FIFO or a device never ends, so reading one would hang
  or run until killed), at most the size its kind allows (checked from ``stat`` before a byte is read),
  and where it must lie inside a directory, inside it after links are resolved.
- **Writing or locking** (`open_new`, `refuse_link`): never through a symbolic link (a planted link
  would send lpa's bytes to the file it points at), and never onto something that is not a regular
  file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from lpa_core.errors import LpaError, OutputError, UsageError

MiB = 1 << 20
# the largest file of each kind lpa reads whole (weights are memory-mapped and checked by their header)
LIMITS = {"config": 16 * MiB, "json": 64 * MiB, "script": 64 * MiB, "tokenizer": 256 * MiB, "text": 2048 * MiB}


def _size(n: int) -> str:
    return f"{n / MiB:,.0f} MiB" if n >= MiB else f"{n:,} bytes"


def readable(path: str | Path, kind: str = "", *, inside: Path | None = None, error: type[LpaError] = UsageError,
             missing_ok: bool = True) -> Path:
    """``path`` if lpa may read it: a regular file (or a folder), of at most ``LIMITS[kind]`` bytes, and
    with ``inside``, resolving to a place within that directory. A missing path is returned as it is
    (the caller says so in its own words) unless ``missing_ok`` is false."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        if missing_ok:
            return path
        raise error(f"{path}: no such file") from None
    except OSError as err:
        raise error(f"{path}: cannot read ({err.strerror or err})") from None
    if stat.S_ISDIR(st.st_mode):
        return path
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: not a regular file (a pipe, device or socket); lpa reads only regular files")
    limit = LIMITS.get(kind)
    if limit is not None and st.st_size > limit:
        raise error(f"{path}: {_size(st.st_size)} is more than lpa reads for a {kind} file ({_size(limit)})")
    if inside is not None:
        real, root = path.resolve(), inside.resolve()
        # the one way out: a Hugging Face cache's snapshot files link to the blob store of the same
        # repository (models--ORG--NAME/snapshots/REV/file -> models--ORG--NAME/blobs/HASH), no other
        repo = root.parent.parent
        cache_blob = (root.parent.name == "snapshots" and repo.name.startswith("models--") and real.parent.name == "blobs"
                      and real.parent.parent == repo)
        if real != root and root not in real.parents and not cache_blob:
            raise error(f"{path}: a link out of {inside} (to {real}); lpa reads a model directory's files only from inside it "
                        "(or from a Hugging Face cache's blobs); copy the file into the directory")
    return path


def refuse_link(path: str | Path) -> Path:
    """``path``, unless it is a symbolic link (lpa never writes through one)."""
    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path}: is a symbolic link; lpa never writes or locks a file through a link (remove it)")
    return path


def open_new(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` for writing or locking, never through a link and only onto a regular file."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0), mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            refuse_link(path)
        if err.errno == errno.ENOSPC:
            raise OutputError(f"{path}: no space left on device; nothing was written") from None
        raise OutputError(f"{path}: cannot write ({err.strerror or err})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{path}: is not a regular file (a device, pipe or socket); lpa writes only regular files")
    return fd


__all__ = ["LIMITS", "open_new", "readable", "refuse_link"]
