"""Fine-tuning a pretrained Hugging Face decoder with LPA: step time and peak memory against E2E.

The model is Llama-shaped: 12 layers, width 512, 8 heads, SwiGLU MLP of 1,376, vocabulary 32,000,
untied embeddings (about 71M parameters), built with `transformers` from a seeded random init and
saved as a Hugging Face directory, so nothing is downloaded. lpa reads it through its adapter
(`lpa_cli.models.hf.load`, the path `lpa train --init DIR` takes) and takes Adam steps on batches of
4 x 256 tokens, each variant in a fresh process (peak RSS: ``ru_maxrss``; ``max_memory_allocated``
on CUDA):

- ``e2e``: depth N's loss only (the head loss as `--head-loss auto` picks it);
- ``lpa``: every depth 0..12 through the chunked head loss (never holding more than a chunk of logits);
- ``lpa, 3 sampled depths``: `--sample-depths 3`, the cheap setting, for the record;
- ``transformers``: `LlamaForCausalLM`'s own forward, loss and backward, the E2E step any fine-tuning
  script takes, as an independent reference for lpa's E2E step;
- the floor: LPA must run the head (forward, and the two gradient matmuls) at 12 more depths, i.e.
  3 x 2 x tokens x width x vocab FLOPs each; those bare matmuls are timed beside, and
  (E2E + 12 x head) / E2E is what no implementation of every-depth LPA can go below. A second floor
  adds what every depth's loss must also do over its logits (softmax and cross-entropy, forward and
  backward): a hand-written minimal head loss (`cross_entropy(h @ W.T, y).backward()`), timed bare.

Targets: LPA / E2E step time <= 1.5x and peak memory <= 1.3x.

    python bench/finetune.py [--quick]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from common import median_step_time, peak_bytes, quick_args, run_child, setup, summary

SHAPE = {"layers": 12, "width": 512, "heads": 8, "hidden": 1376, "vocab": 32000}
QUICK_SHAPE = {"layers": 4, "width": 128, "heads": 4, "hidden": 344, "vocab": 4096}


def make_model(directory: Path, shape: dict, context: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.disable_progress_bar()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["width"], intermediate_size=shape["hidden"],
                      num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"],
                      max_position_embeddings=context, tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(directory)


def child(spec: dict) -> None:
    """One variant in this process: a warm-up step, then timed steps; prints peak memory and step time."""
    import torch

    device = setup()
    batch, context, steps, shape = spec["batch"], spec["context"], spec["steps"], spec["shape"]
    x = torch.randint(0, shape["vocab"], (batch, context), generator=torch.Generator().manual_seed(0)).to(device)

    if spec["variant"] in ("head", "head_ce"):  # the floors: one depth's head, timed bare
        h = torch.randn(batch * context, shape["width"], device=device, requires_grad=spec["variant"] == "head_ce")
        # a head's scale (std 0.02, as initialised): unscaled logits underflow softmax into denormals
        w = (0.02 * torch.randn(shape["vocab"], shape["width"], device=device)).requires_grad_(spec["variant"] == "head_ce")
        y = torch.randint(0, shape["vocab"], (batch * context,), device=device)

        def step():
            if spec["variant"] == "head":  # the three matmuls alone: forward and both gradients
                logits = h @ w.t()
                _ = logits @ w, logits.t() @ h
            else:  # the hand-written minimal head loss: matmul, cross-entropy, autograd's backward
                torch.nn.functional.cross_entropy(h @ w.t(), y).backward()

        print(json.dumps({"step_s": median_step_time(step, steps)}))
        return
    if spec["variant"] == "transformers":
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM.from_pretrained(spec["dir"]).to(device).train()

        def loss_fn():
            return model(input_ids=x, labels=x).loss
    else:
        from lpa_cli.data.batch import Batch
        from lpa_cli.config import ObjectiveConfig
        from lpa_cli.models.hf.load import load_model
        from lpa_cli.training.objectives import build_objective

        model = load_model(spec["dir"], device, context)[0].train()
        settings = {"sample_depths": 3} if spec["variant"] == "lpa3" else {}
        objective = build_objective(ObjectiveConfig(name="e2e" if spec["variant"] == "e2e" else "lpa", **settings), shape["layers"], "lm")
        # transformers shifts labels inside the model; lpa's batch holds the shifted targets
        data = Batch(x[:, :-1].contiguous(), x[:, 1:].contiguous())
        gen = torch.Generator().manual_seed(0)

        def loss_fn():
            return objective(model, data, 0, gen).loss
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)

    def step():
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step_s = median_step_time(step, steps)
    print(json.dumps({"peak_bytes": peak_bytes(), "step_s": step_s}))


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return
    quick = quick_args(__doc__)
    shape = QUICK_SHAPE if quick else SHAPE
    batch, context, steps = (2, 64, 2) if quick else (4, 257, 3)  # 257: 256 inputs and their shifted targets
    with tempfile.TemporaryDirectory(prefix="lpa-finetune-") as tmp:
        make_model(Path(tmp), shape, context)
        base = {"dir": tmp, "batch": batch, "context": context, "steps": steps, "shape": shape}
        res = {v: run_child(__file__, base | {"variant": v}) for v in ("e2e", "lpa", "lpa3", "transformers")}
        head = run_child(__file__, base | {"variant": "head", "context": context - 1, "steps": 5})
        head_ce = run_child(__file__, base | {"variant": "head_ce", "context": context - 1, "steps": 5})
    for name, r in res.items():
        print(f"{name}: step {r['step_s'] * 1000:.0f} ms, peak {gib(r['peak_bytes'])}", flush=True)
    e2e, lpa = res["e2e"], res["lpa"]
    floor = (e2e["step_s"] + shape["layers"] * head["step_s"]) / e2e["step_s"]
    floor_ce = (e2e["step_s"] + shape["layers"] * head_ce["step_s"]) / e2e["step_s"]
    floor3 = (e2e["step_s"] + 2 * head_ce["step_s"]) / e2e["step_s"]
    t = lpa["step_s"] / e2e["step_s"]
    summary("finetune.step_time", t, f"LPA (every depth) / E2E step time, target <= 1.5; floors: E2E + {shape['layers']} bare head matmul "
            f"triples of {head['step_s'] * 1000:.0f} ms {floor:.2f}x, E2E + {shape['layers']} hand-written head losses (matmul, "
            f"cross-entropy, backward) of {head_ce['step_s'] * 1000:.0f} ms {floor_ce:.2f}x; 3 sampled depths "
            f"{res['lpa3']['step_s'] / e2e['step_s']:.2f}x (floor {floor3:.2f}x)", t <= 1.5)
    m = lpa["peak_bytes"] / e2e["peak_bytes"]
    summary("finetune.peak_memory", m, f"LPA/E2E peak memory, target <= 1.3 ({gib(lpa['peak_bytes'])} vs {gib(e2e['peak_bytes'])})", m <= 1.3)
    ref = res["transformers"]
    summary("finetune.e2e_vs_transformers", e2e["step_s"] / ref["step_s"],
            f"lpa's E2E step / transformers' own (LlamaForCausalLM) step; memory {e2e['peak_bytes'] / ref['peak_bytes']:.2f}x")


if __name__ == "__main__":
    main()
