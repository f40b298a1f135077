"""Self-attention for every transformer in lpa (ViT, the byte GPT, the decoder and encoder families),
with padding masks, sliding windows and a key/value cache for incremental decoding.

One class serves all: fused or separate q/k/v projections, grouped-query heads, optional rotary
embeddings and per-head q/k norms (Qwen3). Masks are built only when something needs one; a plain
causal or full attention takes PyTorch's fused path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpa_core.errors import UsageError
from lpa_cli.models.layers import RMSNorm, Rotary


def check_transformer_options(heads: int, mlp_ratio: float, dropout: float) -> None:
    if isinstance(heads, bool) or not isinstance(heads, int) or not 1 <= heads <= 4096:
        raise UsageError(f"model.options.heads must be an integer >= 1, got {heads!r}")
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not (math.isfinite(mlp_ratio) and 0 < mlp_ratio <= 64):
        raise UsageError(f"model.options.mlp_ratio must be a number in (0, 64], got {mlp_ratio!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise UsageError(f"model.options.dropout must be in [0, 1), got {dropout!r}")


class LayerCache:
    """One layer's keys and values of the positions decoded so far: (B, H_kv, T, d) each."""

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else int(self.k.shape[2])

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (rejected draft tokens)."""
        if self.k is not None:
            self.k, self.v = self.k[:, :, :length], self.v[:, :, :length]


class Attention(nn.Module):
    """Multi-head self-attention. ``window`` > 0: each query sees only the last ``window`` keys
    (itself included), as sliding-window models (Mistral, Qwen2) do."""

    def __init__(self, width: int, heads: int, *, causal: bool, kv_heads: int = 0, head_dim: int = 0, fused: bool = False,
                 qkv_bias: bool = True, out_bias: bool = True, qk_norm_eps: float | None = None, rotary: Rotary | None = None,
                 window: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        kv_heads = kv_heads or heads
        if not head_dim:
            if width % heads:
                raise ValueError(f"width {width} is not divisible by heads {heads}")
            head_dim = width // heads
        if heads % kv_heads:
            raise ValueError(f"heads {heads} is not a multiple of kv_heads {kv_heads}")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.causal, self.window, self.dropout, self.fused = causal, window, dropout, fused
        if fused:
            self.qkv = nn.Linear(width, (heads + 2 * kv_heads) * head_dim, bias=qkv_bias)
            self.proj = nn.Linear(heads * head_dim, width, bias=out_bias)  # last layer of the attention branch
        else:
            self.q_proj = nn.Linear(width, heads * head_dim, bias=qkv_bias)
            self.k_proj = nn.Linear(width, kv_heads * head_dim, bias=qkv_bias)
            self.v_proj = nn.Linear(width, kv_heads * head_dim, bias=qkv_bias)
            self.o_proj = nn.Linear(heads * head_dim, width, bias=out_bias)
        self.q_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.k_norm = RMSNorm(head_dim, qk_norm_eps) if qk_norm_eps is not None else None
        self.rotary = rotary

    @property
    def out(self) -> nn.Linear:
        return self.proj if self.fused else self.o_proj

    def forward(self, h: Tensor, attention_mask: Tensor | None = None, cache: LayerCache | None = None) -> Tensor:  # (B, T, C)
        B, T, _ = h.shape
        d = self.head_dim
        if self.fused:
            q, k, v = self.qkv(h).split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        else:
            q, k, v = self.q_proj(h), self.k_proj(h), self.v_proj(h)
        q = q.view(B, T, self.heads, d)
        k = k.view(B, T, self.kv_heads, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, T, self.kv_heads, d).transpose(1, 2)  # (B, H, T, d)
        start = cache.length if cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, k, start)
        if cache is not None:
            k, v = cache.extend(k, v)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, dim=1)
            v = v.repeat_interleave(self.heads // self.kv_heads, dim=1)
        mask = self._mask(T, k.shape[2], start, attention_mask, h.device)
        p = self.dropout if self.training else 0.0
        if mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal and T > 1, dropout_p=p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(B, T, self.heads * d))

    def fill_cache(self, h: Tensor, cache: LayerCache) -> None:
        """Append the keys and values of states ``h`` (already normed) without attending: an early-exit
        decoder gives a layer it skips this position's entries from the exit state (state copying)."""
        B, T, _ = h.shape
        d = self.head_dim
        if self.fused:
            _, k, v = self.qkv(h).split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        else:
            k, v = self.k_proj(h), self.v_proj(h)
        k = k.view(B, T, self.kv_heads, d)
        if self.k_norm is not None:
            k = self.k_norm(k)
        k, v = k.transpose(1, 2), v.view(B, T, self.kv_heads, d).transpose(1, 2)
        if self.rotary is not None:
            _, k = self.rotary(k, k, cache.length)
        cache.extend(k, v)

    def _mask(self, Tq: int, Tk: int, start: int, padding: Tensor | None, device: torch.device) -> Tensor | None:
        """A boolean (B|1, 1, Tq, Tk) mask of what each query may see; None when the fused causal (or
        full) path is exact: no padding, no window that bites, no cached prefix with several queries."""
        window = self.window if self.window and self.window < Tk else 0
        if padding is None and not window and (start == 0 or Tq == 1 or not self.causal):
            return None
        q_pos = torch.arange(start, start + Tq, device=device)[:, None]
        k_pos = torch.arange(Tk, device=device)[None, :]
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
        if self.causal:
            allowed &= k_pos <= q_pos
        if window:
            allowed &= k_pos > q_pos - self.window
        allowed = allowed[None, None]
        if padding is not None:  # a padded query still sees itself: a row with nothing allowed is NaN, and NaN*0 poisons gradients
            allowed = (allowed & padding[:, None, None, :Tk].bool()) | (k_pos == q_pos)[None, None]
        return allowed


class TransformerBlock(nn.Module):
    """h + attn(ln1(h)), then + mlp(ln2(.)): one residual block of the protocol (ViT, the byte GPT)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, causal: bool, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal=causal, fused=True, dropout=dropout)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)  # last layer of the MLP branch
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, attention_mask: Tensor | None = None, cache: LayerCache | None = None) -> Tensor:  # (B, T, C)
        h = h + self.drop(self.attn(self.ln1(h), attention_mask, cache))
        return h + self.drop(self.fc2(self.act(self.fc1(self.ln2(h)))))

    def fill_cache(self, h: Tensor, cache: LayerCache) -> None:
        self.attn.fill_cache(self.ln1(h), cache)

    def branch_outputs(self) -> list[nn.Module]:
        return [self.attn.proj, self.fc2]
