"""Decoding with the cheaper prefixes, measured, not simulated (early-exit prediction for classifiers is
`lpa_cli.serving.predict`).

- `generate`: language models with a key/value cache. ``full``: ordinary decoding. ``exit``: each
  token leaves at the first depth whose next-token confidence passes ``threshold`` (CALM); the layers
  it skips still need this position's keys and values for later tokens, and get them by *state
  copying*: the exit depth's state is fed to each skipped layer's key/value projections (CALM found
  this as good as recomputing them, at the cost of two projections per skipped layer instead of the
  whole layer). ``self-speculative``: the first ``draft_depth`` blocks and the shared head draft
  ``speculate`` tokens one at a time; the remaining blocks then verify all of them in one pass over
  the drafted states (LayerSkip's shared cache: the draft's computation of the early layers is the
  full model's); the longest agreeing prefix is kept plus the full model's own next token. Under
  greedy decoding the output is the full model's; with sampling, rejection sampling keeps its
  distribution.

Models opt in to decoding: the embedding takes ``start`` (the first token's position) and every
block takes ``cache=`` (a `LayerCache`) and has ``fill_cache`` (for state copying). The byte GPT and
the decoder family (Hugging Face-derived models included) do; any other model is refused.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lpa_core.errors import UsageError
from lpa_cli.models.attention import LayerCache
from lpa_cli.models.protocol import ResidualModel
from lpa_cli.models.open import load_checkpoint
from lpa_cli.runtime import resolve_device
from lpa_cli.formats.tokenizer import BYTES, read_tokenizer

STRATEGIES = ("full", "exit", "self-speculative")


@dataclass
class Generation:
    """What `generate` produced and what it cost."""

    text: str
    tokens: list[int]  # the new tokens
    prompt_tokens: int
    strategy: str
    seconds: float  # decoding time (the prompt's prefill excluded)
    prefill_seconds: float
    tokens_per_s: float
    mean_exit_depth: float | None = None  # exit: average depth tokens left at
    drafted: int = 0  # self-speculative: drafted tokens ...
    accepted: int = 0  # ... and how many the full model kept
    rounds: int = 0
    stopped: str = "max_new_tokens"  # or "context" (the model's positions ran out) or "eos"
    depths: list[int] = field(default_factory=list)
    repeats: int = 1  # timed runs after a warm-up; seconds and tokens_per_s are their median
    tokens_per_s_range: tuple[float, float] | None = None  # the slowest and fastest of them
    full: Generation | None = None  # with a baseline: full decoding of the same prompt, timed the same way

    @property
    def speedup(self) -> float | None:
        """Tokens/s over full decoding's (medians), with a baseline."""
        return self.tokens_per_s / self.full.tokens_per_s if self.full is not None and self.full.tokens_per_s else None

    @property
    def same_as_full(self) -> bool | None:
        """Whether the tokens are full decoding's (always, greedy self-speculation; a measure of exit's cost)."""
        return None if self.full is None else self.tokens == self.full.tokens

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


def decodable(model: ResidualModel) -> bool:
    try:
        check_decodable(model)
    except UsageError:
        return False
    return True


def check_decodable(model: ResidualModel) -> None:
    """Refuse a model whose parts cannot decode incrementally (no cache, no position offset)."""
    if "start" not in inspect.signature(model.embed.forward).parameters:
        raise UsageError(f"this model's embedding ({type(model.embed).__name__}) takes no position offset, so it cannot decode "
                         "token by token; lpa generate works on the gpt and decoder architectures")
    for block in model.blocks:
        if "cache" not in inspect.signature(block.forward).parameters or not hasattr(block, "fill_cache"):
            raise UsageError(f"this model's blocks ({type(block).__name__}) keep no key/value cache; "
                             "lpa generate works on the gpt and decoder architectures")


def max_positions(model: ResidualModel) -> int | None:
    """Positions the model reads: its learned position table's size, or the bound a rotary model
    recorded (an import's max_position_embeddings); None when it names none."""
    pos = getattr(model.embed, "pos", None)
    if isinstance(pos, torch.nn.Embedding):
        return int(pos.num_embeddings)
    limit = getattr(model.embed, "max_positions", None)
    return int(limit) if limit else None


class _Decoder:
    """A model with one key/value cache per block, fed token ids at increasing positions."""

    def __init__(self, model: ResidualModel) -> None:
        self.model = model
        self.caches = [LayerCache() for _ in model.blocks]

    @property
    def position(self) -> int:
        return self.caches[0].length

    def embed(self, ids: Tensor, start: int) -> Tensor:
        return self.model.embed(ids, start=start)

    def run(self, h: Tensor, first: int, last: int) -> Tensor:
        """Blocks first..last-1 (0-based) on states ``h`` at the next positions of their caches."""
        for i in range(first, last):
            h = self.model.blocks[i](h, cache=self.caches[i])
        return h

    def truncate(self, length: int) -> None:
        for c in self.caches:
            c.truncate(length)


GREEDY_BELOW = 1e-6  # temperatures below this are greedy: dividing logits by them overflows to inf


def _pick(logits: Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    if temperature < GREEDY_BELOW:
        return int(logits.argmax())
    return int(torch.multinomial(_probs(logits, temperature, top_k), 1, generator=gen))


def _probs(logits: Tensor, temperature: float, top_k: int) -> Tensor:
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(-1)


@torch.no_grad()
def generate(model: ResidualModel, tokenizer, prompt: str, *, max_new_tokens: int = 64, strategy: str = "full", threshold: float = 0.9,
             min_exit_depth: int = 1, draft_depth: int = 0, speculate: int = 4, temperature: float = 0.0, top_k: int = 0, seed: int = 0,
             stop_at_eos: bool = False, progress: Callable[[int, int], None] | None = None) -> Generation:
    """Decode ``max_new_tokens`` tokens after ``prompt`` with ``strategy`` (see the module's docs).
    ``draft_depth`` 0: half the blocks draft; ``progress(tokens so far, budget)`` follows the decoding."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown --strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    check_decodable(model)
    N = model.num_blocks
    draft_depth = draft_depth or max(1, N // 2)
    vocab = model.input_vocab or tokenizer.vocab_size
    for ok, option, value, allowed in (
        (strategy != "self-speculative" or 1 <= draft_depth <= N - 1, "--draft-depth", draft_depth, f"between 1 and {N - 1} (the model has {N} blocks)"),
        (strategy != "exit" or 1 <= min_exit_depth <= N, "--exit-depth", min_exit_depth, f"between 1 and {N}"),
        (max_new_tokens >= 1, "--max-new-tokens", max_new_tokens, ">= 1"),
        (speculate >= 1, "--speculate", speculate, ">= 1"),
        (math.isfinite(temperature) and temperature >= 0, "--temperature", temperature, "a finite number >= 0 (0: greedy)"),
        (0 <= top_k <= vocab, "--top-k", top_k, f"between 0 and the vocabulary's {vocab}"),
        (0 < threshold <= 1, "--threshold", threshold, "in (0, 1]"),
    ):
        if not ok:
            raise UsageError(f"{option} must be {allowed}, got {value}")
    if not prompt:
        raise UsageError("the prompt is empty")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UsageError("the prompt encodes to no tokens")
    limit = max_positions(model)
    if limit is not None and len(ids) >= limit:
        raise UsageError(f"the prompt has {len(ids)} tokens; the model reads at most {limit} positions")
    budget = max_new_tokens if limit is None else min(max_new_tokens, limit - len(ids))
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    dec = _Decoder(model)
    t0 = time.perf_counter()
    h = dec.run(dec.embed(torch.tensor([ids], device=device), 0), 0, N)  # prefill: every block, the whole prompt
    logits = model.read(h[:, -1:])[0, -1]
    prefill = time.perf_counter() - t0
    eos = getattr(tokenizer, "eos_id", None) if stop_at_eos else None
    out: list[int] = [_pick(logits, temperature, top_k, gen)]
    depths: list[int] = []
    drafted = accepted = rounds = 0
    t1 = time.perf_counter()
    tick = progress or (lambda done, total: None)
    if strategy == "full":
        while len(out) < budget and out[-1] != eos:
            h = dec.run(dec.embed(torch.tensor([[out[-1]]], device=device), dec.position), 0, N)
            out.append(_pick(model.read(h)[0, -1], temperature, top_k, gen))
            tick(len(out), budget)
    elif strategy == "exit":
        while len(out) < budget and out[-1] != eos:
            token, depth = _exit_step(model, dec, out[-1], device, threshold, min_exit_depth, temperature, top_k, gen)
            out.append(token)
            depths.append(depth)
            tick(len(out), budget)
    else:
        while len(out) < budget and out[-1] != eos:
            new, n_draft, n_ok = _speculate(model, dec, out[-1], device, draft_depth, min(speculate, budget - len(out)), temperature, top_k, gen)
            out.extend(new)
            drafted, accepted, rounds = drafted + n_draft, accepted + n_ok, rounds + 1
            tick(len(out), budget)
    seconds = time.perf_counter() - t1
    out = out[:budget]
    if eos is not None and eos in out:
        out = out[: out.index(eos) + 1]
    stopped = "eos" if eos is not None and out and out[-1] == eos else ("context" if len(out) < max_new_tokens else "max_new_tokens")
    return Generation(tokenizer.decode(out), out, len(ids), strategy, seconds, prefill, (len(out) - 1) / max(seconds, 1e-9),
                      sum(depths) / len(depths) if depths else None, drafted, accepted, rounds, stopped, depths)


def _exit_step(model, dec: _Decoder, token: int, device, threshold: float, min_depth: int, temperature: float, top_k: int, gen):
    """One token: blocks one by one until the head is confident; the skipped blocks' cache entries
    for this position come from the exit state (state copying)."""
    N = model.num_blocks
    h = dec.embed(torch.tensor([[token]], device=device), dec.position)
    for k in range(1, N + 1):
        h = model.blocks[k - 1](h, cache=dec.caches[k - 1])
        if k < min_depth:
            continue
        logits = model.read(h)[0, -1]
        if k == N or logits.float().softmax(-1).max() >= threshold:
            for j in range(k, N):
                model.blocks[j].fill_cache(h, dec.caches[j])
            return _pick(logits, temperature, top_k, gen), k
    raise AssertionError("unreachable")


def _speculate(model, dec: _Decoder, token: int, device, k: int, n: int, temperature: float, top_k: int, gen) -> tuple[list[int], int, int]:
    """One round: draft ``n`` tokens with blocks 1..k, verify them with blocks k+1..N in one pass.

    Returns (the tokens to emit, drafted, accepted). The caches end consistent for every block."""
    N = model.num_blocks
    start = dec.position  # `token` sits here; every cache holds [0, start)
    drafts, states, q = [], [], []
    cur = token
    for i in range(n):
        h = dec.run(dec.embed(torch.tensor([[cur]], device=device), start + i), 0, k)
        states.append(h)
        logits = model.read(h)[0, -1]
        if temperature >= GREEDY_BELOW:
            q.append(_probs(logits, temperature, top_k))
        cur = _pick(logits, temperature, top_k, gen)
        drafts.append(cur)
    full = dec.run(torch.cat(states, dim=1), k, N)  # the remaining blocks on every drafted position at once
    logits = model.read(full)[0]  # (n, vocab): the full model's next token after each position
    if temperature < GREEDY_BELOW:
        target = logits.argmax(-1).tolist()
        m = next((i for i in range(n) if drafts[i] != target[i]), n)
        emit = drafts[:m] + ([target[m]] if m < n else [])
    else:  # speculative sampling: keep the full model's distribution
        p = _probs(logits, temperature, top_k)
        emit, m = [], 0
        for i in range(n):
            d = drafts[i]
            if torch.rand(1, generator=gen).item() <= min(1.0, float(p[i, d] / q[i][d].clamp_min(1e-20))):
                emit.append(d)
                m += 1
                continue
            residual = (p[i] - q[i]).clamp_min(0)
            emit.append(int(torch.multinomial(residual / residual.sum() if residual.sum() > 0 else p[i], 1, generator=gen)))
            break
    dec.truncate(start + len(emit))  # keep positions up to the last emitted token's input
    return emit, n, m


def generate_checkpoint(checkpoint, prompt: str, *, verify: bool = True, device: str = "cpu", factory: str = "",
                        trust_factory: bool = False, repeats: int = 1, baseline: bool = False, **kwargs) -> Generation:
    """`generate` on an lpa checkpoint of a language model, with the tokenizer stored in it
    (``factory``/``trust_factory``: as `load_checkpoint`). ``baseline``: also time full decoding of the
    same prompt, the same way (``Generation.full``, ``speedup``, ``same_as_full``)."""
    ckpt = load_checkpoint(checkpoint, verify=verify, device=resolve_device(device), factory=factory, trust_factory=trust_factory)
    if ckpt.kind != "lm":
        raise UsageError(f"{checkpoint}: a {ckpt.kind} model is not a language model; lpa predict runs classifiers and regressors")
    tokenizer = read_tokenizer(ckpt.info) or BYTES  # byte models written before tokenizers were stored
    g = measure(ckpt.model, tokenizer, prompt, repeats=repeats, warmup=1 if repeats > 1 else 0, **kwargs)
    if baseline and g.strategy != "full":
        same = {k: v for k, v in kwargs.items() if k in ("max_new_tokens", "temperature", "top_k", "seed")}
        g.full = measure(ckpt.model, tokenizer, prompt, repeats=repeats, warmup=1 if repeats > 1 else 0, **same)
    return g


def measure(model: ResidualModel, tokenizer, prompt: str, *, repeats: int = 3, warmup: int = 1,
            progress: Callable[[int, int], None] | None = None, **kwargs) -> Generation:
    """`generate` timed the way lpa reports decoding speed everywhere (`lpa generate`, `lpa compare`,
    bench/inference.py): ``warmup`` untimed runs (first-call allocations, caches; ``progress`` follows
    the first), then ``repeats`` runs; the median time, with the range. The output is the same every
    run (greedy, or seeded)."""
    if repeats < 1 or warmup < 0:
        raise UsageError(f"--repeats must be >= 1, got {repeats}")
    for i in range(warmup):
        generate(model, tokenizer, prompt, progress=progress if i == 0 else None, **kwargs)
    runs = sorted((generate(model, tokenizer, prompt, **kwargs) for _ in range(repeats)), key=lambda g: g.seconds)
    g = runs[len(runs) // 2]
    g.repeats = repeats
    g.tokens_per_s_range = (runs[-1].tokens_per_s, runs[0].tokens_per_s)
    return g
