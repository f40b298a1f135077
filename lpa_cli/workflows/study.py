"""What a `lpa reproduce` study is (groups of seeded runs and the targets they should meet) and where
its checkpoints go."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpa_cli.config import RunConfig


@dataclass
class Target:
    text: str
    check: Callable[[dict[str, list[dict[str, list[float]]]], Any], tuple[bool, str]]


@dataclass
class Study:
    """One comparison inside an experiment: groups of seeded runs and the targets they should meet."""

    name: str
    groups: dict[str, list[RunConfig]]
    targets: list[Target] = field(default_factory=list)
    metric: str | None = None


def all_lpa_monotone(m, c) -> tuple[bool, str]:
    lpa = [r for r in c.runs if r.group != "E2E"]
    return all(r.monotone for r in lpa), f"{sum(r.monotone for r in lpa)}/{len(lpa)}"


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower().replace(".", "p"))


def run_path(out: Path, experiment: str, study: str, label: str, seed: int) -> Path:
    """Where `run_study` keeps a group's run of ``seed``."""
    return out / experiment / study / f"{slug(label)}-s{seed}.safetensors"
