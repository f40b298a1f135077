"""Residual MLP: the paper's residual FNN for surface fitting and other flat-vector tasks.

embed: Linear(in, width)  ->  N x [h + W2 act(W1 norm(h))]  ->  head: Linear(width, out)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from lpa_core.errors import UsageError
from lpa_cli.models.protocol import ResidualModel

ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}


@dataclass(frozen=True)
class MLPOptions:
    hidden: int = 0  # branch hidden width; 0: same as the residual width
    activation: str = "gelu"
    norm: bool = True  # LayerNorm at the input of every branch (pre-norm); without it LPA stalls near R^2 0.5

    def __post_init__(self) -> None:
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or not 0 <= self.hidden <= 1 << 20:
            raise UsageError(f"model.options.hidden must be an integer >= 0 (0: the width), got {self.hidden!r}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"unknown model.options.activation {self.activation!r}; expected one of {', '.join(ACTIVATIONS)}")


class MLPBlock(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str, norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width) if norm else nn.Identity()
        self.fc1 = nn.Linear(width, hidden)
        self.act = ACTIVATIONS[activation]()
        self.fc2 = nn.Linear(hidden, width)  # the branch's last layer

    def forward(self, h: Tensor) -> Tensor:  # (B, width)
        return h + self.fc2(self.act(self.fc1(self.norm(h))))

    def branch_outputs(self) -> list[nn.Module]:
        return [self.fc2]


def build_mlp(depth: int, width: int, in_shape: tuple[int, ...], out_dim: int, opts: MLPOptions, kind: str = "") -> ResidualModel:
    in_dim = 1
    for d in in_shape:
        in_dim *= d
    embed = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, width)) if len(in_shape) > 1 else nn.Linear(in_dim, width)
    blocks = [MLPBlock(width, opts.hidden or width, opts.activation, opts.norm) for _ in range(depth)]
    head = nn.Linear(width, out_dim)
    return ResidualModel(embed, blocks, head, head_applies="linear")
