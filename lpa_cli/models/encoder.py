"""A BERT-style bidirectional encoder for text classification (and the layout `lpa_cli.models.hf` loads
BERT checkpoints into).

embed: token + position (+ token type 0) embedding, LayerNorm  ->  N x block  ->  head: pooling (the
first token or the mean of the real tokens), an optional pooler (dense + tanh, as BERT's), a linear
classifier. Blocks are post-norm as in BERT (``norm_position = "post"``: h = norm(h + attn(h)), then
h = norm(h + mlp(h))) or pre-norm (the default from scratch: every block starts as the identity).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lpa_core.errors import UsageError
from lpa_cli.models.attention import Attention
from lpa_cli.models.layers import ACTIVATIONS, make_activation
from lpa_cli.models.protocol import ResidualModel


@dataclass(frozen=True)
class EncoderOptions:
    heads: int = 4
    hidden: int = 0  # MLP width (0: 4 x width)
    activation: str = "gelu"
    norm_eps: float = 1e-12
    norm_position: str = "pre"  # pre | post (BERT)
    max_positions: int = 0  # position table size (0: the task's context)
    type_vocab: int = 2
    pool: str = "mean"  # mean (of the real tokens) | cls (the first token)
    pooler: bool = False  # a dense + tanh layer after pooling (BERT's pooler)
    vocab: int = 0  # token vocabulary (required: the task's tokenizer sets it)
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("heads", "hidden", "max_positions", "type_vocab", "vocab"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name in ("heads", "type_vocab") else 0):
                raise UsageError(f"model.options.{name} must be a non-negative integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"unknown model.options.activation {self.activation!r}; expected one of {', '.join(ACTIVATIONS)}")
        if self.norm_position not in ("pre", "post") or self.pool not in ("mean", "cls"):
            raise UsageError("model.options.norm_position is pre or post; model.options.pool mean or cls")
        if not 0 <= self.dropout < 1 or not self.norm_eps > 0:
            raise UsageError("model.options: dropout in [0, 1) and norm_eps > 0")


class EncoderEmbed(nn.Module):
    def __init__(self, vocab: int, width: int, max_positions: int, type_vocab: int, eps: float) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(max_positions, width)
        self.types = nn.Embedding(type_vocab, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        for table in (self.tok, self.pos, self.types):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, ids: Tensor) -> Tensor:  # (B, T) -> (B, T, C); every token of type 0
        T = ids.shape[1]
        h = self.tok(ids) + self.pos(torch.arange(T, device=ids.device)) + self.types.weight[0]
        return self.norm(h)


class EncoderBlock(nn.Module):
    def __init__(self, width: int, opts: EncoderOptions, hidden: int) -> None:
        super().__init__()
        self.post = opts.norm_position == "post"
        self.attn = Attention(width, opts.heads, causal=False, dropout=opts.dropout)
        self.norm1 = nn.LayerNorm(width, eps=opts.norm_eps)
        self.up = nn.Linear(width, hidden)
        self.act = make_activation(opts.activation)
        self.down = nn.Linear(hidden, width)
        self.norm2 = nn.LayerNorm(width, eps=opts.norm_eps)
        self.drop = nn.Dropout(opts.dropout)

    def forward(self, h: Tensor, attention_mask: Tensor | None = None) -> Tensor:  # (B, T, C)
        if self.post:
            h = self.norm1(h + self.drop(self.attn(h, attention_mask)))
            return self.norm2(h + self.drop(self.down(self.act(self.up(h)))))
        h = h + self.drop(self.attn(self.norm1(h), attention_mask))
        return h + self.drop(self.down(self.act(self.up(self.norm2(h)))))

    def branch_outputs(self) -> list[nn.Module]:
        return [self.attn.out, self.down]


class PooledHead(nn.Module):
    """[final norm (pre-norm encoders)], pooling, [pooler: dense + tanh], linear classifier."""

    def __init__(self, width: int, classes: int, opts: EncoderOptions) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=opts.norm_eps) if opts.norm_position == "pre" else nn.Identity()
        self.pool = opts.pool
        self.pooler = nn.Linear(width, width) if opts.pooler else None
        self.fc = nn.Linear(width, classes)

    def forward(self, h: Tensor, attention_mask: Tensor | None = None) -> Tensor:  # (B, T, C) -> (B, classes)
        h = self.norm(h)
        if self.pool == "cls":
            x = h[:, 0]
        elif attention_mask is None:
            x = h.mean(dim=1)
        else:
            w = attention_mask.to(h.dtype)[..., None]
            x = (h * w).sum(dim=1) / w.sum(dim=1).clamp_min(1)
        if self.pooler is not None:
            x = torch.tanh(self.pooler(x))
        return self.fc(x)


def build_encoder(depth: int, width: int, in_shape: tuple[int, ...], out_dim: int, opts: EncoderOptions, kind: str = "") -> ResidualModel:
    if len(in_shape) != 1:
        raise ValueError(f"encoder needs token sequences (T,), got shape {in_shape}")
    if kind not in ("", "classification"):
        raise ValueError(f"the encoder classifies texts; {kind} is not something it does (use --arch decoder for language models)")
    if not opts.vocab:
        raise ValueError("the encoder needs the token vocabulary: set model.options.vocab")
    max_positions = opts.max_positions or in_shape[0]
    if in_shape[0] > max_positions:
        raise ValueError(f"context {in_shape[0]} exceeds the model's {max_positions} positions")
    embed = EncoderEmbed(opts.vocab, width, max_positions, opts.type_vocab, opts.norm_eps)
    blocks = [EncoderBlock(width, opts, opts.hidden or 4 * width) for _ in range(depth)]
    head = PooledHead(width, out_dim, opts)
    applies = ("final layernorm, " if opts.norm_position == "pre" else "") + f"{opts.pool}-pool, " + ("pooler (dense, tanh), " if opts.pooler else "") + "linear"
    return ResidualModel(embed, blocks, head, head_applies=applies)
