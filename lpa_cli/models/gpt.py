"""Decoder-only Transformer language model over bytes (nanoGPT's shape, in the protocol's slots).

embed: token + position embedding  ->  N x causal pre-norm block  ->  head: LayerNorm, Linear to the
vocabulary (optionally tied to the token embedding). The final LayerNorm belongs to the head and is
recomputed at every depth, so depth k's next-token distribution is the logit lens at k.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lpa_cli.models.attention import TransformerBlock, check_transformer_options
from lpa_cli.models.protocol import ResidualModel, linear_op, norm_op


@dataclass(frozen=True)
class GPTOptions:
    heads: int = 4
    mlp_ratio: float = 4.0
    tie_embeddings: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        check_transformer_options(self.heads, self.mlp_ratio, self.dropout)


class TokenEmbed(nn.Module):
    def __init__(self, vocab: int, context: int, width: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, idx: Tensor, start: int = 0) -> Tensor:  # (B, T) int64 -> (B, T, width); start: first token's position
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        return self.tok(idx) + self.pos(positions)


class LMHead(nn.Module):
    def __init__(self, width: int, vocab: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, vocab, bias=False)

    def forward(self, h: Tensor, attention_mask: Tensor | None = None) -> Tensor:  # (B, T, width) -> (B, T, vocab)
        return self.proj(self.norm(h))  # token by token: a padded position's prediction is ignored by its -100 label

    def features(self, h: Tensor) -> Tensor:
        """What the vocabulary projection ``proj`` reads (a sampled head loss reads a few of its rows)."""
        return self.norm(h)

    def numpy_ops(self):
        norm, p1 = norm_op(self.norm, "head.norm")
        proj, p2 = linear_op(self.proj, "head.proj")
        return {"feature_axis": -1, "ops": norm + proj}, p1 | p2


def build_gpt(depth: int, width: int, in_shape: tuple[int, ...], out_dim: int, opts: GPTOptions, kind: str = "") -> ResidualModel:
    if len(in_shape) != 1:
        raise ValueError(f"gpt needs token sequences (T,), got shape {in_shape}")
    if kind not in ("", "lm"):
        raise ValueError(f"gpt is a language model; for {kind} on text use --arch decoder or encoder")
    embed = TokenEmbed(out_dim, in_shape[0], width)
    blocks = [TransformerBlock(width, opts.heads, opts.mlp_ratio, True, opts.dropout) for _ in range(depth)]
    head = LMHead(width, out_dim)
    if opts.tie_embeddings:
        head.proj.weight = embed.tok.weight  # one matrix reads tokens in and out
    return ResidualModel(embed, blocks, head, head_applies="layernorm, linear to vocabulary" + (" (tied)" if opts.tie_embeddings else ""),
                         tokenwise_head=True)
