"""Measured early-exit trade-offs: wall-clock speed-up against quality for each exit rule or draft depth,
timed side by side (never simulated), and the recommendation `lpa export` writes for transformers."""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import Tensor

from analyzers.compare_types import TradeOff
from lpa_cli.serving.generate import check_decodable, generate, measure
from lpa_cli.serving.predict import ExitRule, predict
from lpa_cli.data.tasks import data_spec, load_task
from lpa_cli.serving.trace import data_task_config
from lpa_cli.formats.tokenizer import BYTES, read_tokenizer


def _flops_speedup(flops: list[float] | None, depths: Tensor) -> float | None:
    if not flops:
        return None
    f = torch.tensor(flops)
    return float(f[-1] / f[depths.long()].mean())


def _rounds(settings: dict, repeats: int) -> tuple[dict, dict[str, list[float]]]:
    """Run every setting ``repeats`` times round-robin (the full model first in each round), so machine
    noise hits all of them alike: (each setting's first result, each setting's times)."""
    first, times = {}, {name: [] for name in settings}
    _run(settings)  # warm-up: the first call of each pays for allocations and caches
    for _ in range(repeats):
        for name, (result, seconds) in _run(settings).items():
            first.setdefault(name, result)
            times[name].append(seconds)
    return first, times


def _run(settings: dict) -> dict:
    return {name: fn() for name, fn in settings.items()}


def _speedups(full: list[float], mine: list[float]) -> tuple[float, float, float]:
    """(median, lowest, highest) of the rounds' speed-ups (each round's full time over its own time)."""
    ratios = sorted(f / m for f, m in zip(full, mine))
    return statistics.median(ratios), ratios[0], ratios[-1]


def classifier_tradeoffs(ckpt, thresholds=(0.5, 0.7, 0.8, 0.9, 0.95, 0.99), flops: list[float] | None = None, repeats: int = 3,
                         limit: int = 0) -> list[TradeOff]:
    """Confidence-exit sweeps of a classifier checkpoint on its own test split, timed for real: ``repeats``
    rounds, the median speed-up and its range."""
    test = load_task(ckpt.task_config()).test
    targets = torch.cat([b.y for _, b in test.iter_batches(256, limit)])
    N = ckpt.model.num_blocks

    def timed(rule):
        def go():
            p = predict(ckpt.model, test, rule, "classification", limit=limit)
            return p, p.seconds
        return go
    settings = {"full": timed(ExitRule("depth", N))} | {t: timed(ExitRule("confidence", t)) for t in thresholds}
    first, times = _rounds(settings, repeats)
    full_acc = float((first["full"].outputs == targets).float().mean())
    out = []
    for t in thresholds:
        p = first[t]
        mid, low, high = _speedups(times["full"], times[t])
        out.append(TradeOff("confidence", f"{t:g}", float((p.outputs == targets).float().mean()), full_acc, float(p.exit_depth.float().mean()),
                            mid, _flops_speedup(flops, p.exit_depth), low, high, repeats))
    return out


def lm_tradeoffs(ckpt, prompts: list[str], max_new_tokens: int = 48, thresholds=(0.5, 0.8), drafts: tuple[int, ...] | None = None,
                 speculate: int = 4, flops: list[float] | None = None, repeats: int = 3) -> list[TradeOff]:
    """Exit and self-speculative decoding of a language model, timed for real against full decoding in
    ``repeats`` rounds (median speed-up and its range); quality is the share of tokens equal to full
    greedy decoding's."""
    tok = read_tokenizer(ckpt.info) or BYTES
    N = ckpt.model.num_blocks

    def decode(**kw):
        def go():
            gens = [measure(ckpt.model, tok, p, max_new_tokens=max_new_tokens, **kw) for p in prompts]
            return ([g.tokens for g in gens], [d for g in gens for d in g.depths]), sum(g.seconds for g in gens)
        return go
    drafts = drafts or sorted({1, max(1, N // 2)})
    settings = {"full": decode()} | {("exit", t): decode(strategy="exit", threshold=t) for t in thresholds}
    settings |= {("draft", k): decode(strategy="self-speculative", draft_depth=k, speculate=speculate) for k in drafts}
    first, times = _rounds(settings, repeats)
    full_tokens = first["full"][0]

    def agreement(tokens: list[list[int]]) -> float:
        same = sum(a == b for x, y in zip(tokens, full_tokens) for a, b in zip(x, y))
        return same / sum(len(x) for x in full_tokens)

    out = []
    for t in thresholds:
        tokens, depths = first[("exit", t)]
        d = torch.tensor(depths or [N])
        mid, low, high = _speedups(times["full"], times[("exit", t)])
        out.append(TradeOff("exit", f"{t:g}", agreement(tokens), 1.0, float(d.float().mean()), mid, _flops_speedup(flops, d), low, high, repeats))
    for k in drafts:
        mid, low, high = _speedups(times["full"], times[("draft", k)])
        out.append(TradeOff("self-speculative", f"draft {k}, speculate {speculate}", agreement(first[("draft", k)][0]), 1.0, None, mid, None,
                            low, high, repeats))
    return out


def lm_prompts(ckpt, count: int = 2, tokens: int = 16, data: str | None = None) -> list[str]:
    """Prompts from the start of a language model's first test windows (of ``data`` when given),
    decoded with its tokenizer."""
    tok = read_tokenizer(ckpt.info) or BYTES
    test = load_task(data_task_config(ckpt, data_spec(data)) if data else ckpt.task_config()).test
    return [p for p in (tok.decode(test.rows(i, i + 1).x[0, :tokens].tolist()) for i in range(min(count, len(test)))) if p]


def recommend_early_exit(ckpt, prompts: list[str], max_new_tokens: int = 32, speculate: int = 4) -> dict[str, Any]:
    """The draft depth for LayerSkip-style self-speculative decoding (transformers'
    ``generate(assistant_early_exit=k)``, lpa's ``--draft-depth``), from acceptance rates measured
    with lpa's own greedy self-speculation at every depth 1..N-1: the depth whose expected speed-up
    (Leviathan et al.: accepted tokens per round, ``(1 - a^(g+1)) / (1 - a)``, over the round's cost,
    ``g k/N + 1`` full passes) is largest; None when no depth is expected to beat plain decoding (an
    E2E model's shallow depths rarely agree with its last)."""
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
