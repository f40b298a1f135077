"""Task registry: a task spec string names a data source.

``surface:NAME`` — a 2-D regression surface (see `lpa_cli.tasks.surfaces`).
"""

from __future__ import annotations

from analyzers.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.tasks.base import Task
from lpa_cli.tasks.surfaces import SURFACES, load_surface


def load_task(cfg: TaskConfig) -> Task:
    kind, _, arg = cfg.name.partition(":")
    if kind == "surface":
        return load_surface(arg or "stripe", cfg)
    raise DataError(f"unknown task {cfg.name!r}; expected surface:NAME ({', '.join(SURFACES)})")


__all__ = ["SURFACES", "Task", "load_task"]
