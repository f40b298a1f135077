"""Task registry: a task spec string names a data source. Everything is offline.

- ``surface:NAME`` — 2-D regression surfaces: stripe, ripple, saddle, franke (`surfaces.py`).
- ``digits`` — scikit-learn's 8x8 digits; ``shapes`` — generated 16x16 shapes (`images.py`).
- ``text`` / ``text:builtin`` / ``text:FILE|DIR`` — language modelling on text (`text.py`).
- ``tokens:FILE.bin`` — a token file made by ``lpa data tokenize``, memory-mapped (`tokens.py`).
- ``file:PATH`` — the user's .npz / .npy / .csv / .h5 arrays (`files.py`).
- ``folder:DIR`` — an image folder, one sub-folder per class (`folders.py`).
- ``classify:FILE`` — text classification from a .csv / .jsonl with text and label columns (`classify.py`).

``lpa train --data PATH`` and ``lpa trace --data PATH`` pick the kind from the path (`data_spec`).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from lpa_core.errors import DataError
from lpa_core.files import readable
from lpa_cli.config import TaskConfig
from lpa_cli.registry import TASK_HELP
from lpa_cli.data.base import Task, regular_file


def _loader(kind: str) -> Callable[[str, TaskConfig], Task]:
    """The loader of a spec kind (imported on use: Pillow, tokenizers and sklearn load only when needed)."""
    if kind == "surface":
        from lpa_cli.data.surfaces import load_surface as fn
    elif kind == "digits":
        from lpa_cli.data.images import load_digits_task

        fn = lambda arg, cfg: load_digits_task(cfg)  # noqa: E731
    elif kind == "shapes":
        from lpa_cli.data.images import load_shapes_task

        fn = lambda arg, cfg: load_shapes_task(cfg)  # noqa: E731
    elif kind == "text":
        from lpa_cli.data.text import load_text_task as fn
    elif kind == "tokens":
        from lpa_cli.data.tokens import load_token_task as fn
    elif kind == "file":
        from lpa_cli.data.files import load_file_task as fn
    elif kind == "folder":
        from lpa_cli.data.folders import load_image_folder as fn
    else:
        from lpa_cli.data.classify import load_classification_task as fn
    return fn


SPEC_KINDS = {"surface": None, "digits": False, "shapes": False, "text": None, "tokens": True, "file": True, "folder": True, "classify": True}
# True: the spec needs an argument after ':'; False: takes none; None: optional


def _csv_has_text(path: Path) -> bool:
    try:
        with readable(path, error=DataError).open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error, DataError):  # a field over csv's limit: the reader proper says so
        return False
    return "text" in [h.strip() for h in header]


def data_spec(text: str) -> str:
    """A ``--data`` value as a task spec: kind by path (``.txt`` text, ``.bin`` tokens, ``.jsonl`` or a
    CSV with a ``text`` column classify, a directory of class folders or of .txt files); a spec as written."""
    path = Path(text)
    if path.is_dir():
        return f"text:{text}" if any(path.glob("*.txt")) else f"folder:{text}"
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".txt":
            return f"text:{text}"
        if suffix == ".bin":
            return f"tokens:{text}"
        if suffix == ".jsonl" or (suffix == ".csv" and _csv_has_text(path)):
            return f"classify:{text}"
        return f"file:{text}"
    if text.partition(":")[0] in SPEC_KINDS:
        return text
    return f"file:{text}"


def spec_files(spec: str) -> list[Path]:
    """The files or folders a task spec names (``text:a.txt`` -> ``a.txt``), for the output checks: an
    output is never one of its command's inputs. Built-in sets name none."""
    kind, _, rest = spec.partition(":")
    return [Path(rest)] if rest and kind in SPEC_KINDS and kind != "surface" else []


def load_task(cfg: TaskConfig) -> Task:
    kind, sep, arg = cfg.name.partition(":")
    takes = SPEC_KINDS.get(kind, "unknown")
    if takes == "unknown" or (takes is True and not arg) or (takes is False and sep):
        raise DataError(f"unknown task {cfg.name!r}; expected {TASK_HELP}")
    if kind == "surface":
        return _loader(kind)(arg or "stripe", cfg)
    if arg and (kind != "text" or arg != "builtin"):
        regular_file(arg)
    return _loader(kind)(arg, cfg)


__all__ = ["TASK_HELP", "Task", "data_spec", "load_task"]
