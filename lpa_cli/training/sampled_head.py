"""A head loss for depths below N whose cost does not grow with the vocabulary: sampled softmax.

Depth N's loss stays exact. Each step draws one candidate set of vocabulary rows, shared by every
intermediate depth and every position, so each depth's head is one matmul against ``|C|`` rows
instead of ``V``:

- always in: the batch's target tokens and, with ``--align kl``, the final depth's top `TOP_K` tokens at
  every position (the mass the alignment term compares);
- K negatives drawn uniformly without replacement from the other ``m = V - |always|`` tokens.

The softmax's normaliser ``Z = sum_v exp(z_v)`` is estimated by ``sum_{always} exp(z_v) +
(m / K) sum_{drawn} exp(z_v)``: every token outside the always-in set is drawn with probability
``K / m``, so the estimate is unbiased for Z (Horvitz-Thompson), and the drawn logits are shifted by
``log(m / K)`` before the ordinary cross-entropy and KL. Its logarithm is biased low (Jensen: the loss
of depth k is underestimated, most when few candidates carry little of the mass), the gradient is
sampled softmax's usual consistent estimate, and both are exact when K >= m: every row is a candidate,
in vocabulary order, with no shift, which is bit for bit the exact head (tested).

The head must say how to read a few rows: ``features(h)`` (what the projection reads) and ``proj``
(an ``nn.Linear`` to the vocabulary) — lpa's LM heads, Hugging Face imports included. Any other head is
refused with the option's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lpa_core.errors import UsageError
from lpa_cli.data.batch import IGNORE_INDEX, Batch

TOP_K = 16  # the final depth's top tokens per position kept as candidates for --align kl


def parse_sampled(mode: str) -> int:
    """K of ``sampled:K`` (0 for any other head-loss mode)."""
    kind, _, k = mode.partition(":")
    return int(k) if kind == "sampled" else 0


def projection(head: nn.Module, option: str) -> nn.Linear:
    """The head's vocabulary projection, or a one-line refusal naming ``option``."""
    proj = getattr(head, "proj", None)
    if not callable(getattr(head, "features", None)) or not isinstance(proj, nn.Linear):
        raise UsageError(f"{option}: this model's head ({type(head).__name__}) has no vocabulary projection lpa can sample "
                         "(it needs features() and proj, as lpa's language-model heads have)")
    return proj


@dataclass
class Candidates:
    ids: Tensor  # (C,) vocabulary ids, ascending
    shift: Tensor  # (C,) added to each candidate's logit: 0 always-in, log(m / K) for drawn ones
    exact: bool  # every row a candidate, unshifted: the exact softmax


def always_in(wanted: Tensor) -> Tensor:
    """The distinct real token ids among ``wanted`` (on the host), padding dropped."""
    ids = wanted.unique()
    return ids[ids != IGNORE_INDEX]


def draw(vocab: int, always: Tensor, k: int, generator: torch.Generator | None, device: torch.device) -> Candidates:
    """The always-in ids (on the host) and K of the others, drawn uniformly without replacement by
    ``generator``; the result is copied to ``device`` without waiting for it."""
    keep = torch.zeros(vocab, dtype=torch.bool)
    keep[always] = True
    rest = (~keep).nonzero().squeeze(1)
    m = len(rest)
    shift = torch.zeros(vocab)
    if k < m:
        drawn = rest[torch.randperm(m, generator=generator)[:k]]
        keep[drawn] = True
        shift[drawn] = math.log(m / k)
    else:
        keep[rest] = True  # every row: the exact softmax
    ids = keep.nonzero().squeeze(1)
    return Candidates(ids.to(device, non_blocking=True), shift[ids].to(device, non_blocking=True), exact=k >= m)


class CandidateHead(nn.Module):
    """The shared head restricted to the candidate rows (its gradient reaches the full matrix)."""

    def __init__(self, head: nn.Module, proj: nn.Linear, cand: Candidates) -> None:
        super().__init__()
        self.head = head
        exact = cand.exact
        self.weight = proj.weight if exact else proj.weight.index_select(0, cand.ids)
        self.bias = proj.bias if proj.bias is None or exact else proj.bias.index_select(0, cand.ids)
        self.shift = None if exact else cand.shift

    def forward(self, h: Tensor) -> Tensor:
        z = F.linear(self.head.features(h), self.weight, self.bias)
        return z if self.shift is None else z + self.shift.to(z.dtype)

    def features(self, h: Tensor) -> Tensor:
        return self.head.features(h)

    def logit_map(self) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(weight, bias, shift) of the linear map after `features` (the chunked loss's fused path)."""
        return self.weight, self.bias, self.shift

    def extra_params(self) -> list[Tensor]:
        """The tensors a chunked loss differentiates: the features' parameters and the gathered rows."""
        own = [p for n, p in self.head.named_parameters() if not n.startswith("proj.") and p.requires_grad]
        rows = [t for t in (self.weight, self.bias) if t is not None and t.requires_grad]
        return own + rows


def remap(y: Tensor, ids: Tensor) -> Tensor:
    """Targets as positions in the candidate list (`IGNORE_INDEX` stays); a mask, not an index, so the
    device never waits for the host."""
    return torch.where(y != IGNORE_INDEX, torch.searchsorted(ids, y.clamp_min(0)), y)


@torch.no_grad()
def final_top(head: nn.Module, state: Tensor, k: int, chunk_rows: int) -> Tensor:
    """(positions x k,) the final depth's top ``k`` ids at every position, read chunk by chunk (with
    repeats: the caller makes them distinct on the host, where it reads them anyway)."""
    rows = state.flatten(0, -2)
    found = [head(rows[s : s + chunk_rows]).topk(k, dim=-1).indices.flatten() for s in range(0, len(rows), chunk_rows)]
    return found[0] if len(found) == 1 else torch.cat(found)


def candidate_batch(batch: Batch, cand: Candidates) -> Batch:
    return Batch(batch.x, remap(batch.y, cand.ids), batch.mask)
