"""The pre-norm transformer block shared by the ViT and the GPT (causal or not)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from analyzers.errors import UsageError


def check_transformer_options(heads: int, mlp_ratio: float, dropout: float) -> None:
    if isinstance(heads, bool) or not isinstance(heads, int) or not 1 <= heads <= 4096:
        raise UsageError(f"model.options.heads must be an integer >= 1, got {heads!r}")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not (math.isfinite(mlp_ratio) and 0 < mlp_ratio <= 64):
        raise UsageError(f"model.options.mlp_ratio must be a number in (0, 64], got {mlp_ratio!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UsageError(f"model.options.dropout must be in [0, 1), got {dropout!r}")


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, causal: bool, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.causal = causal
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)  # last layer of the attention branch

    def forward(self, h: Tensor) -> Tensor:  # (B, T, C)
        B, T, C = h.shape
        q, k, v = self.qkv(h).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, C/H)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p)  # (B, H, T, C/H)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class TransformerBlock(nn.Module):
    """h + attn(ln1(h)), then + mlp(ln2(.)): one residual block of the protocol."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, causal: bool, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads, causal, dropout)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)  # last layer of the MLP branch
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:  # (B, T, C)
        h = h + self.drop(self.attn(self.ln1(h)))
        return h + self.drop(self.fc2(self.act(self.fc1(self.ln2(h)))))

    def branch_outputs(self) -> list[nn.Module]:
        return [self.attn.proj, self.fc2]
