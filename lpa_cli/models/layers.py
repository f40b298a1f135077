"""Layers the transformer architectures share: RMSNorm, activations, rotary position embeddings.

Their arithmetic follows the Hugging Face implementations the `lpa_cli.models.hf` adapter maps onto them
(norms computed in float32, rotary angles in float32), so a model loaded from a Hugging Face
directory gives that library's outputs (tested to 1e-5).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lpa_core.errors import UsageError


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * w, in float32 (Llama's RMSNorm; T5's LayerNorm)."""

    def __init__(self, width: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def numpy_op(self) -> dict:
        return {"op": "rmsnorm", "eps": self.eps}


def make_norm(kind: str, width: int, eps: float) -> nn.Module:
    if kind == "rmsnorm":
        return RMSNorm(width, eps)
    if kind == "layernorm":
        return nn.LayerNorm(width, eps=eps)
    raise UsageError(f"unknown norm {kind!r}; expected rmsnorm or layernorm")


ACTIVATIONS = {
    "silu": nn.SiLU,
    "gelu": nn.GELU,  # exact (erf)
    "gelu_new": lambda: nn.GELU(approximate="tanh"),  # GPT-2's tanh approximation
    "relu": nn.ReLU,
}


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UsageError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None) -> Tensor:
    """Inverse frequencies of rotary embeddings: plain, ``linear`` (positions divided by a factor) or
    ``llama3`` (long wavelengths divided by the factor, a smooth band between)."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / low, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / high) * ~(wavelen > old / low)
        return torch.where(medium, smoothed, scaled)
    raise UsageError(f"rotary scaling {kind!r} is not implemented (lpa implements default, linear and llama3)")


class Rotary(nn.Module):
    """Rotary position embeddings applied to queries and keys (the rotate-half convention)."""

    def __init__(self, head_dim: int, theta: float, scaling: dict | None) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rope_frequencies(head_dim, theta, scaling), persistent=False)
        self._last: tuple | None = None  # (key, cos, sin) of the last call: every layer shares this module

    def angles(self, start: int, T: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(T, d) cos and sin at positions start .. start + T - 1. The blocks of one forward pass ask for
        the same ones, so they are computed once, not once per layer (seven small kernels each time,
        which on a GPU cost launches, not FLOPs); while compiling, the graph computes them itself."""
        key = (start, T, like.dtype, like.device, self.inv_freq._version, torch.is_inference_mode_enabled())
        if self._last is not None and self._last[0] == key and not torch.compiler.is_compiling():
            return self._last[1], self._last[2]
        positions = torch.arange(start, start + T, device=like.device, dtype=torch.float32)
        freqs = positions[:, None] * self.inv_freq.to(like.device)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(like.dtype), emb.sin().to(like.dtype)
        if not torch.compiler.is_compiling():
            self._last = (key, cos, sin)
        return cos, sin

    def forward(self, q: Tensor, k: Tensor, start: int) -> tuple[Tensor, Tensor]:  # (B, H, T, d)
        cos, sin = self.angles(start, q.shape[2], q)
        return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
