"""Token files: a corpus tokenised once into a flat binary file, trained on through ``numpy.memmap``.

``corpus.bin`` holds the tokens as little-endian uint16 (vocabularies up to 65,536) or uint32, one
after another, documents separated by the tokenizer's end-of-text token when it has one.
``corpus.bin.json`` (the sidecar) says what they are::

    {"format": "lpa-tokens", "version": 1, "dtype": "uint16", "count": 123456789, "documents": 42,
     "vocab_size": 50257, "tokenizer": {...}}

Memory stays flat whatever the file's size: only the windows of a batch are read, through a map made
for that batch and dropped after it (`lpa_cli.data.splits.MappedArray`). Training rows are
windows starting at every token offset of the first 90% (``test_fraction`` 0.1), drawn with
replacement, seeded per step (nanoGPT's sampling, deterministic for resume); the test split is the
non-overlapping windows of the rest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lpa_core.atomic import atomic_path, check_writable
from lpa_core.errors import DataError, UsageError
from lpa_core.files import readable
from lpa_cli.config import TaskConfig
from lpa_cli.data.base import Task, check_options, first_id_at_or_above, float_option, int_option, regular_file
from lpa_cli.data.splits import MappedArray, Windows
from lpa_cli.formats.tokenizer import MAX_VOCAB, Tokenizer, load_tokenizer

FORMAT = "lpa-tokens"
VERSION = 1
OPTIONS = ("context", "test_fraction")


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _dtype(vocab: int) -> np.dtype:
    return np.dtype("<u2") if vocab <= 1 << 16 else np.dtype("<u4")


def _documents(paths: Iterable[Path]) -> Iterator[tuple[Path, str]]:
    for p in paths:
        files = sorted(p.rglob("*.txt")) if p.is_dir() else [p]
        if p.is_dir() and not files:
            raise DataError(f"{p}: directory holds no .txt files")
        for f in files:
            try:
                yield f, regular_file(f, "text").read_text(encoding="utf-8")
            except FileNotFoundError:
                raise DataError(f"{f}: text file not found") from None
            except UnicodeDecodeError as err:
                raise DataError(f"{f}: not UTF-8 text (byte {err.start})") from None
            except OSError as err:
                raise DataError(f"{f}: cannot read ({err.strerror or err})") from None


def tokenize_files(texts: list[str | Path], tokenizer: str | Path, output: str | Path, force: bool = False,
                   chunk_chars: int = 1 << 22, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Tokenise text files (or directories of .txt files) into ``output`` and its sidecar.

    Each file is encoded in pieces of about ``chunk_chars`` characters cut at line ends, so memory
    stays bounded; both files are written under temporary names and renamed when complete.
    ``progress(files done, files)`` follows the files.
    """
    if not texts:
        raise UsageError("give at least one text file or directory")
    tok = load_tokenizer(str(tokenizer))
    output = Path(output)
    check_writable(output, force, inputs=texts)
    check_writable(sidecar(output), force, inputs=texts)
    dtype = _dtype(tok.vocab_size)
    count = documents = 0
    # data before the file that describes it: both are complete under temporary names before either is
    # renamed, then the tokens take their name first and the sidecar last. A sidecar that cannot be
    # written leaves no token file; a kill between the renames leaves the new tokens beside the old
    # sidecar, which `read_sidecar` refuses (its byte count no longer matches), never old tokens
    # described by a new sidecar
    with atomic_path(sidecar(output), force=True) as side, atomic_path(output, force=force) as tmp:
        with open(tmp, "wb") as f:
            files = [f for t in texts for f in (sorted(Path(t).rglob("*.txt")) if Path(t).is_dir() else [Path(t)])]
            for _, text in _documents(Path(t) for t in texts):
                if documents and tok.eos_id is not None:
                    f.write(np.asarray([tok.eos_id], dtype=dtype).tobytes())
                    count += 1
                start = 0
                while start < len(text):
                    stop = min(len(text), start + chunk_chars)
                    cut = text.rfind("\n", start, stop) + 1 if stop < len(text) else stop
                    stop = cut if cut > start else stop
                    ids = np.asarray(tok.encode(text[start:stop]), dtype=np.int64)
                    if ids.size and ids.max() >= tok.vocab_size:
                        raise DataError(f"tokenizer produced id {int(ids.max())} >= its vocabulary size {tok.vocab_size}")
                    f.write(ids.astype(dtype).tobytes())
                    count += ids.size
                    start = stop
                if progress:
                    progress(documents + 1, len(files))
                documents += 1
            f.flush()
            os.fsync(f.fileno())
        if count == 0:  # before either rename: an earlier output stays as it was
            raise DataError("the text files hold no text")
        meta = {"format": FORMAT, "version": VERSION, "dtype": dtype.name, "count": int(count), "documents": documents,
                "vocab_size": tok.vocab_size, "tokenizer": tok.to_dict()}
        side.write_text(json.dumps(meta, indent=1))
    return {"output": str(output), "sidecar": str(sidecar(output)), "tokens": int(count), "documents": documents,
            "dtype": dtype.name, "vocab_size": tok.vocab_size, "tokenizer": tok.name, "bytes": output.stat().st_size}


def read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar(path)
    try:
        meta = json.loads(readable(side, "json", error=DataError).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no sidecar {side.name} (make token files with lpa data tokenize)") from None
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"{side}: not a valid sidecar ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{side}: not an lpa token-file sidecar")
    if int(meta.get("version", 0)) > VERSION:
        raise DataError(f"{side}: token file version {meta.get('version')} is newer than this lpa reads; upgrade lpa")
    try:
        dtype = np.dtype(meta["dtype"])
        count, vocab = int(meta["count"]), int(meta["vocab_size"])
    except (KeyError, TypeError, ValueError) as err:
        raise DataError(f"{side}: malformed sidecar ({err})") from None
    if dtype not in (np.dtype("<u2"), np.dtype("<u4")) or count < 0 or vocab < 1:
        raise DataError(f"{side}: malformed sidecar (dtype {dtype}, count {count}, vocab {vocab})")
    most = min(1 << (8 * dtype.itemsize), MAX_VOCAB)
    if vocab > most:  # refused before an embedding of that size is allocated
        raise DataError(f"{side}: vocab_size {vocab} is more than {dtype.name} ids hold or lpa builds (at most {most:,})")
    size = path.stat().st_size if path.is_file() else -1
    if size != count * dtype.itemsize:
        raise DataError(f"{path}: holds {size} bytes but its sidecar says {count} tokens of {dtype.name} "
                        f"({count * dtype.itemsize} bytes): truncated, or not the file the sidecar describes")
    return meta | {"dtype": dtype, "count": count, "vocab_size": vocab}


def load_token_task(source: str, cfg: TaskConfig) -> Task:
    check_options("tokens", cfg.options, OPTIONS)
    path = Path(source)
    if not path.is_file():
        raise DataError(f"{path}: token file not found")
    meta = read_sidecar(path)
    context = int_option(cfg.options, "context", 256, 2, 1 << 20)
    fraction = float_option(cfg.options, "test_fraction", 0.1, 0.0, 0.9)
    count = meta["count"]
    tokens = MappedArray(path, meta["dtype"], (count,))
    bad = first_id_at_or_above(tokens, meta["vocab_size"])  # one pass up front, not an IndexError by chance later
    if bad is not None:
        raise DataError(f"{path}: token id {bad[1]} at position {bad[0]} is outside the vocabulary of {meta['vocab_size']:,} ids "
                        "its sidecar declares")
    cut = count - int(count * fraction)
    if cut < context + 2 or count - cut < context + 1:
        raise DataError(f"{path}: {count} tokens are too few for context {context} and test fraction {fraction}")
    train = Windows(tokens, context, 1, 0, cut, sampling="random")
    test = Windows(tokens, context, context, cut, count)
    if cfg.n_test:
        test.count = min(test.count, cfg.n_test)
    tok = Tokenizer.from_dict(meta["tokenizer"])
    return Task(
        name=f"tokens:{path}", kind="lm", input_kind="tokens", train=train, test=test, out_dim=meta["vocab_size"],
        in_shape=(context,), description=f"token file {path.name}: {count:,} tokens ({tok.name})",
        meta={"context": context, "vocab": meta["vocab_size"], "tokens": count, "tokenizer": tok.name,
              "source": str(path), "size": path.stat().st_size},
        tokenizer=tok,
    )
