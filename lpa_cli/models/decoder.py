"""A configurable decoder-only transformer: the Llama layout by default, and through its options the
Qwen2, Qwen3, Mistral and GPT-2 layouts, so `lpa_cli.models.hf` can load those families' weights into it.

embed: token embedding (+ learned positions)  ->  N x pre-norm block [h + attn(norm(h)); h + mlp(norm(h))]
->  head: final norm, then the vocabulary projection (language modelling) or the last real token's
state through a new linear classifier (classification, as Hugging Face's *ForSequenceClassification
classes do). The final norm belongs to the head and is recomputed at every depth: depth k's LM
prediction is the logit lens at k.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lpa_core.errors import UsageError
from lpa_cli.models.attention import Attention, LayerCache
from lpa_cli.models.layers import ACTIVATIONS, Rotary, make_activation, make_norm
from lpa_cli.models.protocol import ResidualModel, linear_op, norm_op


@dataclass(frozen=True)
class DecoderOptions:
    heads: int = 4
    kv_heads: int = 0  # grouped-query attention: key/value heads (0: as many as heads)
    head_dim: int = 0  # 0: width // heads
    hidden: int = 0  # MLP width (0: 8/3 x width for gated MLPs, rounded up to 16; 4 x width otherwise)
    gated: bool = True  # SwiGLU-style MLP: down(act(gate(x)) * up(x)); false: down(act(up(x)))
    activation: str = "silu"
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_eps: float = 1e-6
    positions: str = "rope"  # rope | learned
    max_positions: int = 0  # positions the model reads: the learned table's size (0: the task's context); rope: a bound (0: none)
    rope_theta: float = 10000.0
    rope_scaling: dict = field(default_factory=dict)  # {"rope_type": "linear"|"llama3", "factor": ...}
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head's queries and keys
    window: int = 0  # sliding-window attention: keys within the last `window` positions (0: all)
    layer_types: list[str] = field(default_factory=list)  # per layer "full" or "sliding" (empty: all sliding when window > 0)
    tie_embeddings: bool = False
    vocab: int = 0  # token vocabulary (0: the output size, for language models)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("heads", "kv_heads", "head_dim", "hidden", "max_positions", "window", "vocab"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "heads" else 0) or value > 1 << 24:
                raise UsageError(f"model.options.{name} must be an integer >= {1 if name == 'heads' else 0}, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"unknown model.options.activation {self.activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        if self.norm not in ("rmsnorm", "layernorm") or self.positions not in ("rope", "learned"):
            raise UsageError("model.options.norm is rmsnorm or layernorm, model.options.positions rope or learned")
        if any(t not in ("full", "sliding") for t in self.layer_types):
            raise UsageError("model.options.layer_types lists 'full' or 'sliding' per layer")
        if not 0 <= self.dropout < 1 or not self.norm_eps > 0 or not self.rope_theta > 0:
            raise UsageError("model.options: dropout in [0, 1), norm_eps > 0 and rope_theta > 0")


class DecoderEmbed(nn.Module):
    def __init__(self, vocab: int, width: int, max_positions: int, table: bool = True) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_positions, width) if max_positions and table else None
        self.max_positions = max_positions or None  # what generation may not run past (rotary models too)
        nn.init.normal_(self.tok.weight, std=0.02)
        if self.pos is not None:
            nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:  # (B, T) -> (B, T, C)
        h = self.tok(ids)
        if self.pos is not None:
            h = h + self.pos(torch.arange(start, start + ids.shape[1], device=ids.device))
        return h


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, activation: str, gated: bool, bias: bool) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=bias) if gated else None
        self.up = nn.Linear(width, hidden, bias=bias)
        self.act = make_activation(activation)
        self.down = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is None:
            return self.down(self.act(self.up(x)))
        return self.down(self.act(self.gate(x)) * self.up(x))


class DecoderBlock(nn.Module):
    def __init__(self, width: int, opts: DecoderOptions, hidden: int, rotary: Rotary | None, window: int) -> None:
        super().__init__()
        eps = opts.norm_eps
        self.norm1 = make_norm(opts.norm, width, eps)
        self.attn = Attention(width, opts.heads, causal=True, kv_heads=opts.kv_heads, head_dim=opts.head_dim, qkv_bias=opts.qkv_bias,
                              out_bias=opts.out_bias, qk_norm_eps=eps if opts.qk_norm else None, rotary=rotary, window=window,
                              dropout=opts.dropout)
        self.norm2 = make_norm(opts.norm, width, eps)
        self.mlp = MLP(width, hidden, opts.activation, opts.gated, opts.mlp_bias)
        self.drop = nn.Dropout(opts.dropout)

    def forward(self, h: Tensor, attention_mask: Tensor | None = None, cache: LayerCache | None = None) -> Tensor:
        h = h + self.drop(self.attn(self.norm1(h), attention_mask, cache))
        return h + self.drop(self.mlp(self.norm2(h)))

    def fill_cache(self, h: Tensor, cache: LayerCache) -> None:
        self.attn.fill_cache(self.norm1(h), cache)

    def branch_outputs(self) -> list[nn.Module]:
        return [self.attn.out, self.mlp.down]


class LMHead(nn.Module):
    """Final norm, then the vocabulary projection (no bias), position by position."""

    def __init__(self, norm: nn.Module, width: int, vocab: int) -> None:
        super().__init__()
        self.norm = norm
        self.proj = nn.Linear(width, vocab, bias=False)

    def forward(self, h: Tensor, attention_mask: Tensor | None = None) -> Tensor:  # (..., C) -> (..., vocab)
        return self.proj(self.norm(h))  # token by token: a padded position's prediction is ignored by its -100 label

    def features(self, h: Tensor) -> Tensor:
        """What the vocabulary projection ``proj`` reads (a sampled head loss reads a few of its rows)."""
        return self.norm(h)

    def numpy_ops(self):
        norm, p1 = norm_op(self.norm, "head.norm")
        proj, p2 = linear_op(self.proj, "head.proj")
        return {"feature_axis": -1, "ops": norm + proj}, p1 | p2


def last_token(h: Tensor, attention_mask: Tensor | None) -> Tensor:
    """(B, T, C) -> (B, C): the state at each sequence's last real token (right padding)."""
    if attention_mask is None:
        return h[:, -1]
    last = attention_mask.long().sum(dim=1).clamp_min(1) - 1
    return h[torch.arange(h.shape[0], device=h.device), last]


class LastTokenHead(nn.Module):
    """Final norm, the last real token, a linear classifier without bias (Hugging Face's ``score``)."""

    def __init__(self, norm: nn.Module, width: int, classes: int) -> None:
        super().__init__()
        self.norm = norm
        self.score = nn.Linear(width, classes, bias=False)

    def forward(self, h: Tensor, attention_mask: Tensor | None = None) -> Tensor:  # (B, T, C) -> (B, classes)
        return self.score(last_token(self.norm(h), attention_mask))


def mlp_hidden(width: int, opts: DecoderOptions) -> int:
    if opts.hidden:
        return opts.hidden
    return -(-int(8 * width / 3) // 16) * 16 if opts.gated else 4 * width


def build_decoder(depth: int, width: int, in_shape: tuple[int, ...], out_dim: int, opts: DecoderOptions, kind: str = "") -> ResidualModel:
    if len(in_shape) != 1:
        raise ValueError(f"decoder needs token sequences (T,), got shape {in_shape}")
    if kind not in ("", "lm", "classification"):
        raise ValueError(f"decoder does {kind}? it does language modelling and classification")
    vocab = opts.vocab or (out_dim if kind in ("", "lm") else 0)
    if not vocab:
        raise ValueError("classification needs the token vocabulary: set model.options.vocab")
    head_dim = opts.head_dim or width // opts.heads
    rotary = Rotary(head_dim, opts.rope_theta, opts.rope_scaling or None) if opts.positions == "rope" else None
    learned = opts.positions == "learned"
    max_positions = (opts.max_positions or in_shape[0]) if learned else opts.max_positions
    if max_positions and in_shape[0] > max_positions:
        raise ValueError(f"context {in_shape[0]} exceeds the model's {max_positions} positions")
    types = list(opts.layer_types) or ["sliding" if opts.window else "full"] * depth
    if len(types) != depth:
        raise ValueError(f"layer_types lists {len(types)} layers for {depth} blocks")
    hidden = mlp_hidden(width, opts)
    embed = DecoderEmbed(vocab, width, max_positions, table=learned)
    blocks = [DecoderBlock(width, opts, hidden, rotary, opts.window if t == "sliding" else 0) for t in types]
    norm = make_norm(opts.norm, width, opts.norm_eps)
    if kind == "classification":
        head: nn.Module = LastTokenHead(norm, width, out_dim)
        applies = f"final {opts.norm}, last real token, linear classifier"
    else:
        head = LMHead(norm, width, vocab)
        if opts.tie_embeddings:
            head.proj.weight = embed.tok.weight  # one matrix reads tokens in and out
        applies = f"final {opts.norm}, linear to vocabulary" + (" (tied)" if opts.tie_embeddings else "")
    return ResidualModel(embed, blocks, head, head_applies=applies, tokenwise_head=kind != "classification")
