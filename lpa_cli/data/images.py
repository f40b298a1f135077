"""Image classification sets that exist on every install: scikit-learn's digits, and generated shapes."""

from __future__ import annotations


import torch
from torch import Tensor

from lpa_core.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.data.base import Task, check_options, float_option, int_option
from lpa_cli.data.splits import TensorSplit


def seeded_split(n: int, n_test: int, seed: int) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


def load_digits_task(cfg: TaskConfig) -> Task:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn; a seeded 80/20 split."""
    from sklearn.datasets import load_digits

    check_options("digits", cfg.options, ())
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8) in [0, 1]
    y = torch.tensor(data.target, dtype=torch.int64)
    n_test = cfg.n_test or 360
    if not 0 < n_test < len(y):
        raise DataError(f"digits: n_test must be between 1 and {len(y) - 1}, got {n_test}")
    train_idx, test_idx = seeded_split(len(y), n_test, cfg.data_seed)
    if cfg.n_train:
        train_idx = train_idx[: cfg.n_train]
    return Task(
        name="digits", kind="classification", input_kind="image",
        train=TensorSplit(x[train_idx], y[train_idx]), test=TensorSplit(x[test_idx], y[test_idx]), out_dim=10, in_shape=(1, 8, 8),
        description="scikit-learn digits: 1797 8x8 grey images, 10 classes",
        meta={"image_shape": [1, 8, 8], "classes": [str(i) for i in range(10)]},
    )


SHAPE_CLASSES = ("square", "disc", "ring", "cross", "triangle", "bars")


def _draw(kind: int, size: int, gen: torch.Generator) -> Tensor:
    """One ``size`` x ``size`` image of shape class ``kind`` at a random position and scale."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    r = float(torch.empty(1).uniform_(size * 0.18, size * 0.32, generator=gen))
    cy, cx = (float(v) for v in torch.empty(2).uniform_(r + 0.5, size - 1.5 - r, generator=gen))
    dy, dx = ys - cy, xs - cx
    dist = torch.sqrt(dx**2 + dy**2)
    if kind == 0:
        img = (dx.abs() <= r * 0.8) & (dy.abs() <= r * 0.8)
    elif kind == 1:
        img = dist <= r
    elif kind == 2:
        img = (dist <= r) & (dist >= r * 0.55)
    elif kind == 3:
        img = ((dx.abs() <= r * 0.25) & (dy.abs() <= r)) | ((dy.abs() <= r * 0.25) & (dx.abs() <= r))
    elif kind == 4:
        img = (dy <= r * 0.8) & (dy >= -r) & (dx.abs() <= (dy + r) * 0.55)
    else:
        img = (dx.abs() <= r) & (dy.abs() <= r) & (torch.remainder(torch.floor((dy + r) / max(1.0, r / 2)), 2) == 0)
    return img.float()


def load_shapes_task(cfg: TaskConfig) -> Task:
    """Generated 16x16 grey images of six shapes at random positions and scales, with pixel noise."""
    check_options("shapes", cfg.options, ("size", "noise"))
    size = int_option(cfg.options, "size", 16, 8, 512)
    n_train = cfg.n_train or 3000
    n_test = cfg.n_test or 600
    gen = torch.Generator().manual_seed(cfg.data_seed)
    n = n_train + n_test
    labels = torch.randint(0, len(SHAPE_CLASSES), (n,), generator=gen)
    images = torch.stack([_draw(int(k), size, gen) for k in labels]).unsqueeze(1)  # (n, 1, size, size)
    noise = float_option(cfg.options, "noise", 0.3, 0.0, 100.0)
    images = (images + noise * torch.randn(images.shape, generator=gen)).clamp(-1, 2)
    return Task(
        name="shapes", kind="classification", input_kind="image",
        train=TensorSplit(images[:n_train], labels[:n_train]), test=TensorSplit(images[n_train:], labels[n_train:]),
        out_dim=len(SHAPE_CLASSES), in_shape=(1, size, size),
        description=f"generated shapes: {size}x{size} grey images, {len(SHAPE_CLASSES)} classes, noise {noise}",
        meta={"image_shape": [1, size, size], "classes": list(SHAPE_CLASSES)},
    )
