"""ResNet-style CNN with a constant-width stream, so every depth is readable by one head.

embed: Conv3x3(C_in -> width)  ->  N x pre-activation basic block  ->  head: GroupNorm, ReLU,
global average pool, Linear. Depth k is the stream after the k-th basic block (two 3x3 convolutions
each); there is no down-sampling, so the head sees the same shape at every depth. GroupNorm rather
than BatchNorm: the head runs at every depth, and BatchNorm's running statistics would mix depths.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lpa_core.errors import UsageError
from lpa_cli.models.protocol import ResidualModel, linear_op, norm_op


@dataclass(frozen=True)
class ResNetOptions:
    groups: int = 8  # GroupNorm groups (capped at the width)
    stem_stride: int = 1  # >1 shrinks large images once, in the embedding

    def __post_init__(self) -> None:
        for name in ("groups", "stem_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise UsageError(f"model.options.{name} must be an integer >= 1, got {value!r}")


def _norm(width: int, groups: int) -> nn.GroupNorm:
    g = max(1, min(groups, width))
    while width % g:
        g -= 1
    return nn.GroupNorm(g, width)


class BasicBlock(nn.Module):
    def __init__(self, width: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(width, groups)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.norm2 = _norm(width, groups)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)  # the branch's last layer
        self.act = nn.ReLU()

    def forward(self, h: Tensor) -> Tensor:  # (B, width, H, W)
        return h + self.conv2(self.act(self.norm2(self.conv1(self.act(self.norm1(h))))))

    def branch_outputs(self) -> list[nn.Module]:
        return [self.conv2]


class PoolHead(nn.Module):
    def __init__(self, width: int, groups: int, out_dim: int) -> None:
        super().__init__()
        self.norm = _norm(width, groups)
        self.act = nn.ReLU()
        self.fc = nn.Linear(width, out_dim)

    def forward(self, h: Tensor) -> Tensor:  # (B, width, H, W) -> (B, out)
        return self.fc(self.act(self.norm(h)).mean(dim=(2, 3)))

    def numpy_ops(self):
        norm, p1 = norm_op(self.norm, "head.norm")
        fc, p2 = linear_op(self.fc, "head.fc")
        return {"feature_axis": 1, "ops": norm + [{"op": "relu"}, {"op": "mean", "axes": [2, 3]}] + fc}, p1 | p2


def build_resnet(depth: int, width: int, in_shape: tuple[int, ...], out_dim: int, opts: ResNetOptions, kind: str = "") -> ResidualModel:
    if len(in_shape) == 2:
        in_shape = (1, *in_shape)
    if len(in_shape) != 3:
        raise ValueError(f"resnet needs image inputs (C, H, W), got shape {in_shape}")
    embed = nn.Conv2d(in_shape[0], width, 3, stride=opts.stem_stride, padding=1)
    blocks = [BasicBlock(width, opts.groups) for _ in range(depth)]
    return ResidualModel(embed, blocks, PoolHead(width, opts.groups, out_dim), head_applies="groupnorm, relu, global-avg-pool, linear")
