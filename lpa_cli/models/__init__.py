"""Architecture registry: a name maps to a builder and the dataclass of its extra options.

Adding an architecture = one file with an options dataclass and a ``build_*`` function returning a
`ResidualModel`, plus one line here. Tests parametrise over `ARCHITECTURES`, so it is tested at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from analyzers.errors import UsageError
from lpa_cli.config import ModelConfig, _build
from lpa_cli.models.gpt import GPTOptions, build_gpt
from lpa_cli.models.mlp import MLPOptions, build_mlp
from lpa_cli.models.protocol import ResidualModel, count_parameters
from lpa_cli.models.resnet import ResNetOptions, build_resnet
from lpa_cli.models.vit import ViTOptions, build_vit


@dataclass(frozen=True)
class Architecture:
    builder: Callable[..., ResidualModel]
    options: type
    input_kinds: tuple[str, ...]  # "vector", "image", "tokens"
    summary: str


ARCHITECTURES: dict[str, Architecture] = {
    "mlp": Architecture(build_mlp, MLPOptions, ("vector", "image"), "residual MLP (the paper's residual FNN)"),
    "resnet": Architecture(build_resnet, ResNetOptions, ("image",), "constant-width pre-activation ResNet"),
    "vit": Architecture(build_vit, ViTOptions, ("image",), "Vision Transformer (pre-norm, final norm in the head)"),
    "gpt": Architecture(build_gpt, GPTOptions, ("tokens",), "decoder-only byte-level Transformer LM"),
}


def build_model(cfg: ModelConfig, in_shape: tuple[int, ...], out_dim: int, input_kind: str = "vector") -> ResidualModel:
    """Build an untrained model for inputs of ``in_shape`` (no batch axis) and ``out_dim`` outputs."""
    arch = ARCHITECTURES.get(cfg.arch)
    if arch is None:
        raise UsageError(f"unknown architecture {cfg.arch!r}; expected one of {', '.join(ARCHITECTURES)}")
    if input_kind not in arch.input_kinds:
        raise UsageError(f"architecture {cfg.arch!r} does not take {input_kind} inputs (it takes {', '.join(arch.input_kinds)})")
    opts = _build(arch.options, cfg.options, "model.options")
    try:
        model = arch.builder(cfg.depth, cfg.width, tuple(in_shape), out_dim, cfg.zero_init, opts)
    except ValueError as err:
        raise UsageError(f"{cfg.arch}: {err}") from None
    return model


__all__ = ["ARCHITECTURES", "Architecture", "ResidualModel", "build_model", "count_parameters"]
