"""Task registry: a task spec string names a data source. Everything is offline.

- ``surface:NAME`` — 2-D regression surfaces: stripe, ripple, saddle, franke (`surfaces.py`).
- ``digits`` — scikit-learn's 8x8 digits; ``shapes`` — generated 16x16 shapes (`images.py`).
- ``text`` / ``text:builtin`` / ``text:FILE`` — byte-level language modelling (`text.py`).
- ``file:PATH`` — the user's .npz / .csv / .h5 data (`files.py`); ``lpa train --data PATH`` sets it.
"""

from __future__ import annotations

from analyzers.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.tasks.base import Task
from lpa_cli.tasks.files import load_file_task
from lpa_cli.tasks.images import load_digits_task, load_shapes_task
from lpa_cli.tasks.surfaces import SURFACES, load_surface
from lpa_cli.tasks.text import load_text_task

TASK_HELP = "surface:NAME (stripe, ripple, saddle, franke), digits, shapes, text[:FILE], file:PATH"


SPEC_KINDS = ("surface", "digits", "shapes", "text", "file")


def data_spec(text: str) -> str:
    """A ``--data`` value as a task spec: an existing file (``.txt`` = text), else a spec as written."""
    from pathlib import Path

    if Path(text).is_file():
        return f"text:{text}" if Path(text).suffix == ".txt" else f"file:{text}"
    if text.partition(":")[0] in SPEC_KINDS:
        return text
    return f"file:{text}"


def load_task(cfg: TaskConfig) -> Task:
    kind, _, arg = cfg.name.partition(":")
    if kind == "surface":
        return load_surface(arg or "stripe", cfg)
    if kind == "digits" and not arg:
        return load_digits_task(cfg)
    if kind == "shapes" and not arg:
        return load_shapes_task(cfg)
    if kind == "text":
        return load_text_task(arg, cfg)
    if kind == "file" and arg:
        return load_file_task(arg, cfg)
    raise DataError(f"unknown task {cfg.name!r}; expected {TASK_HELP}")


__all__ = ["SURFACES", "TASK_HELP", "Task", "data_spec", "load_task"]
