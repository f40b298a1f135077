"""Named 2-D surfaces on [-1, 1]^2 for regression, starting with the paper's stripe.

Training points are uniform in the square (seeded by the task's ``data_seed``); the test split is a
regular grid, so per-depth predictions can be drawn as heatmaps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lpa_core.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.data.base import Task, check_options
from lpa_cli.data.splits import TensorSplit


def _stripe(x: Tensor, y: Tensor) -> Tensor:
    return torch.exp(-5 * (x**2 + y**2)) * torch.sin(10 * x)


def _ripple(x: Tensor, y: Tensor) -> Tensor:
    r = torch.sqrt(x**2 + y**2)
    return torch.sin(3 * math.pi * r) * torch.exp(-r)


def _saddle(x: Tensor, y: Tensor) -> Tensor:
    return x**2 - y**2


def _franke(x: Tensor, y: Tensor) -> Tensor:
    # Franke's classic test function, mapped from [0, 1]^2 to [-1, 1]^2.
    u, v = (x + 1) / 2, (y + 1) / 2
    return (
        0.75 * torch.exp(-((9 * u - 2) ** 2) / 4 - ((9 * v - 2) ** 2) / 4)
        + 0.75 * torch.exp(-((9 * u + 1) ** 2) / 49 - (9 * v + 1) / 10)
        + 0.5 * torch.exp(-((9 * u - 7) ** 2) / 4 - ((9 * v - 3) ** 2) / 4)
        - 0.2 * torch.exp(-((9 * u - 4) ** 2) - (9 * v - 7) ** 2)
    )


SURFACES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], str]] = {
    "stripe": (_stripe, "exp(-5(x^2+y^2)) * sin(10x)"),
    "ripple": (_ripple, "sin(3*pi*r) * exp(-r), r = sqrt(x^2+y^2)"),
    "saddle": (_saddle, "x^2 - y^2"),
    "franke": (_franke, "Franke's function on (x+1)/2, (y+1)/2"),
}

DEFAULT_TRAIN = 4096
DEFAULT_GRID = 64


def load_surface(name: str, cfg: TaskConfig) -> Task:
    if name not in SURFACES:
        raise DataError(f"unknown surface {name!r}; expected one of {', '.join(SURFACES)}")
    check_options(f"surface:{name}", cfg.options, ())
    fn, formula = SURFACES[name]
    n_train = cfg.n_train or DEFAULT_TRAIN
    side = round(math.sqrt(cfg.n_test)) if cfg.n_test else DEFAULT_GRID
    if side < 2:
        raise DataError(f"surface test grid needs at least 4 points, got n_test={cfg.n_test}")
    gen = torch.Generator().manual_seed(cfg.data_seed)
    x_train = torch.rand(n_train, 2, generator=gen) * 2 - 1  # (n, 2)
    y_train = fn(x_train[:, 0], x_train[:, 1]).unsqueeze(1)  # (n, 1)
    if cfg.noise > 0:
        y_train = y_train + cfg.noise * torch.randn(y_train.shape, generator=gen)
    axis = torch.linspace(-1, 1, side)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")  # rows follow y, columns follow x
    x_test = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)
    y_test = fn(x_test[:, 0], x_test[:, 1]).unsqueeze(1)
    return Task(
        name=f"surface:{name}",
        kind="regression",
        input_kind="vector",
        train=TensorSplit(x_train, y_train),
        test=TensorSplit(x_test, y_test),
        out_dim=1,
        in_shape=(2,),
        description=f"f(x, y) = {formula} on [-1, 1]^2",
        meta={"grid": [side, side], "domain": [-1.0, 1.0], "formula": formula},
    )
