from __future__ import annotations

import os

import pytest
import torch

from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
from lpa_cli.models import build_model
from lpa_cli.registry import ARCHITECTURES

os.environ["COLUMNS"] = "160"  # rich tables in CliRunner output stay on one line per row

# An example input for each input kind: (in_shape, out_dim, batch maker).
INPUT_KINDS = {
    "vector": ((3,), 2, lambda n, g: torch.randn(n, 3, generator=g)),
    "image": ((1, 8, 8), 4, lambda n, g: torch.randn(n, 1, 8, 8, generator=g)),
    "tokens": ((12,), 32, lambda n, g: torch.randint(0, 32, (n, 12), generator=g)),
}


def small_options(arch: str) -> dict:
    """Options that keep each architecture tiny in tests."""
    return {
        "vit": {"patch": 4, "heads": 2},
        "gpt": {"heads": 2},
        "resnet": {},
        "mlp": {},
    }.get(arch, {})


def tiny_model(arch: str, depth: int = 3, width: int = 16, zero_init: bool = False, seed: int = 0):
    """A small model of ``arch`` with its first input kind, and a matching example batch."""
    kind = ARCHITECTURES[arch].input_kinds[0]
    in_shape, out_dim, make = INPUT_KINDS[kind]
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, depth=depth, width=width, zero_init=zero_init, options=small_options(arch)), in_shape, out_dim, kind)
    x = make(5, torch.Generator().manual_seed(seed + 1))
    return model, x, out_dim


def tiny_run(objective: str = "lpa", steps: int = 30, **train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(depth=3, width=16),
        task=TaskConfig(name="surface:stripe", n_train=256, n_test=64),
        objective=ObjectiveConfig(name=objective),
        train=TrainConfig(steps=steps, batch_size=64, threads=1, **train),
    )


@pytest.fixture(params=sorted(ARCHITECTURES))
def arch(request) -> str:
    return request.param
