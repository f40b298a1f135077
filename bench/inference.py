"""Train once, use N models, for real: measured speed-ups of early exit and self-speculative decoding.

1. A byte-level GPT of 8 blocks (the `reproduce lm` settings: width 64, context 64, 300 steps of
   batch 32 on the built-in corpus), trained with LPA and with E2E. Greedy decoding of 48 tokens after
   prompts from the test text: `full` against `self-speculative` for every draft depth 1..7 and
   speculation length 2..6 (tokens/s, the median of three runs; every output checked token for token
   against full decoding), and against `exit` at several thresholds. Target: >= 1.5x tokens/s at
   identical output, LPA; the sweep's best setting and its acceptance rate are printed. Then the same
   sweep on the shipped samples (`sample_checkpoints/gpt-text-*`: 8 blocks, width 96, context 128,
   4,000 steps), which write the corpus's words rather than one word on a loop, so their drafts are
   accepted at the rate real text earns; the README's generate example runs on them (not with --quick).
2. The same decoding through transformers: a Llama-layout `decoder` of 8 blocks (width 64, 300 steps on
   the built-in corpus, bytes), trained with LPA and with E2E, exported at full depth with
   `lpa export --format hf` (which measures and writes the recommended `assistant_early_exit`);
   `model.generate(..., assistant_early_exit=k)` (transformers' LayerSkip-style self-speculation)
   against plain `generate`, greedy, median of three timed runs after a warm-up, output checked
   identical; beside it lpa's own self-speculative decoding of the same checkpoint at the same depth.
3. `predict --exit` on the digits ResNets of `sample_checkpoints/` (6 blocks, LPA and E2E): confidence
   thresholds, measured samples/s against all depths. Target: >= 1.5x at <= 0.5 points below
   full-depth accuracy (LPA). The FLOPs-based simulated speed-up is printed beside each measured one.

    python bench/inference.py [--quick]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from common import quick_args, setup, summary

ROOT = Path(__file__).resolve().parents[1]


def train_lm(objective: str, folder: Path, steps: int) -> Path:
    from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
    from lpa_cli.training.trainer import train

    out = folder / f"gpt8-{objective}.safetensors"
    cfg = RunConfig(ModelConfig(arch="gpt", depth=8, width=64), TaskConfig(name="text"), ObjectiveConfig(name=objective),
                    TrainConfig(steps=steps, batch_size=32, lr=2e-3, seed=0, threads=1))
    train(cfg, out, force=True)
    return out


def decoding(path: Path, quick: bool, label: str) -> None:
    from lpa_cli.models.open import load_checkpoint
    from lpa_cli.serving.generate import generate
    from lpa_cli.data.tasks import load_task
    from lpa_cli.formats.tokenizer import BYTES

    ckpt = load_checkpoint(path)
    test = load_task(ckpt.task_config()).test
    prompts = [BYTES.decode(test.rows(i, i + 1).x[0, :12].tolist()) for i in range(0, 8 if not quick else 2)]
    n_new = 48

    def timed(model=ckpt.model, **kw) -> tuple[float, list[list[int]], float | None]:
        generate(model, BYTES, prompts[0], max_new_tokens=8, **kw)  # warm-up
        times, outs, rates = [], None, []
        for _ in range(3):
            gens = [generate(model, BYTES, p, max_new_tokens=n_new, **kw) for p in prompts]
            times.append(sum(g.seconds for g in gens))
            outs = [g.tokens for g in gens]
            rates = [g.acceptance_rate for g in gens if g.acceptance_rate is not None]
        tokens = sum(len(o) - 1 for o in outs)
        return tokens / statistics.median(times), outs, (sum(rates) / len(rates)) if rates else None

    full_rate, full_out, _ = timed()
    print(f"{path.stem}: full decoding {full_rate:,.0f} tokens/s")
    best = (0.0, None, None)
    for k in range(1, 8):
        for n in ((3,) if quick else (2, 3, 4, 6)):
            rate, out, acc = timed(strategy="self-speculative", draft_depth=k, speculate=n)
            same = out == full_out
            print(f"  self-speculative draft {k} speculate {n}: {rate:,.0f} tokens/s ({rate / full_rate:.2f}x), acceptance {acc:.1%}, "
                  f"{'identical' if same else 'DIFFERENT'} output")
            if same and rate > best[0]:
                best = (rate, (k, n), acc)
    best_rate, (k, n), accepted = best
    prefix_rate = timed(ckpt.model.truncated(k))[0]
    cost = full_rate / prefix_rate  # one draft token's time, in full tokens' time
    implied = (1 + sum(accepted ** i for i in range(1, n + 1))) / (n * cost + 1)  # a round: n drafts and one verify pass
    print(f"  ceiling: the {k}-block prefix alone decodes {prefix_rate:,.0f} tokens/s (a draft token costs {cost:.2f} of a full one), so "
          f"draft {k} speculate {n} could reach at most {(n + 1) / (n * cost + 1):.2f}x if every draft were accepted, and "
          f"{implied:.2f}x at {accepted:.1%} accepted (each draft token independently; the verify pass at one full token's cost)")
    summary(f"inference.{label}.self_speculative", best_rate / full_rate,
            f"tokens/s over full decoding at identical output, target >= 1.5 (LPA); best draft depth {k}, speculate {n}, "
            f"acceptance {accepted:.1%}", (best_rate / full_rate >= 1.5) if path.stem.endswith("lpa") else None)
    for t in (0.5, 0.8, 0.95):
        rate, out, _ = timed(strategy="exit", threshold=t)
        agree = sum(a == b for x, y in zip(out, full_out) for a, b in zip(x, y)) / sum(len(x) for x in full_out)
        print(f"  exit threshold {t}: {rate / full_rate:.2f}x tokens/s, {agree:.1%} of tokens as full decoding")


def hf_assistant(objective: str, folder: Path, steps: int, quick: bool) -> None:
    import time

    import torch
    import transformers

    from lpa_cli.models.open import load_checkpoint
    from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
    from lpa_cli.serving.export import export_prefix
    from lpa_cli.serving.exits import lm_prompts
    from lpa_cli.serving.generate import measure
    from lpa_cli.formats.tokenizer import BYTES
    from lpa_cli.training.trainer import train

    ckpt = folder / f"decoder8-{objective}.safetensors"
    cfg = RunConfig(ModelConfig(arch="decoder", depth=8, width=64), TaskConfig(name="text", options={"context": 64}),
                    ObjectiveConfig(name=objective), TrainConfig(steps=steps, batch_size=32, lr=2e-3, seed=0, threads=1))
    train(cfg, ckpt, force=True)
    out = folder / f"decoder8-{objective}-hf"
    rec = export_prefix(ckpt, 8, out, force=True, format="hf")["assistant_early_exit"]
    k = rec["assistant_early_exit"] or max(rec["expected_speedup"], key=rec["expected_speedup"].get)  # E2E: timed anyway, not written
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    model.generation_config.assistant_early_exit = None
    c = load_checkpoint(ckpt)
    prompts = lm_prompts(c, count=2 if quick else 6, tokens=12)
    n_new = 48

    def hf(exit_depth):
        def run():
            with torch.no_grad():
                return [model.generate(torch.tensor([BYTES.encode(p)]), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                       assistant_early_exit=exit_depth)[0].tolist() for p in prompts]
        run()  # warm-up
        times, outs = [], None
        for _ in range(3):
            t = time.perf_counter()
            outs = run()
            times.append(time.perf_counter() - t)
        return statistics.median(times), outs

    plain_s, plain_out = hf(None)
    fast_s, fast_out = hf(k)
    full = sum(measure(c.model, BYTES, p, max_new_tokens=n_new).seconds for p in prompts)
    spec = sum(measure(c.model, BYTES, p, max_new_tokens=n_new, strategy="self-speculative", draft_depth=k).seconds for p in prompts)
    said = "recommended" if rec["assistant_early_exit"] else "none recommended; timed anyway at the best"
    print(f"decoder8-{objective}: {said} assistant_early_exit {k} (acceptance {rec['acceptance_rate'][k]:.1%}, expected "
          f"{rec['expected_speedup'][k]:.2f}x); transformers {plain_s / fast_s:.2f}x tokens/s "
          f"({'identical' if fast_out == plain_out else 'DIFFERENT'} output); lpa self-speculative at the same depth {full / spec:.2f}x")
    summary(f"inference.{objective}.hf_assistant_early_exit", plain_s / fast_s,
            f"transformers generate(assistant_early_exit={k}) over plain generate, greedy; lpa's own {full / spec:.2f}x", None)


def prediction(name: str) -> None:
    from lpa_cli.models.open import load_checkpoint
    from lpa_cli.workflows.compare import _costs
    from lpa_cli.serving.exits import classifier_tradeoffs

    path = ROOT / "sample_checkpoints" / f"{name}.safetensors"
    flops = _costs(path, {}, {})["flops"]
    points = classifier_tradeoffs(load_checkpoint(path), thresholds=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95), flops=flops, repeats=5)
    for p in points:
        print(f"  {name} confidence {p.setting}: accuracy {p.quality:.4f} (all depths {p.full_quality:.4f}), mean depth {p.mean_depth:.2f}, "
              f"measured {p.measured_speedup:.2f}x, simulated {p.simulated_speedup:.2f}x")
    ok = [p for p in points if p.quality >= p.full_quality - 0.005]
    best = max(ok, key=lambda p: p.measured_speedup)
    summary(f"inference.{name}.predict_exit", best.measured_speedup,
            f"measured samples/s over all depths at <= 0.5 points below full accuracy (threshold {best.setting}, simulated "
            f"{best.simulated_speedup:.2f}x), target >= 1.5", (best.measured_speedup >= 1.5) if "lpa" in name else None)


def main() -> None:
    quick = quick_args(__doc__)
    setup(threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        for objective in ("lpa", "e2e"):
            decoding(train_lm(objective, Path(tmp), 40 if quick else 300), quick, objective)
        for objective in () if quick else ("lpa", "e2e"):  # the shipped samples, which write the corpus's words (README's generate example)
            decoding(ROOT / "sample_checkpoints" / f"gpt-text-{objective}.safetensors", quick, f"sample_{objective}")
        for objective in ("lpa", "e2e"):
            hf_assistant(objective, Path(tmp), 40 if quick else 300, quick)
    for name in ("resnet-digits-lpa", "resnet-digits-e2e"):
        prediction(name)


if __name__ == "__main__":
    sys.exit(main())
