"""What LPA over every depth costs on a real vocabulary, exact and with the sampled head loss.

The model is `finetune.py`'s, Llama-shaped (12 layers, width 512, 8 heads, SwiGLU MLP of 1,376, untied
embeddings), built as lpa's ``decoder`` at vocabularies 32,000 and 151,936, on batches of 4 x 256
tokens. One Adam step of each variant, interleaved round-robin in one process so machine noise hits
them alike:

- ``e2e``: depth N's loss only;
- ``lpa exact``: every depth 0..12 through the exact (chunked) head loss;
- ``lpa sampled:K`` for two K: depths < N read the batch's target rows and K sampled rows
  (`--head-loss sampled:K`), depth N exact;
- ``lpa sampled:K + rotation:4``: the same with LayerSkip's rotation (each shallower depth every 4 steps).

Beside each, its FLOPs (forward and backward: 3 x 2 x tokens x width x rows for every head read, the
blocks' matmuls and attention once), so each time ratio sits beside the ratio of work it must do;
and the floor, E2E + 12 candidate-head matmul triples timed bare at the same candidate count.

Targets (issue 25): all-depth sampled LPA <= 1.5x E2E's step at 32,000 and <= 1.8x at 151,936.

    python bench/lm_cost.py [--quick]        (LM_COST_VOCAB=32000: that vocabulary only)
"""

from __future__ import annotations

import os
import sys

from common import interleaved, quick_args, setup, summary

SHAPE = {"layers": 12, "width": 512, "heads": 8, "hidden": 1376, "batch": 4, "context": 256}
QUICK_SHAPE = {"layers": 4, "width": 128, "heads": 4, "hidden": 344, "batch": 2, "context": 64}


def block_flops(shape: dict) -> float:
    """Forward + backward FLOPs of the blocks for one batch (matmuls and attention scores)."""
    w, h, t, tokens = shape["width"], shape["hidden"], shape["context"], shape["batch"] * shape["context"]
    per_token = 2 * (4 * w * w + 3 * w * h) + 2 * 2 * t * w  # q, k, v, o; gate, up, down; scores and values
    return 3 * shape["layers"] * tokens * per_token


def head_flops(shape: dict, rows: float) -> float:
    return 3 * 2 * shape["batch"] * shape["context"] * shape["width"] * rows


def run(vocab: int, shape: dict, ks: tuple[int, int], repeats: int) -> None:
    import torch

    from lpa_cli.config import ModelConfig, ObjectiveConfig
    from lpa_cli.data.batch import Batch
    from lpa_cli.models import build_model
    from lpa_cli.training.objectives import build_objective

    device = setup()
    torch.manual_seed(0)
    opts = {"heads": shape["heads"], "hidden": shape["hidden"], "vocab": vocab, "tie_embeddings": False}
    model = build_model(ModelConfig(arch="decoder", depth=shape["layers"], width=shape["width"], zero_init=False, options=opts),
                        (shape["context"],), vocab, "tokens", "lm").to(device).train()
    # Zipf-distributed tokens, as text is: the batch's distinct targets (always candidates) are a real count
    ranks = torch.arange(1, vocab + 1, dtype=torch.float64)
    ids = torch.multinomial(1 / ranks, shape["batch"] * (shape["context"] + 1), replacement=True, generator=torch.Generator().manual_seed(0))
    x = ids.view(shape["batch"], -1).to(device)
    data = Batch(x[:, :-1].contiguous(), x[:, 1:].contiguous())
    distinct = int(data.y.unique().numel())
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    variants = {"e2e": {"name": "e2e"}, "lpa exact": {"name": "lpa"}}
    for k in ks:
        variants[f"lpa sampled:{k}"] = {"name": "lpa", "head_loss": f"sampled:{k}"}
    variants[f"lpa sampled:{ks[0]} + rotation:4"] = {"name": "lpa", "head_loss": f"sampled:{ks[0]}", "depth_schedule": "rotation:4"}
    steps = {name: 0 for name in variants}

    def step_of(name: str, settings: dict):
        objective = build_objective(ObjectiveConfig(**settings), shape["layers"], "lm")
        gen = torch.Generator().manual_seed(0)

        def step():
            loss = objective(model, data, steps[name], gen).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps[name] += 1
        return step

    h = torch.randn(shape["batch"] * shape["context"], shape["width"], device=device)
    w = 0.02 * torch.randn(vocab, shape["width"], device=device)

    def bare(rows: int):
        def step():  # the floor of one candidate head: its forward and both gradient matmuls
            z = h @ w[:rows].t()
            _ = z @ w[:rows], z.t() @ h
        return step

    fns = {name: step_of(name, s) for name, s in variants.items()}
    fns |= {f"head {distinct + k} rows": bare(min(vocab, distinct + k)) for k in ks}
    times = interleaved(fns, repeats)
    blocks, e2e = block_flops(shape), times["e2e"]
    flops_e2e = blocks + head_flops(shape, vocab)
    for name in variants:
        k = int(name.split("sampled:")[1].split()[0]) if "sampled" in name else 0
        heads = shape["layers"] * (min(vocab, distinct + k) if k else vocab)
        if "rotation" in name:
            heads /= 4
        flops = (blocks + head_flops(shape, vocab) + head_flops(shape, heads)) if name != "e2e" else flops_e2e
        print(f"vocab {vocab:,} {name}: {times[name] * 1000:.0f} ms/step ({times[name] / e2e:.2f}x E2E), "
              f"{flops / 1e9:,.0f} GFLOP ({flops / flops_e2e:.2f}x E2E's)", flush=True)
    for k in ks:
        floor = (e2e + shape["layers"] * times[f"head {distinct + k} rows"]) / e2e
        ratio = times[f"lpa sampled:{k}"] / e2e
        target = 1.5 if vocab <= 32000 else 1.8
        summary(f"lm_cost.{vocab}.sampled_{k}", ratio, f"all-depth sampled LPA / E2E step, target <= {target}; exact LPA "
                f"{times['lpa exact'] / e2e:.2f}x; floor (E2E + {shape['layers']} bare {distinct + k}-row head triples) {floor:.2f}x; "
                f"{distinct} distinct targets in the batch", ratio <= target)


def main() -> None:
    quick = quick_args(__doc__)
    shape = QUICK_SHAPE if quick else SHAPE
    vocabs = (4096, 16384) if quick else (32000, 151936)
    only = os.environ.get("LM_COST_VOCAB")  # one of the two, e.g. to rerun the faster one alone
    vocabs = tuple(v for v in vocabs if not only or v == int(only))
    ks = (256, 1024) if quick else (2048, 8192)
    for vocab in vocabs:
        run(vocab, shape, ks, repeats=2 if quick else 3)


if __name__ == "__main__":
    sys.exit(main())
