"""Building models from a `ModelConfig`: the registry (`lpa_cli.registry.ARCHITECTURES`) names a
builder and the dataclass of its extra options; everything else is shared here.

Adding an architecture = one file with an options dataclass and a builder
``build(depth, width, in_shape, out_dim, opts, kind) -> ResidualModel`` whose blocks list the last layer of
each residual branch (``branch_outputs()``), plus one registry entry. Tests parametrise over the
registry, so it is tested at once.
"""

from __future__ import annotations

import torch

from lpa_core.errors import UsageError
from lpa_cli.config import ModelConfig, _build
from lpa_cli.models.protocol import ResidualModel, count_parameters
from lpa_cli.registry import ARCHITECTURES


@torch.no_grad()
def zero_init_branches(model: ResidualModel) -> None:
    """Zero the last layer of every residual branch, so each block starts as the identity and every
    depth starts with the same prediction (timm's zero_init_last)."""
    for block in model.blocks:
        outputs = getattr(block, "branch_outputs", None)
        if outputs is None:
            raise TypeError(f"{type(block).__name__} does not list its branch outputs (branch_outputs()); cannot zero-initialise it")
        for layer in outputs():
            for p in layer.parameters():
                p.zero_()


def resolve_options(cfg: ModelConfig):
    """The architecture's options dataclass, defaults filled in and unknown keys refused."""
    return _build(ARCHITECTURES.get(cfg.arch).load_options(), cfg.options, "model.options")


def build_model(cfg: ModelConfig, in_shape: tuple[int, ...], out_dim: int, input_kind: str = "vector", kind: str = "") -> ResidualModel:
    """Build an untrained model for inputs of ``in_shape`` (no batch axis) and ``out_dim`` outputs
    (``kind``: the task's, for architectures whose head depends on it: an LM head or a pooled one)."""
    arch = ARCHITECTURES.get(cfg.arch)
    if input_kind not in arch.input_kinds:
        raise UsageError(f"architecture {cfg.arch!r} does not take {input_kind} inputs (it takes {', '.join(arch.input_kinds)})")
    if kind and kind not in arch.kinds:
        raise UsageError(f"architecture {cfg.arch!r} does not do {kind} (it does {', '.join(arch.kinds)})")
    opts = resolve_options(cfg)
    try:
        model = arch.load()(cfg.depth, cfg.width, tuple(in_shape), out_dim, opts, kind)
    except ValueError as err:
        raise UsageError(f"{cfg.arch}: {err}") from None
    if cfg.zero_init:
        zero_init_branches(model)
    return model


__all__ = ["ARCHITECTURES", "ResidualModel", "build_model", "count_parameters", "resolve_options", "zero_init_branches"]
