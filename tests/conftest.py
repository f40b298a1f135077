from __future__ import annotations

import os

import pytest
import torch

from lpa_cli.data.batch import Batch
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
VOCAB = 32


def small_options(arch: str) -> dict:
    """Options that keep each architecture tiny in tests."""
    return {
        "vit": {"patch": 4, "heads": 2},
        "gpt": {"heads": 2},
        "decoder": {"heads": 4, "kv_heads": 2, "vocab": VOCAB},
        "encoder": {"heads": 2, "vocab": VOCAB},
    }.get(arch, {})


def task_kind(arch: str) -> str:
    """The kind of task each architecture is tested on: its first."""
    return ARCHITECTURES[arch].kinds[0]


def tiny_model(arch: str, depth: int = 3, width: int = 16, zero_init: bool = False, seed: int = 0):
    """(model, batch, kind): a small model of ``arch`` for its first input and task kinds, and a batch
    of 5 with targets (token classification batches are right-padded, with a mask)."""
    input_kind, kind = ARCHITECTURES[arch].input_kinds[0], task_kind(arch)
    in_shape, out_dim, make = INPUT_KINDS[input_kind]
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch=arch, depth=depth, width=width, zero_init=zero_init, options=small_options(arch)),
                        in_shape, out_dim, input_kind, kind)
    g = torch.Generator().manual_seed(seed + 1)
    x = make(5, g)
    mask = None
    if kind == "regression":
        y = torch.randn(5, out_dim, generator=g)
    elif kind == "lm":
        y = torch.randint(0, out_dim, x.shape, generator=g)
    else:
        y = torch.randint(0, out_dim, (5,), generator=g)
        if input_kind == "tokens":
            lengths = torch.tensor([12, 7, 3, 12, 9])
            mask = (torch.arange(12)[None, :] < lengths[:, None]).long()
            x = x * mask
    return model, Batch(x, y, mask), kind


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
