"""Safe file writing: temporary name in the same directory, fsync, rename.

A reader never sees a half-written file under the target name, and an existing file is replaced only
when the new one is complete (and only with ``force``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

from lpa_core.errors import OutputError, OutputExistsError, UsageError
from lpa_core.files import open_new

TMP_MARK = ".tmp-"


SYSTEM_DIRS = ("/dev", "/proc")  # devices and descriptors: an output named through them is never a file lpa owns ...
FILE_DIRS = ("/dev/shm",)  # ... except shared memory, an ordinary (tmpfs) folder under /dev


def _link_chain(path: Path) -> list[Path]:
    """``path`` and every place its symbolic links lead through (absolute), up to 40 hops."""
    chain = [Path(os.path.abspath(path))]
    for _ in range(40):
        here = chain[-1]
        if not here.is_symlink():
            break
        chain.append(Path(os.path.abspath(here.parent / os.readlink(here))))
    return chain


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two existing paths are one file (device and inode, links followed)."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def check_writable(target: str | Path, force: bool = False, inputs: Iterable[str | Path] = ()) -> Path:
    """Fail early (before any work) when `target` exists without `force`, is not a regular file (a
    directory, a device, a pipe: never replaced, even with `force`), is named through /dev or /proc
    (``-o /dev/stdout`` would replace the system's link with a file), is one of the command's own
    ``inputs`` (the same file by device and inode, however it is named), or its folder is unusable."""
    target = Path(target)
    def under(hop: Path, dirs: tuple[str, ...]) -> bool:
        return any(hop == Path(d) or Path(d) in hop.parents for d in dirs)

    for hop in _link_chain(target):
        if under(hop, SYSTEM_DIRS) and not (under(hop, FILE_DIRS) and hop != Path(FILE_DIRS[0])):
            raise OutputError(f"{target}: leads into {hop} (a device or descriptor); lpa writes only regular files it creates")
    if target.is_dir():
        raise OutputError(f"{target}: is a directory")
    if target.exists() and not target.is_file():
        raise OutputError(f"{target}: is not a regular file (a device, pipe or socket); lpa writes only regular files")
    if target.exists() and not force:
        raise OutputExistsError(f"{target}: already exists (use --force to overwrite)")
    for source in inputs:  # with --force too: an output is never one of the command's inputs
        if source is not None and target.exists() and same_file(target, source):
            raise UsageError(f"{target}: is the input {source}; choose another -o (lpa never writes over its own input)")
    parent = target.parent if str(target.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{target}: {parent} is not a directory")
    return target


def temp_name(target: Path) -> Path:
    """A unique hidden temporary path beside `target` (same filesystem, so rename is atomic)."""
    return target.with_name(f".{target.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def clean_stale_temps(target: Path) -> None:
    """Remove temporary files a killed writer left beside ``target`` (their process is gone)."""
    prefix = f".{target.name}{TMP_MARK}"
    try:
        candidates = [p for p in target.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for p in candidates:
        pid = p.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be fsynced
        fsync_path(path)


def _os_error(target: Path, err: OSError) -> OutputError:
    if err.errno == errno.ENOSPC:
        return OutputError(f"{target}: no space left on device; nothing was written")
    if isinstance(err, PermissionError):
        return OutputError(f"{target}: permission denied; nothing was written")
    return OutputError(f"{target}: cannot write ({err.strerror or err})")


@contextlib.contextmanager
def atomic_path(target: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto `target`.

    On any exception the temporary file is removed and `target` is left as it was.
    """
    target = check_writable(target, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _os_error(target, err) from None
    clean_stale_temps(target)
    tmp = temp_name(target)
    try:
        yield tmp
        fsync_path(tmp)
        if target.exists() and not force:  # someone else created it meanwhile
            raise OutputExistsError(f"{target}: already exists (use --force to overwrite)")
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except OSError as err:
        raise _os_error(target, err) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def output_lock(target: str | Path) -> Iterator[None]:
    """Hold ``<target>.lock`` for the duration: a second process writing the same output stops at
    once instead of interleaving its files with the first's. The lock dies with its process."""
    import fcntl

    target = Path(target)
    lock = target.with_name(target.name + ".lock")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _os_error(lock, err) from None
    fd = open_new(lock, os.O_RDWR | os.O_CREAT)  # never through a planted link
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            raise OutputError(f"{target}: another lpa process (pid {holder}) is writing it; wait for it to finish") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        except OSError as err:  # a full disk: no lock file left behind
            with contextlib.suppress(OSError):
                lock.unlink()
            raise _os_error(target, err) from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()
    finally:
        os.close(fd)


def write_bytes(target: str | Path, data: bytes, force: bool = False) -> Path:
    with atomic_path(target, force) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: str | Path, text: str, force: bool = False) -> Path:
    return write_bytes(target, text.encode("utf-8"), force)
