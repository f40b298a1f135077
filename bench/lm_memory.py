"""LPA at language-model scale: peak memory and step time of one training step with every depth,
against E2E's, on the same model and batch.

Each figure comes from a fresh process (peak RSS on CPU: ``ru_maxrss``; ``max_memory_allocated`` on
CUDA), so no run inherits another's allocations. The model is a pre-norm transformer of 8 blocks,
width 256, context 256, batch 8 (2,048 tokens), at vocabularies 4,096, 32,000 and 151,936:

- ``e2e``: depth N's loss only (the head loss chunked as `--head-loss auto` picks it);
- ``lpa`` (chunked): every depth's loss through the chunked head loss;
- ``lpa stacked``: every depth's logits at once (the old path), in a process capped at
  `MEMORY_CAP` (address space on a CPU; the CUDA allocator's share on a GPU), so where it does not fit
  it fails instead of taking the machine.

E2E and LPA run at ``--head-chunk-mb 64``: the memory promise is made at a small budget (a GPU's
default budget trades memory for fewer, larger chunks).

Targets: LPA / E2E peak memory <= 1.3x at every vocabulary; step time chunked LPA / E2E <= 1.5x at
32,000 (printed beside its floor: the head's FLOPs, 3 x 2 x tokens x width x vocab per depth, make
LPA with 9 depths cost at least E2E's step plus 8 bare head matmul triples, timed beside); chunked <= 1.05x
stacked where the stacked path fits. A last row trains a size at which the stacked path runs out of
memory on this machine (vocab 32,000, batch 32 x 512 tokens) and the chunked one does not.

    python bench/lm_memory.py [--quick]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from common import median_step_time, peak_bytes, quick_args, setup, summary

MEMORY_CAP = 18 << 30  # bytes of address space a child may take (this machine has 24 GB)
DEPTH, WIDTH, HEADS = 8, 256, 4


def child(vocab: int, mode: str, objective: str, batch: int, context: int, steps: int) -> None:
    """One process: build, one warm-up step, then `steps` timed steps; print peak memory and time."""
    import torch

    if mode == "stacked":  # capped, so that where it does not fit it fails instead of taking the machine
        if torch.cuda.is_available():  # an address-space cap would block CUDA's own mappings too
            torch.cuda.set_per_process_memory_fraction(min(1.0, MEMORY_CAP / torch.cuda.get_device_properties(0).total_memory))
        else:
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    from lpa_cli.data.batch import Batch
    from lpa_cli.config import ModelConfig, ObjectiveConfig
    from lpa_cli.models import build_model
    from lpa_cli.training.objectives import build_objective

    device = setup()
    if mode == "head":  # the floor: one depth's head, forward and backward, as three bare matmuls
        h = torch.randn(batch * context, WIDTH, device=device)
        w = torch.randn(vocab, WIDTH, device=device)

        def head_step():
            logits = h @ w.t()  # (tokens, vocab)
            _ = logits @ w, logits.t() @ h  # the gradients' matmuls, for the states and for the weight

        print(json.dumps({"step_s": median_step_time(head_step, steps, warmup=2)}))
        return
    model = build_model(ModelConfig(arch="gpt", depth=DEPTH, width=WIDTH, options={"heads": HEADS, "tie_embeddings": False}),
                        (context,), vocab, "tokens", "lm").to(device)
    # the memory promise is made at a small budget: 64 MiB of head output at once (a GPU's default is larger)
    obj = build_objective(ObjectiveConfig(name=objective, head_loss="stacked" if mode == "stacked" else "auto", head_chunk_mb=64), DEPTH, "lm")
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (batch, context), generator=g).to(device)
    data = Batch(x, torch.roll(x, -1, dims=1))
    last = {}

    def step():
        last["loss"] = loss = obj(model, data).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        step_s = median_step_time(step, steps)
    except (MemoryError, RuntimeError) as err:
        print(json.dumps({"failed": f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"}))
        return
    print(json.dumps({"peak_bytes": peak_bytes(), "step_s": step_s, "loss": float(last["loss"])}))


def run(vocab: int, mode: str, objective: str, batch: int, context: int, steps: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(vocab), mode, objective, str(batch), str(context), str(steps)],
                          capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "2"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"failed": f"exit {proc.returncode} ({(proc.stderr.strip().splitlines() or ['killed'])[-1][:120]})"}
    return json.loads(lines[-1])


def floor_ratio(e2e_s: float, head_s: float) -> float:
    """What LPA over every depth must cost at least: E2E's step plus the other depths' head matmuls
    (forward and both gradients: 3 x 2 x tokens x width x vocab FLOPs each), timed bare."""
    return (e2e_s + DEPTH * head_s) / e2e_s


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        vocab, mode, objective, batch, context, steps = sys.argv[2:8]
        child(int(vocab), mode, objective, int(batch), int(context), int(steps))
        return
    quick = quick_args(__doc__)
    batch, context, steps = (2, 64, 2) if quick else (8, 256, 3)
    vocabs = (4096, 32000) if quick else (4096, 32000, 151936)
    for vocab in vocabs:
        e2e = run(vocab, "auto", "e2e", batch, context, steps)
        lpa = run(vocab, "auto", "lpa", batch, context, steps)
        stacked = run(vocab, "stacked", "lpa", batch, context, steps)
        print(f"vocab {vocab}: e2e {json.dumps(e2e)}\n  lpa chunked {json.dumps(lpa)}\n  lpa stacked {json.dumps(stacked)}", flush=True)
        if "failed" in e2e or "failed" in lpa:
            summary(f"lm_memory.{vocab}.peak", float("nan"), "a run failed", False)
            continue
        mem = lpa["peak_bytes"] / e2e["peak_bytes"]
        if "peak_bytes" in stacked:
            beside = f"{gib(stacked['peak_bytes'])} = {stacked['peak_bytes'] / e2e['peak_bytes']:.2f}x"
        else:
            beside = stacked["failed"]
        summary(f"lm_memory.{vocab}.peak", mem, f"LPA/E2E peak memory, target <= 1.3 ({gib(lpa['peak_bytes'])} vs {gib(e2e['peak_bytes'])}; "
                f"stacked {beside})", mem <= 1.3)
        t = lpa["step_s"] / e2e["step_s"]
        head = run(vocab, "head", "lpa", batch, context, 5)
        target = vocab == 32000
        summary(f"lm_memory.{vocab}.time", t, f"chunked LPA/E2E step time{', target <= 1.5' if target else ''}; floor (E2E + {DEPTH} bare "
                f"head matmuls of {head['step_s'] * 1000:.0f} ms) {floor_ratio(e2e['step_s'], head['step_s']):.2f}x "
                f"({lpa['step_s'] * 1000:.0f} vs {e2e['step_s'] * 1000:.0f} ms)", (t <= 1.5) if target else None)
        if "step_s" in stacked:
            r = lpa["step_s"] / stacked["step_s"]
            summary(f"lm_memory.{vocab}.chunked_vs_stacked", r, "chunked/stacked step time, target <= 1.05", r <= 1.05)
    if not quick:  # a size where only the chunked path fits
        big = {"vocab": 32000, "batch": 32, "context": 512}
        stacked = run(big["vocab"], "stacked", "lpa", big["batch"], big["context"], 1)
        chunked = run(big["vocab"], "auto", "lpa", big["batch"], big["context"], 1)
        print(f"vocab 32000, batch 32 x 512: stacked {json.dumps(stacked)}; chunked {json.dumps(chunked)}")
        ok = "failed" in stacked and "peak_bytes" in chunked
        summary("lm_memory.only_chunked_fits", chunked.get("peak_bytes", float("nan")) / 2**30,
                f"GiB peak of chunked LPA where stacked {'fails: ' + stacked['failed'] if 'failed' in stacked else 'fits too'}", ok)


if __name__ == "__main__":
    main()
