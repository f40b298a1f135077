"""Vision Transformer: patch embedding, pre-norm blocks, and a head that owns the final norm.

embed: Conv(patch) + position embedding (+ CLS token)  ->  N x transformer block  ->
head: LayerNorm, pool (mean of tokens or the CLS token), Linear. The final LayerNorm is part of the
head, so it is recomputed at every depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lpa_core.errors import UsageError
from lpa_cli.models.attention import TransformerBlock, check_transformer_options
from lpa_cli.models.protocol import ResidualModel, linear_op, norm_op


@dataclass(frozen=True)
class ViTOptions:
    patch: int = 2
    heads: int = 4
    mlp_ratio: float = 2.0
    pool: str = "mean"  # mean | cls
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_transformer_options(self.heads, self.mlp_ratio, self.dropout)
        if isinstance(self.patch, bool) or not isinstance(self.patch, int) or self.patch < 1:
            raise UsageError(f"model.options.patch must be an integer >= 1, got {self.patch!r}")
        if self.pool not in ("mean", "cls"):
            raise UsageError(f"model.options.pool must be mean or cls, got {self.pool!r}")


class PatchEmbed(nn.Module):
    def __init__(self, in_shape: tuple[int, int, int], width: int, patch: int, cls: bool) -> None:
        super().__init__()
        c, h, w = in_shape
        if h % patch or w % patch:
            raise ValueError(f"image size {h}x{w} is not divisible by patch {patch}")
        self.proj = nn.Conv2d(c, width, patch, stride=patch)
        tokens = (h // patch) * (w // patch) + (1 if cls else 0)
        self.cls = nn.Parameter(torch.zeros(1, 1, width)) if cls else None
        self.pos = nn.Parameter(torch.randn(1, tokens, width) * 0.02)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, T, width)
        h = self.proj(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
        return h + self.pos


class ViTHead(nn.Module):
    def __init__(self, width: int, out_dim: int, pool: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.pool = pool
        self.fc = nn.Linear(width, out_dim)

    def forward(self, h: Tensor) -> Tensor:  # (B, T, width) -> (B, out)
        h = self.norm(h)
        return self.fc(h[:, 0] if self.pool == "cls" else h.mean(dim=1))

    def numpy_ops(self):
        norm, p1 = norm_op(self.norm, "head.norm")
        fc, p2 = linear_op(self.fc, "head.fc")
        pool = {"op": "take", "axis": 1, "index": 0} if self.pool == "cls" else {"op": "mean", "axes": [1]}
        return {"feature_axis": -1, "ops": norm + [pool] + fc}, p1 | p2


def build_vit(depth: int, width: int, in_shape: tuple[int, ...], out_dim: int, opts: ViTOptions, kind: str = "") -> ResidualModel:
    if len(in_shape) == 2:
        in_shape = (1, *in_shape)
    if len(in_shape) != 3:
        raise ValueError(f"vit needs image inputs (C, H, W), got shape {in_shape}")
    embed = PatchEmbed(in_shape, width, opts.patch, opts.pool == "cls")
    blocks = [TransformerBlock(width, opts.heads, opts.mlp_ratio, False, opts.dropout) for _ in range(depth)]
    head = ViTHead(width, out_dim, opts.pool)
    return ResidualModel(embed, blocks, head, head_applies=f"layernorm, {opts.pool}-pool, linear")
