"""The one protocol every architecture fills: ``embed``, ordered residual ``blocks``, one shared ``head``.

    h_0 = embed(x)
    h_k = blocks[k-1](h_{k-1}) = h_{k-1} + F_k(h_{k-1})      k = 1..N
    yhat_k = head(h_k)                                        k = 0..N

Depth 0 is the embedding read by the head; depth N is the model's ordinary output. Whatever the head
applies (a final norm, pooling, the LM projection) is applied afresh at every depth. Objectives, the
tracer, the exporter and inference use only this class, never an architecture's own code.

Padded token batches: pass ``attention_mask`` ((B, T), 1 for real tokens, 0 for padding). It is
handed to every block and to the head as the keyword ``attention_mask`` (only when given), so blocks
that attend and heads that pool can ignore padding; modules that never see padded batches need not
accept it.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)


def _call(module: nn.Module, h: Tensor, attention_mask: Tensor | None) -> Tensor:
    return module(h) if attention_mask is None else module(h, attention_mask=attention_mask)


class ResidualModel(nn.Module):
    """A residual network as embed -> blocks -> shared head.

    Each block maps the residual stream to its next value (the residual addition happens inside the
    block, so a transformer block with two additions is still one block). Any ``nn.Module``s that fit
    this shape can be wrapped: ``ResidualModel(embed, blocks, head)``.

    ``tokenwise_head``: the head maps each position independently (an LM head), so a loss may run it
    over any subset of positions. ``checkpoint_blocks``: recompute each block's activations in the
    backward pass instead of keeping them (activation checkpointing).
    """

    def __init__(self, embed: nn.Module, blocks: Sequence[nn.Module], head: nn.Module, head_applies: str = "",
                 tokenwise_head: bool = False) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        self.head = head
        self.head_applies = head_applies  # what the head does at every depth, e.g. "layernorm, mean-pool, linear"
        self.tokenwise_head = tokenwise_head
        self.checkpoint_blocks = False

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def input_vocab(self) -> int | None:
        """How many token ids the embedding reads (lpa's token models and imports name it ``tok``);
        None when it is not a token embedding lpa knows."""
        tok = getattr(self.embed, "tok", None)
        return tok.num_embeddings if isinstance(tok, nn.Embedding) else None

    @property
    def num_depths(self) -> int:
        return len(self.blocks) + 1

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = _call(block, h, attention_mask)
        return _call(self.head, h, attention_mask)

    def read(self, h: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The shared head applied to a state."""
        return _call(self.head, h, attention_mask)

    def states(self, x: Tensor, upto: int | None = None, detach_inputs: bool = False,
               attention_mask: Tensor | None = None) -> Iterator[Tensor]:
        """Yield the residual stream h_0, h_1, ..., h_upto (default: N).

        ``detach_inputs`` cuts the graph before every block: block k then gets gradients only
        through losses on h_k and later, never from what it feeds (used by ``lpa-local``).
        """
        upto = self.num_blocks if upto is None else upto
        h = self.embed(x)
        yield h
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in itertools.islice(self.blocks, upto):  # slicing a ModuleList builds a new module
            inp = h.detach() if detach_inputs else h
            if recompute:
                h = checkpoint(functools.partial(_call, block, attention_mask=attention_mask), inp, use_reentrant=False)
            else:
                h = _call(block, inp, attention_mask)
            yield h

    def predictions(self, x: Tensor, depths: Sequence[int] | None = None, detach_inputs: bool = False,
                    attention_mask: Tensor | None = None) -> list[Tensor]:
        """The head's prediction at each depth in ``depths`` (default 0..N), in one pass over the blocks.

        Blocks beyond the deepest requested depth are not run.
        """
        depths = list(range(self.num_depths)) if depths is None else list(depths)
        if not depths:
            return []
        wanted = set(depths)
        by_depth: dict[int, Tensor] = {}
        for k, h in enumerate(self.states(x, upto=max(depths), detach_inputs=detach_inputs, attention_mask=attention_mask)):
            if k in wanted:
                by_depth[k] = self.read(h, attention_mask)
        return [by_depth[k] for k in depths]

    def truncated(self, depth: int) -> ResidualModel:
        """A model made of the embedding, the first ``depth`` blocks and the shared head (shares weights)."""
        if not 0 <= depth <= self.num_blocks:
            raise ValueError(f"depth {depth} is outside 0..{self.num_blocks}")
        return ResidualModel(self.embed, list(self.blocks[:depth]), self.head, self.head_applies, self.tokenwise_head)


def count_parameters(model: nn.Module) -> int:
    """Parameters, each shared tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def export_head(head: nn.Module) -> tuple[dict, dict[str, Tensor]] | None:
    """The head as numpy-executable ops for `analyzers.heads` (probes apply it without torch).

    Returns ``({"feature_axis": int, "ops": [...]}, params)`` or None when the head is made of pieces
    that have no exact numpy form. Heads that are not a plain ``nn.Linear`` describe themselves via
    ``numpy_ops()``.
    """
    try:
        if hasattr(head, "numpy_ops"):
            return head.numpy_ops()
        if type(head) is nn.Linear:
            ops, params = linear_op(head, "head")
            return {"feature_axis": -1, "ops": ops}, params
    except TypeError as err:
        log.warning("the head cannot be exported for probes: %s", err)
        return None
    return None


def linear_op(layer: nn.Linear, name: str) -> tuple[list[dict], dict[str, Tensor]]:
    params = {f"{name}.weight": layer.weight.detach()}
    op = {"op": "linear", "weight": f"{name}.weight"}
    if layer.bias is not None:
        params[f"{name}.bias"] = layer.bias.detach()
        op["bias"] = f"{name}.bias"
    return [op], params


def _torch_norm(norm: nn.Module) -> dict:
    if type(norm) is nn.LayerNorm:
        if len(norm.normalized_shape) != 1:
            raise TypeError(f"LayerNorm over {tuple(norm.normalized_shape)} has no numpy export (one axis only)")
        return {"op": "layernorm", "eps": norm.eps}
    return {"op": "groupnorm", "eps": norm.eps, "groups": norm.num_groups}


def norm_op(norm: nn.Module, name: str) -> tuple[list[dict], dict[str, Tensor]]:
    """A norm as a numpy op. Exact classes only: torch's LayerNorm and GroupNorm, or a class that
    describes itself (``numpy_op()``, e.g. lpa's RMSNorm). Anything else is refused rather than
    guessed from its name: a norm computing ``x̂·(1 + w)`` would be exported wrong in silence."""
    if hasattr(norm, "numpy_op"):
        op = norm.numpy_op()
    elif type(norm) in (nn.LayerNorm, nn.GroupNorm):
        op = _torch_norm(norm)
    else:
        raise TypeError(f"no numpy export for norm {type(norm).__name__}")
    params: dict[str, Tensor] = {}
    for attr in ("weight", "bias"):
        value = getattr(norm, attr, None)
        if value is not None:
            params[f"{name}.{attr}"] = value.detach()
            op[attr] = f"{name}.{attr}"
    return [op], params
