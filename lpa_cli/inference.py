"""Using the cheaper prefixes for real: early-exit prediction and early-exit or self-speculative
decoding, written once against the `ResidualModel` protocol and measured, not simulated.

- `predict`: classifiers and regressors, batch by batch; after each block the shared head reads the
  rows still running, and rows whose exit rule fires leave the batch (so later blocks run on fewer
  rows). Rules: ``confidence:P`` (largest probability >= P), ``entropy:H`` (entropy <= H nats),
  ``patience:K`` (the same class K depths in a row), ``depth:k`` (a fixed prefix; regression too).
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
from typing import Any
from dataclasses import dataclass, field

import torch
from torch import Tensor

from analyzers.compare import TradeOff
from analyzers.errors import UsageError
from lpa_cli.models.attention import LayerCache
from lpa_cli.models.protocol import ResidualModel

STRATEGIES = ("full", "exit", "self-speculative")
RULES = ("confidence", "entropy", "patience", "depth")


# --- early-exit prediction -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExitRule:
    kind: str  # confidence | entropy | patience | depth
    value: float

    @classmethod
    def parse(cls, text: str, num_blocks: int, task_kind: str) -> ExitRule:
        kind, sep, raw = text.partition(":")
        if kind not in RULES or not sep:
            raise UsageError(f"--exit {text!r}: expected confidence:P, entropy:H, patience:K or depth:k")
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"--exit {text!r}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"--exit {text!r}: the threshold must be finite")
        if kind == "confidence" and not 0 < value <= 1:
            raise UsageError(f"--exit {text!r}: a confidence threshold is in (0, 1]")
        if kind == "entropy" and value < 0:
            raise UsageError(f"--exit {text!r}: an entropy threshold is >= 0")
        if kind in ("patience", "depth") and (value != int(value) or not (1 <= value <= num_blocks if kind == "patience" else 0 <= value <= num_blocks)):
            raise UsageError(f"--exit {text!r}: {kind} is a whole number of depths between {1 if kind == 'patience' else 0} and {num_blocks}")
        if task_kind == "regression" and kind != "depth":
            raise UsageError(f"--exit {kind}: regression has no confidence; use depth:k")
        if task_kind == "lm":
            raise UsageError("lpa predict is for classifiers and regressors; language models: lpa generate --strategy exit")
        return cls(kind, value)


@dataclass
class Prediction:
    """Per row: the prediction, the depth it left at; and how long the whole run took."""

    outputs: Tensor  # (n,) classes or (n, out) values
    exit_depth: Tensor  # (n,)
    seconds: float
    confidence: Tensor | None = None  # (n,) largest probability at exit (classification)


@torch.no_grad()
def predict(model: ResidualModel, split, rule: ExitRule, kind: str, batch_size: int = 256, limit: int = 0) -> Prediction:
    """Run ``split`` (its first ``limit`` rows) through ``model`` with real early exit."""
    model.eval()
    device = next(model.parameters()).device
    outputs, depths, confidences = [], [], []
    N = model.num_blocks
    began = time.perf_counter()
    for _, batch in split.iter_batches(batch_size, limit):
        batch = batch.to(device)
        out, depth, conf = _exit_batch(model, batch.x, batch.mask, rule, kind, N)
        outputs.append(out.cpu())
        depths.append(depth.cpu())
        if conf is not None:
            confidences.append(conf.cpu())
    seconds = time.perf_counter() - began
    return Prediction(torch.cat(outputs), torch.cat(depths), seconds, torch.cat(confidences) if confidences else None)


def _exit_batch(model: ResidualModel, x: Tensor, mask: Tensor | None, rule: ExitRule, kind: str, N: int):
    """One batch with real early exit: rows whose rule fires leave, later blocks run on the rest."""
    B = x.shape[0]
    rows = torch.arange(B, device=x.device)  # the rows still running
    h = model.embed(x)
    out: Tensor | None = None
    depth = torch.full((B,), N, dtype=torch.long, device=x.device)
    conf = torch.zeros(B, device=x.device) if kind == "classification" else None
    same = torch.zeros(B, dtype=torch.long, device=x.device)  # patience: depths in a row with an unchanged class
    last: Tensor | None = None
    for k in range(N + 1):
        if k > 0:
            h = model.blocks[k - 1](h) if mask is None else model.blocks[k - 1](h, attention_mask=mask)
        if rule.kind == "depth" and k < rule.value:
            continue
        pred = model.read(h, mask)
        if out is None:
            out = torch.empty((B, *pred.shape[1:]), dtype=pred.dtype, device=x.device)
        prob = pred.float().softmax(-1) if kind == "classification" else None
        if k == N or rule.kind == "depth":
            fire = torch.ones(len(rows), dtype=torch.bool, device=x.device)
        elif rule.kind == "confidence":
            fire = prob.max(-1).values >= rule.value
        elif rule.kind == "entropy":
            fire = -(prob * prob.clamp_min(1e-30).log()).sum(-1) <= rule.value
        else:
            labels = prob.argmax(-1)
            same = torch.where(labels == last, same + 1, torch.zeros_like(same)) if last is not None else same
            last = labels
            fire = same >= rule.value
        if fire.any():
            leaving = rows[fire]
            out[leaving] = pred[fire]
            depth[leaving] = k
            if conf is not None:
                conf[leaving] = prob[fire].max(-1).values
            keep = ~fire
            rows, h, same = rows[keep], h[keep], same[keep]
            mask = None if mask is None else mask[keep]
            last = None if last is None else last[keep]
            if not len(rows):
                break
    if kind == "classification":
        return out.argmax(-1), depth, conf
    return out, depth, None


# --- decoding ---------------------------------------------------------------------------------------------


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


def _pick(logits: Tensor, temperature: float, top_k: int, gen: torch.Generator) -> int:
    if temperature <= 0:
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
        if temperature > 0:
            q.append(_probs(logits, temperature, top_k))
        cur = _pick(logits, temperature, top_k, gen)
        drafts.append(cur)
    full = dec.run(torch.cat(states, dim=1), k, N)  # the remaining blocks on every drafted position at once
    logits = model.read(full)[0]  # (n, vocab): the full model's next token after each position
    if temperature <= 0:
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


# --- the commands' library calls ---------------------------------------------------------------------------


def generate_checkpoint(checkpoint, prompt: str, *, verify: bool = True, device: str = "cpu", factory: str = "",
                        trust_factory: bool = False, repeats: int = 1, **kwargs) -> Generation:
    """`generate` on an lpa checkpoint of a language model, with the tokenizer stored in it
    (``factory``/``trust_factory``: as `load_checkpoint`)."""
    from lpa_cli.checkpoint import load_checkpoint
    from lpa_cli.runtime import resolve_device
    from lpa_cli.tokenizer import BYTES, read_tokenizer

    ckpt = load_checkpoint(checkpoint, verify=verify, device=resolve_device(device), factory=factory, trust_factory=trust_factory)
    if ckpt.kind != "lm":
        raise UsageError(f"{checkpoint}: a {ckpt.kind} model is not a language model; lpa predict runs classifiers and regressors")
    tokenizer = read_tokenizer(ckpt.info) or BYTES  # byte models written before tokenizers were stored
    return measure(ckpt.model, tokenizer, prompt, repeats=repeats, warmup=1 if repeats > 1 else 0, **kwargs)


@dataclass
class PredictReport:
    """`predict` on a checkpoint: the exit run's answers and measured speed, and the full model's."""

    rule: str
    n: int
    accuracy: float | None  # classification
    mse: float | None  # regression
    mean_exit_depth: float
    exit_histogram: list[int]  # rows that left at each depth 0..N
    samples_per_s: float
    ms_per_sample: float
    full_accuracy: float | None = None
    full_mse: float | None = None
    full_samples_per_s: float | None = None
    speedup: float | None = None
    output: str | None = None


def predict_checkpoint(checkpoint, rule: str, *, data: str | None = None, split: str = "test", output=None, baseline: bool = True,
                       batch_size: int = 256, limit: int = 0, verify: bool = True, force: bool = False, device: str = "cpu",
                       repeats: int = 3, factory: str = "", trust_factory: bool = False) -> PredictReport:
    """Run a checkpoint's classifier or regressor with real early exit on its test split (or ``data``),
    write one CSV row per sample to ``output``, and measure the speed against all depths
    (``baseline``; the faster of ``repeats`` runs each). ``factory``/``trust_factory``: as `load_checkpoint`."""
    from analyzers.atomic import check_writable, write_text
    from lpa_cli.checkpoint import load_checkpoint
    from lpa_cli.runtime import resolve_device
    from lpa_cli.tasks import data_spec, load_task
    from lpa_cli.trace import data_task_config

    if batch_size < 1 or limit < 0:
        raise UsageError(f"--batch-size must be >= 1 (got {batch_size})" if batch_size < 1 else f"--limit must be >= 0 (0: all), got {limit}")
    if output is not None:
        check_writable(output, force)
    ckpt = load_checkpoint(checkpoint, verify=verify, device=resolve_device(device), factory=factory, trust_factory=trust_factory)
    kind = ckpt.kind
    exit_rule = ExitRule.parse(rule, ckpt.model.num_blocks, kind)
    task = load_task(data_task_config(ckpt, data_spec(data)) if data else ckpt.task_config())
    task.check_token_ids(ckpt.model.input_vocab, str(checkpoint))
    rows = task.split(split)
    runs = [predict(ckpt.model, rows, exit_rule, kind, batch_size, limit) for _ in range(repeats)]
    best = min(runs, key=lambda r: r.seconds)
    n = len(best.outputs)
    targets = torch.cat([b.y for _, b in rows.iter_batches(batch_size, limit)])
    full = min((predict(ckpt.model, rows, ExitRule("depth", ckpt.model.num_blocks), kind, batch_size, limit) for _ in range(repeats)),
               key=lambda r: r.seconds) if baseline else None

    def quality(p: Prediction) -> tuple[float | None, float | None]:
        if kind == "classification":
            return float((p.outputs == targets).float().mean()), None
        return None, float((p.outputs.float() - targets.float()).pow(2).mean())

    acc, mse = quality(best)
    hist = torch.bincount(best.exit_depth, minlength=ckpt.model.num_depths).tolist()
    report = PredictReport(rule, n, acc, mse, float(best.exit_depth.float().mean()), hist, n / best.seconds, 1000 * best.seconds / n)
    if full is not None:
        report.full_accuracy, report.full_mse = quality(full)
        report.full_samples_per_s = n / full.seconds
        report.speedup = full.seconds / best.seconds
    if output is not None:
        write_text(output, _csv(best, targets, kind, task.meta.get("classes")), force=force)
        report.output = str(output)
    return report


def _csv(p: Prediction, targets: Tensor, kind: str, classes: list | None) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    if kind == "classification":
        w.writerow(["row", "prediction", "label", "exit_depth", "confidence", "target", "correct"])
        for i, (c, d, conf, t) in enumerate(zip(p.outputs.tolist(), p.exit_depth.tolist(), p.confidence.tolist(), targets.tolist())):
            w.writerow([i, c, classes[c] if classes and c < len(classes) else c, d, f"{conf:.6g}", t, int(c == t)])
    else:
        out, tgt = p.outputs.reshape(len(p.outputs), -1), targets.reshape(len(targets), -1)
        w.writerow(["row", *[f"prediction_{j}" for j in range(out.shape[1])], "exit_depth", *[f"target_{j}" for j in range(tgt.shape[1])], "se"])
        for i in range(len(out)):
            se = float((out[i] - tgt[i]).pow(2).mean())
            w.writerow([i, *[f"{v:.8g}" for v in out[i].tolist()], int(p.exit_depth[i]), *[f"{v:.8g}" for v in tgt[i].tolist()], f"{se:.8g}"])
    return buf.getvalue()


# --- measured trade-offs, for lpa compare and bench/inference.py ------------------------------------------


def _flops_speedup(flops: list[float] | None, depths: Tensor) -> float | None:
    if not flops:
        return None
    f = torch.tensor(flops)
    return float(f[-1] / f[depths.long()].mean())


def classifier_tradeoffs(ckpt, thresholds=(0.5, 0.7, 0.8, 0.9, 0.95, 0.99), flops: list[float] | None = None, repeats: int = 3,
                         limit: int = 0) -> list[TradeOff]:
    """Confidence-exit sweeps of a classifier checkpoint on its own test split, timed for real."""
    from lpa_cli.tasks import load_task

    test = load_task(ckpt.task_config()).test
    targets = torch.cat([b.y for _, b in test.iter_batches(256, limit)])
    N = ckpt.model.num_blocks
    full = min((predict(ckpt.model, test, ExitRule("depth", N), "classification", limit=limit) for _ in range(repeats)), key=lambda p: p.seconds)
    full_acc = float((full.outputs == targets).float().mean())
    out = []
    for t in thresholds:
        p = min((predict(ckpt.model, test, ExitRule("confidence", t), "classification", limit=limit) for _ in range(repeats)), key=lambda p: p.seconds)
        out.append(TradeOff("confidence", f"{t:g}", float((p.outputs == targets).float().mean()), full_acc, float(p.exit_depth.float().mean()),
                            full.seconds / p.seconds, _flops_speedup(flops, p.exit_depth)))
    return out


def lm_tradeoffs(ckpt, prompts: list[str], max_new_tokens: int = 48, thresholds=(0.5, 0.8), drafts: tuple[int, ...] | None = None,
                 speculate: int = 4, flops: list[float] | None = None) -> list[TradeOff]:
    """Exit and self-speculative decoding of a language model, timed for real against full decoding;
    quality is the share of tokens equal to full greedy decoding's."""
    from lpa_cli.tokenizer import BYTES, read_tokenizer

    tok = read_tokenizer(ckpt.info) or BYTES
    N = ckpt.model.num_blocks

    def run(**kw) -> tuple[list[list[int]], float, list[int]]:
        gens = [measure(ckpt.model, tok, p, max_new_tokens=max_new_tokens, **kw) for p in prompts]
        return [g.tokens for g in gens], sum(g.seconds for g in gens), [d for g in gens for d in g.depths]

    full_tokens, full_s, _ = run()

    def agreement(tokens: list[list[int]]) -> float:
        same = sum(a == b for x, y in zip(tokens, full_tokens) for a, b in zip(x, y))
        return same / sum(len(x) for x in full_tokens)

    out = []
    for t in thresholds:
        tokens, s, depths = run(strategy="exit", threshold=t)
        d = torch.tensor(depths or [N])
        out.append(TradeOff("exit", f"{t:g}", agreement(tokens), 1.0, float(d.float().mean()), full_s / s, _flops_speedup(flops, d)))
    for k in drafts or sorted({1, max(1, N // 2)}):
        tokens, s, _ = run(strategy="self-speculative", draft_depth=k, speculate=speculate)
        out.append(TradeOff("self-speculative", f"draft {k}, speculate {speculate}", agreement(tokens), 1.0, None, full_s / s, None))
    return out


def lm_prompts(ckpt, count: int = 2, tokens: int = 16) -> list[str]:
    """Prompts from the start of a language model's first test windows (decoded with its tokenizer)."""
    from lpa_cli.tasks import load_task
    from lpa_cli.tokenizer import BYTES, read_tokenizer

    tok = read_tokenizer(ckpt.info) or BYTES
    test = load_task(ckpt.task_config()).test
    return [p for p in (tok.decode(test.rows(i, i + 1).x[0, :tokens].tolist()) for i in range(min(count, len(test)))) if p]


def recommend_early_exit(ckpt, prompts: list[str], max_new_tokens: int = 32, speculate: int = 4) -> dict[str, Any]:
    """The draft depth for LayerSkip-style self-speculative decoding (transformers'
    ``generate(assistant_early_exit=k)``, lpa's ``--draft-depth``), from acceptance rates measured
    with lpa's own greedy self-speculation at every depth 1..N-1: the depth whose expected speed-up
    (Leviathan et al.: accepted tokens per round, ``(1 - a^(g+1)) / (1 - a)``, over the round's cost,
    ``g k/N + 1`` full passes) is largest; None when no depth is expected to beat plain decoding (an
    E2E model's shallow depths rarely agree with its last)."""
    from lpa_cli.tokenizer import BYTES, read_tokenizer

    check_decodable(ckpt.model)
    tok = read_tokenizer(ckpt.info) or BYTES
    N = ckpt.model.num_blocks
    rates, speedups = {}, {}
    for k in range(1, N):
        gens = [generate(ckpt.model, tok, p, max_new_tokens=max_new_tokens, strategy="self-speculative", draft_depth=k, speculate=speculate)
                for p in prompts]
        drafted = sum(g.drafted for g in gens)
        a = sum(g.accepted for g in gens) / drafted if drafted else 0.0
        tokens = speculate + 1 if a >= 1 else (1 - a ** (speculate + 1)) / (1 - a)
        rates[k], speedups[k] = a, tokens / (speculate * k / N + 1)
    best = max(speedups, key=speedups.get)
    return {"assistant_early_exit": best if speedups[best] > 1.0 else None, "acceptance_rate": rates, "expected_speedup": speedups, "speculate": speculate}
