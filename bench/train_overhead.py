"""What LPA costs per optimisation step, compared with E2E on the same model and batch.

Steps of both objectives are interleaved (one e2e step, one lpa step, ...) and the median of many
steps is compared, for three heads: a residual MLP (scalar head), a byte-level LM (vocabulary 256)
and an LM with a 4096-token head, the last with every depth, with depth sampling alone
(`--sample-depths 3`: two random depths plus depth N each step) and with depth sampling plus
`--sample-fraction 0.25` (the two shallower depths' losses on a quarter of the batch).
Targets: <= 1.05x (MLP), <= 1.15x (byte LM, all depths), <= 1.25x (4096 head, sampled). For the MLP
a hand-written LPA step (`handwritten_lpa`) runs in the same rounds, for reference: the floor of
what any LPA objective adds in eager PyTorch. The `--compile` rows (`torch.compile` of model and
loss, as `lpa train --compile` does) aim under that floor: LPA/E2E <= 1.05 on the MLP, compiled,
and the compiled step no slower than the eager one.

    python bench/train_overhead.py [--quick]
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from common import quick_args, setup, summary

from lpa_cli.data.batch import Batch
from lpa_cli.config import ModelConfig, ObjectiveConfig
from lpa_cli.models import build_model
from lpa_cli.training.objectives import build_objective


def case(name: str, quick: bool):
    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        model = build_model(ModelConfig(arch="mlp", depth=8, width=64), (2,), 1)
        x = torch.rand(512, 2, generator=g) * 2 - 1
        return model, x, torch.sin(10 * x[:, :1]), "regression"
    vocab = 256 if name == "lm256" else 4096
    model = build_model(ModelConfig(arch="gpt", depth=4 if quick else 6, width=128, options={"heads": 4}), (64,), vocab, "tokens", "lm")
    x = torch.randint(0, vocab, (16, 64), generator=g)
    return model, x, torch.roll(x, -1, dims=1), "lm"


def step_time(model, loss_fn, opt, x, y) -> float:
    t = time.perf_counter()
    loss = loss_fn(model, x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def handwritten_lpa(model, x, y):
    """The shortest LPA step one could write by hand for a regression model (uniform weights, every
    depth): the floor for what `Objective` adds to an E2E step."""
    h = model.embed(x)
    states = [h]
    for block in model.blocks:
        h = block(h)
        states.append(h)
    preds = model.head(torch.cat(states))
    return (preds.view(len(states), -1) - y.view(1, -1)).pow(2).mean(1).mean()


def measure(name: str, sample_depths: int, steps: int, quick: bool, sample_fraction: float = 1.0, compiled: bool = False) -> dict[str, float]:
    """Median step time of e2e and lpa (and, for the MLP, the hand-written LPA step), interleaved;
    with ``compiled``, eager and compiled e2e and lpa."""
    base, x, y, kind = case(name, quick)
    objectives = {
        "e2e": build_objective(ObjectiveConfig(name="e2e"), base.num_blocks, kind),
        "lpa": build_objective(ObjectiveConfig(name="lpa", sample_depths=sample_depths, sample_fraction=sample_fraction), base.num_blocks, kind),
    }
    loss_fns = {k: (lambda m, x, y, o=o: o(m, Batch(x, y)).loss) for k, o in objectives.items()}
    if kind == "regression" and not compiled:
        loss_fns["hand"] = handwritten_lpa
    if compiled:
        for k, o in objectives.items():
            fn = torch.compile(lambda m, x, y, o=o: o(m, Batch(x, y)).loss)
            loss_fns[f"{k}_compiled"] = fn
    models = {k: copy.deepcopy(base) for k in loss_fns}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    times = {k: [] for k in loss_fns}
    for i in range(steps + 5):
        for k, fn in loss_fns.items():
            t = step_time(models[k], fn, opts[k], x, y)
            if i >= 5:  # warm-up
                times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{name} (sample_depths={sample_depths}, sample_fraction={sample_fraction:g}): "
          + ", ".join(f"{k} {v * 1000:.2f} ms/step" for k, v in med.items()))
    return {k: v / med["e2e"] for k, v in med.items()}


def main() -> None:
    quick = quick_args(__doc__)
    setup()
    steps = 20 if quick else 100
    r = measure("mlp", 0, steps * 3, quick)
    summary("train_overhead.mlp", r["lpa"], "target <= 1.05", r["lpa"] <= 1.05)
    summary("train_overhead.mlp_handwritten", r["hand"], "for reference: the shortest hand-written LPA step vs e2e", None)
    r = measure("mlp", 0, steps * 3, quick, compiled=True)
    ratio = r["lpa_compiled"] / r["e2e_compiled"]
    summary("train_overhead.mlp_compiled", ratio, "compiled LPA / compiled E2E, target <= 1.05", ratio <= 1.05)
    summary("train_overhead.mlp_compiled_vs_eager", r["lpa_compiled"] / r["lpa"], "compiled LPA step / eager LPA step, target <= 1",
            r["lpa_compiled"] <= r["lpa"])
    r = measure("lm256", 0, steps, quick)["lpa"]
    summary("train_overhead.byte_lm", r, "target <= 1.15", r <= 1.15)
    r = measure("lm4096", 0, steps, quick)["lpa"]
    summary("train_overhead.lm4096_all_depths", r, "for reference: every depth through a 4096-way head", None)
    r = measure("lm4096", 3, steps, quick)["lpa"]
    summary("train_overhead.lm4096_sampled_depths", r, "for reference: --sample-depths 3 alone", None)
    r = measure("lm4096", 3, steps, quick, sample_fraction=0.25)["lpa"]
    summary("train_overhead.lm4096_sampled", r, "target <= 1.25 with --sample-depths 3 --sample-fraction 0.25", r <= 1.25)

if __name__ == "__main__":
    main()
