"""Measured early-exit trade-offs: wall-clock speed-up against quality for each exit rule or draft depth,
timed side by side (never simulated), and the recommendation `lpa export` writes for transformers."""

from __future__ import annotations

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


def classifier_tradeoffs(ckpt, thresholds=(0.5, 0.7, 0.8, 0.9, 0.95, 0.99), flops: list[float] | None = None, repeats: int = 3,
                         limit: int = 0) -> list[TradeOff]:
    """Confidence-exit sweeps of a classifier checkpoint on its own test split, timed for real."""
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
