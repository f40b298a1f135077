"""The one protocol every architecture fills: ``embed``, ordered residual ``blocks``, one shared ``head``.

    h_0 = embed(x)
    h_k = blocks[k-1](h_{k-1}) = h_{k-1} + F_k(h_{k-1})      k = 1..N
    yhat_k = head(h_k)                                        k = 0..N

Depth 0 is the embedding read by the head; depth N is the model's ordinary output. Whatever the head
applies (a final norm, pooling, the LM projection) is applied afresh at every depth. Objectives, the
tracer and the exporter use only this class, never an architecture's own code.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn


class ResidualModel(nn.Module):
    """A residual network as embed -> blocks -> shared head.

    Each block maps the residual stream to its next value (the residual addition happens inside the
    block, so a transformer block with two additions is still one block). Any ``nn.Module``s that fit
    this shape can be wrapped: ``ResidualModel(embed, blocks, head)``.
    """

    def __init__(self, embed: nn.Module, blocks: Sequence[nn.Module], head: nn.Module, head_applies: str = "") -> None:
        super().__init__()
        self.embed = embed
        self.blocks = blocks if isinstance(blocks, nn.ModuleList) else nn.ModuleList(blocks)
        self.head = head
        self.head_applies = head_applies  # what the head does at every depth, e.g. "layernorm, mean-pool, linear"

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_depths(self) -> int:
        return len(self.blocks) + 1

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)

    def states(self, x: Tensor, upto: int | None = None, detach_inputs: bool = False) -> Iterator[Tensor]:
        """Yield the residual stream h_0, h_1, ..., h_upto (default: N).

        ``detach_inputs`` cuts the graph before every block: block k then gets gradients only
        through losses on h_k and later, never from what it feeds (used by ``lpa-local``).
        """
        upto = self.num_blocks if upto is None else upto
        h = self.embed(x)
        yield h
        for block in itertools.islice(self.blocks, upto):  # slicing a ModuleList builds a new module
            h = block(h.detach() if detach_inputs else h)
            yield h

    def predictions(self, x: Tensor, depths: Sequence[int] | None = None, detach_inputs: bool = False) -> list[Tensor]:
        """The head's prediction at each depth in ``depths`` (default 0..N), in one pass over the blocks.

        Blocks beyond the deepest requested depth are not run.
        """
        depths = list(range(self.num_depths)) if depths is None else list(depths)
        if not depths:
            return []
        wanted = set(depths)
        by_depth: dict[int, Tensor] = {}
        for k, h in enumerate(self.states(x, upto=max(depths), detach_inputs=detach_inputs)):
            if k in wanted:
                by_depth[k] = self.head(h)
        return [by_depth[k] for k in depths]

    def truncated(self, depth: int) -> ResidualModel:
        """A model made of the embedding, the first ``depth`` blocks and the shared head (shares weights)."""
        if not 0 <= depth <= self.num_blocks:
            raise ValueError(f"depth {depth} is outside 0..{self.num_blocks}")
        return ResidualModel(self.embed, list(self.blocks[:depth]), self.head, self.head_applies)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def zero_last_layer(branch_out: nn.Module) -> None:
    """Zero a residual branch's last layer so the block starts as the identity (timm's zero_init_last)."""
    for p in branch_out.parameters():
        p.zero_()


def export_head(head: nn.Module) -> tuple[dict, dict[str, Tensor]] | None:
    """The head as numpy-executable ops for `analyzers.heads` (probes apply it without torch).

    Returns ``({"feature_axis": int, "ops": [...]}, params)`` or None when the head is not made of
    supported pieces. Heads that are not a plain ``nn.Linear`` describe themselves via ``numpy_ops()``.
    """
    if hasattr(head, "numpy_ops"):
        return head.numpy_ops()
    if isinstance(head, nn.Linear):
        ops, params = linear_op(head, "head")
        return {"feature_axis": -1, "ops": ops}, params
    return None


def linear_op(layer: nn.Linear, name: str) -> tuple[list[dict], dict[str, Tensor]]:
    params = {f"{name}.weight": layer.weight.detach()}
    op = {"op": "linear", "weight": f"{name}.weight"}
    if layer.bias is not None:
        params[f"{name}.bias"] = layer.bias.detach()
        op["bias"] = f"{name}.bias"
    return [op], params


def norm_op(norm: nn.Module, name: str) -> tuple[list[dict], dict[str, Tensor]]:
    """LayerNorm / GroupNorm / RMS-style norms (a ``weight`` and ``variance_epsilon``/``eps``)."""
    params: dict[str, Tensor] = {}
    if isinstance(norm, nn.LayerNorm):
        op = {"op": "layernorm", "eps": norm.eps}
    elif isinstance(norm, nn.GroupNorm):
        op = {"op": "groupnorm", "eps": norm.eps, "groups": norm.num_groups}
    elif hasattr(norm, "variance_epsilon") or type(norm).__name__.endswith("RMSNorm"):
        op = {"op": "rmsnorm", "eps": float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))}
    else:
        raise TypeError(f"cannot export norm {type(norm).__name__}")
    for attr in ("weight", "bias"):
        value = getattr(norm, attr, None)
        if value is not None:
            params[f"{name}.{attr}"] = value.detach()
            op[attr] = f"{name}.{attr}"
    return [op], params
