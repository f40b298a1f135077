"""lpa's training step against the step a user would otherwise run: transformers' own model of the same
shape, and the all-depth loss written by hand on it (issue 31).

Variants, each one AdamW step (fused on CUDA, as transformers' Trainer uses it) under bf16 autocast on
CUDA (fp32 on a CPU), interleaved round-robin in one process, every timed region between
``torch.cuda.synchronize()`` calls, median of 8 after 3 warm-ups:

- ``lpa e2e``, ``lpa exact`` (every depth, exact head loss), ``lpa sampled:2048``, ``lpa sampled:8192``,
  ``lpa sampled:2048 + rotation:4``: lpa's decoder of the shape, the head loss on its defaults (the
  budget chosen from the device);
- ``transformers e2e``: ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` of the same shape, ``labels=``;
- ``hand-written``: forward hooks on the embedding and every layer of that model,
  ``lm_head(model.norm(h))`` at every depth, summed cross-entropy (what a user writes in 15 lines);
- ``head pass``: one depth's head alone (matmul, cross-entropy, backward), timed bare: the floor of
  exact LPA is E2E + N of them.

Beside each: peak memory above what was allocated before the step (CUDA), TFLOP/s of the E2E steps
(6 x parameters x tokens for the matmuls, plus attention and the head). Shapes: a 12 x 512 Llama at
vocabulary 32,000 on 8 x 1,024 tokens, and Qwen2-0.5B's shape (24 x 896, 14 heads, 2 KV heads, MLP
4,864, tied, vocabulary 151,936) on 4 x 1,024 tokens. ``--quick``: small sizes for a CPU.

``--count``: no timing; the aten ops one step dispatches, and how many of them read a value back to the
host, on a CPU (deterministic, so it stands in for GPU timing where no GPU is lent: on a GPU each op is
at least one kernel launch): a 12 x 64 model at 2,048 and 8,192 tokens, lpa with ``--head-chunk-mb
4096``, against transformers' E2E and the hand-written loss. The vocabulary is 32,000 / 8 with the
budget / 8 and K / 8: the head loss's plan (stacked or chunked, and the chunks) depends only on
bytes = rows x vocabulary x 4 against the budget, so it is the plan of vocabulary 32,000 at 4,096 MiB,
and the op counts are that plan's, at an eighth of the memory. Then, under bf16 autocast, each step's
matmul FLOPs by the dtype they run in (on a GPU, fp32 matmuls run at a fraction of the tensor cores'
bf16 rate).

Targets: lpa E2E <= 1.05x transformers' step; exact LPA at most the hand-written loss's time at at most
a quarter of its memory, and within 1.1x of its floor; sampled:2048 at most 1.3x E2E at 151,936 and
no slower than exact LPA at 32,000. Op counts: exact LPA <= 1.0x the hand-written loss's, lpa E2E
<= 1.05x transformers', sampled:2048 <= 1.1x the hand-written loss's, no host reads beyond the
optimiser's own; under bf16 autocast no larger share of matmul FLOPs outside bf16 than the hand-written
loss's.

    python bench/gpu_step.py [--quick | --count] [--compile] [--shape llama|qwen]
"""

from __future__ import annotations

import argparse
import sys

from common import count_ops, interleaved, matmul_flops_by_dtype, setup, summary

SHAPES = {
    "llama": {"layers": 12, "width": 512, "heads": 8, "kv_heads": 8, "hidden": 1376, "vocab": 32000, "tied": False, "bias": False,
              "batch": 8, "context": 1024, "family": "llama"},
    "qwen": {"layers": 24, "width": 896, "heads": 14, "kv_heads": 2, "hidden": 4864, "vocab": 151936, "tied": True, "bias": True,
             "batch": 4, "context": 1024, "family": "qwen2"},
}
QUICK = {"layers": 4, "width": 64, "heads": 4, "kv_heads": 2, "hidden": 172, "vocab": 4096, "tied": False, "bias": False,
         "batch": 2, "context": 128, "family": "llama"}
COUNT = {"layers": 12, "width": 64, "heads": 4, "kv_heads": 4, "hidden": 172, "vocab": 32000 // 8, "tied": False, "bias": False,
         "batch": 2, "context": 1024, "family": "llama"}
COUNT_SCALE = 8  # --count: vocabulary, budget and K divided by this (the same plan; see the docstring)
KS = (2048, 8192)


def lpa_model(shape: dict, device):
    from lpa_cli.config import ModelConfig
    from lpa_cli.models import build_model

    opts = {"heads": shape["heads"], "kv_heads": shape["kv_heads"], "hidden": shape["hidden"], "vocab": shape["vocab"],
            "tie_embeddings": shape["tied"], "qkv_bias": shape["bias"]}
    cfg = ModelConfig(arch="decoder", depth=shape["layers"], width=shape["width"], zero_init=False, options=opts)
    return build_model(cfg, (shape["context"],), shape["vocab"], "tokens", "lm").to(device).train()


def hf_model(shape: dict, device):
    """transformers' own causal LM of the same shape (random weights, nothing downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(vocab_size=shape["vocab"], hidden_size=shape["width"], intermediate_size=shape["hidden"],
                  num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"], num_key_value_heads=shape["kv_heads"],
                  max_position_embeddings=shape["context"] + 1, tie_word_embeddings=shape["tied"])
    if shape["family"] == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    return model.to(device).train()


def zipf_batch(shape: dict, device, seed: int = 0):
    """Token ids drawn from a Zipf law, as text's are (so the sampled loss's always-in targets are a real
    count); ``x`` holds context + 1 tokens: transformers shifts inside, lpa's batch holds the shift."""
    import torch

    ranks = torch.arange(1, shape["vocab"] + 1, dtype=torch.float64)
    n = shape["batch"] * (shape["context"] + 1)
    ids = torch.multinomial(1 / ranks, n, replacement=True, generator=torch.Generator().manual_seed(seed))
    return ids.view(shape["batch"], -1).to(device)


def adamw(params):
    import torch

    from lpa_cli.training.setup import fused_options

    params = list(params)
    return torch.optim.AdamW(params, lr=1e-5, **fused_options(params))


def steps_for(shape: dict, device, budget_mb: int = 0, ks: tuple[int, ...] = KS, only: set[str] | None = None,
              precision: str | None = None) -> dict:
    """name -> one training step (forward, backward, optimiser) of every variant, on two models;
    ``precision``: default bf16 autocast on a GPU, fp32 on a CPU."""
    import torch

    from lpa_cli.config import ObjectiveConfig
    from lpa_cli.data.batch import Batch
    from lpa_cli.training.evaluate import autocast
    from lpa_cli.training.objectives import build_objective

    precision = precision or ("bf16" if device.type == "cuda" else "fp32")
    x = zipf_batch(shape, device)
    data = Batch(x[:, :-1].contiguous(), x[:, 1:].contiguous())
    mine, theirs = lpa_model(shape, device), hf_model(shape, device)
    opt_mine, opt_theirs = adamw(mine.parameters()), adamw(theirs.parameters())
    N = shape["layers"]
    variants = {"lpa e2e": {"name": "e2e"}, "lpa exact": {"name": "lpa"}}
    for k in ks:
        variants[f"lpa sampled:{k}"] = {"name": "lpa", "head_loss": f"sampled:{k}"}
    variants[f"lpa sampled:{ks[0]} + rotation:4"] = {"name": "lpa", "head_loss": f"sampled:{ks[0]}", "depth_schedule": "rotation:4"}
    counter = {"step": 0}

    def lpa_step(settings: dict):
        objective = build_objective(ObjectiveConfig(**settings, head_chunk_mb=budget_mb), N, "lm")
        gen = torch.Generator().manual_seed(0)

        def step():
            with autocast(device, precision):
                loss = objective(mine, data, counter["step"], gen).loss
            opt_mine.zero_grad(set_to_none=True)
            loss.backward()
            opt_mine.step()
            counter["step"] += 1
        return step

    def transformers_step():
        with autocast(device, precision):
            loss = theirs(input_ids=x[:, :-1], labels=x[:, :-1]).loss
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()

    def hand_written_step():
        inner, states = theirs.model, []
        hooks = [inner.embed_tokens.register_forward_hook(lambda m, i, o: states.append(o))]
        hooks += [layer.register_forward_hook(lambda m, i, o: states.append(o[0] if isinstance(o, tuple) else o)) for layer in inner.layers]
        try:
            with autocast(device, precision):
                inner(input_ids=data.x)
                y = data.y.flatten()
                loss = sum(torch.nn.functional.cross_entropy(theirs.lm_head(inner.norm(h)).flatten(0, 1).float(), y) for h in states)
        finally:
            for hook in hooks:
                hook.remove()
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()

    h = torch.randn(data.y.numel(), shape["width"], device=device, requires_grad=True)
    w = (0.02 * torch.randn(shape["vocab"], shape["width"], device=device)).requires_grad_(True)

    def head_pass():  # one depth's head alone: the floor's unit
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy((h @ w.t()).float(), data.y.flatten())
        loss.backward()

    steps = {name: lpa_step(s) for name, s in variants.items()}
    steps |= {"transformers e2e": transformers_step, "hand-written": hand_written_step, "head pass": head_pass}
    return {k: v for k, v in steps.items() if only is None or k in only} | {"_models": (mine, theirs)}


def compiled_steps(shape: dict, device, mine, mode: str | None) -> dict:
    """lpa's E2E step with its loss module compiled (``mode``: torch.compile's; reduce-overhead uses CUDA graphs)."""
    import torch

    from lpa_cli.config import ObjectiveConfig
    from lpa_cli.data.batch import Batch
    from lpa_cli.training.evaluate import autocast
    from lpa_cli.training.objectives import build_objective
    from lpa_cli.training.setup import LossModule

    x = zipf_batch(shape, device)
    data = Batch(x[:, :-1].contiguous(), x[:, 1:].contiguous())
    module = torch.compile(LossModule(mine, build_objective(ObjectiveConfig(name="e2e"), shape["layers"], "lm")), mode=mode)
    opt = adamw(mine.parameters())

    def step():
        with autocast(device, "bf16" if device.type == "cuda" else "fp32"):
            loss = module(data, 0, None).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    try:
        step()  # compiles (minutes on a large model); a failure leaves the other rows standing
    except Exception as err:  # noqa: BLE001 - compilation errors come in many types
        print(f"compiled ({mode or 'default'}) failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}", flush=True)
        return {}
    return {f"lpa e2e compiled ({mode or 'default'})": step}


def step_flops(shape: dict, head_reads: float) -> float:
    """Forward + backward FLOPs: 6 x tokens per matmul weight of the blocks, attention's two products,
    and ``head_reads`` passes of the head (6 x tokens x width x vocabulary each)."""
    w, hid, t = shape["width"], shape["hidden"], shape["context"]
    tokens = shape["batch"] * t
    kv = w * shape["kv_heads"] // shape["heads"]
    per_layer = 2 * w * w + 2 * w * kv + 3 * w * hid  # q, o; k, v; gate, up, down
    attention = 2 * 2 * t * w  # scores and values per token (causal: half of it, counted whole as the kernels do)
    return 3 * tokens * (shape["layers"] * (2 * per_layer + attention)) + 6 * tokens * w * shape["vocab"] * head_reads


def peak_above(step) -> float:
    """GiB the step allocated above what was allocated before it (CUDA's allocator; nan on a CPU)."""
    import torch

    if not torch.cuda.is_available():
        return float("nan")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**30


def timed(shape_name: str, shape: dict, device, repeats: int, warmup: int, compile_modes: list, ks: tuple[int, ...] = KS) -> None:
    steps = steps_for(shape, device, ks=ks)
    mine, _ = steps.pop("_models")
    for mode in compile_modes:
        steps |= compiled_steps(shape, device, mine, mode)
    times = interleaved(steps, repeats, warmup=warmup)
    peaks = {name: peak_above(fn) for name, fn in steps.items()}
    N, tag = shape["layers"], f"gpu_step.{shape_name}"
    e2e, ref, hand = times["lpa e2e"], times["transformers e2e"], times["hand-written"]
    for name, t in times.items():
        flops = step_flops(shape, 1) if "e2e" in name else None
        rate = f", {flops / t / 1e12:.3g} TFLOP/s" if flops else ""
        print(f"{shape_name} {name}: {t * 1000:.1f} ms ({t / e2e:.2f}x lpa E2E, {t / ref:.2f}x transformers' E2E), "
              f"peak above model {peaks[name]:.2f} GiB{rate}", flush=True)
    r = e2e / ref
    summary(f"{tag}.e2e_vs_transformers", r, f"lpa E2E / transformers' E2E step, target <= 1.05 ({e2e * 1000:.1f} vs {ref * 1000:.1f} ms)",
            r <= 1.05)
    exact, floor = times["lpa exact"], e2e + N * times["head pass"]
    mem = peaks["lpa exact"] / peaks["hand-written"] if peaks["hand-written"] > 0 else float("nan")
    summary(f"{tag}.exact_vs_hand_written", exact / hand, f"exact LPA / the hand-written all-depth loss, target <= 1 at <= 0.25 of its "
            f"memory (memory {mem:.2f}x: {peaks['lpa exact']:.2f} vs {peaks['hand-written']:.2f} GiB)", exact <= hand and not mem > 0.25)
    summary(f"{tag}.exact_vs_floor", exact / floor, f"exact LPA / its floor (E2E + {N} bare head passes of {times['head pass'] * 1000:.1f} ms), "
            "target <= 1.1", exact / floor <= 1.1)
    sampled = times[f"lpa sampled:{ks[0]}"]
    if shape["vocab"] > 100_000:
        summary(f"{tag}.sampled_{ks[0]}", sampled / e2e, "sampled LPA / E2E step, target <= 1.3", sampled / e2e <= 1.3)
    else:
        summary(f"{tag}.sampled_{ks[0]}", sampled / exact, "sampled LPA / exact LPA step, target <= 1 (no slower)", sampled <= exact)


def counted(quick: bool) -> None:
    """Op and host-read counts of one step of each variant (see the docstring)."""
    import torch

    device = torch.device("cpu")
    ks = tuple(k // COUNT_SCALE for k in KS[:1])
    for tokens in ((2048,) if quick else (2048, 8192)):
        shape = COUNT | {"batch": tokens // COUNT["context"]}
        only = {"lpa e2e", "lpa exact", f"lpa sampled:{ks[0]}", "transformers e2e", "hand-written"}
        steps = steps_for(shape, device, budget_mb=4096 // COUNT_SCALE, ks=ks, only=only)
        steps.pop("_models")
        counts = {}
        for name, fn in steps.items():
            fn()  # the optimiser's state exists from the second step on
            fn()
            counts[name] = count_ops(fn)[:2]
            print(f"ops {tokens} tokens, {name}: {counts[name][0]:,} aten ops, {counts[name][1]} host reads", flush=True)
        hand, ref, optimiser = counts["hand-written"][0], counts["transformers e2e"][0], counts["transformers e2e"][1]
        tag = f"gpu_step.ops.{tokens}"
        for name, target, peer, peer_name in (("lpa exact", 1.0, hand, "the hand-written loss's"), ("lpa e2e", 1.05, ref, "transformers' E2E"),
                                              (f"lpa sampled:{ks[0]}", 1.1, hand, "the hand-written loss's")):
            r = counts[name][0] / peer
            extra = counts[name][1] - optimiser
            short = name.replace("lpa ", "").replace(f"sampled:{ks[0]}", f"sampled_{KS[0]}")
            summary(f"{tag}.{short}", r, f"{name} ops / {peer_name}, target <= {target}; host reads beyond the optimiser's "
                    f"{optimiser}: {extra}", r <= target and extra <= (3 if "sampled" in name else 0))


def dtype_profile(quick: bool) -> None:
    """Under bf16 autocast on the CPU (the dispatch CUDA autocast does): each step's matmul FLOPs by the
    dtype they run in. Target: lpa's steps run no larger share outside bf16 than the hand-written loss."""
    import torch

    shape = COUNT | {"batch": (2048 if quick else 8192) // COUNT["context"]}
    ks = tuple(k // COUNT_SCALE for k in KS[:1])
    steps = steps_for(shape, torch.device("cpu"), budget_mb=4096 // COUNT_SCALE, ks=ks, precision="bf16",
                      only={"lpa e2e", "lpa exact", f"lpa sampled:{ks[0]}", "transformers e2e", "hand-written"})
    steps.pop("_models")
    shares = {}
    for name, fn in steps.items():
        fn()
        flops = matmul_flops_by_dtype(fn)
        total = sum(flops.values())
        shares[name] = 1 - flops.get("bfloat16", 0.0) / total
        parts = ", ".join(f"{d} {v / total:.1%}" for d, v in sorted(flops.items()))
        print(f"dtypes bf16 autocast, {name}: {total / 1e9:.2f} GFLOP of matmuls: {parts}", flush=True)
    hand = shares["hand-written"]
    for name in ("lpa exact", f"lpa sampled:{ks[0]}", "lpa e2e"):
        short = name.replace("lpa ", "").replace(f"sampled:{ks[0]}", f"sampled_{KS[0]}")
        summary(f"gpu_step.dtypes.{short}", shares[name], f"{name}: share of matmul FLOPs outside bf16 under bf16 autocast, "
                f"target <= the hand-written loss's {hand:.1%}", shares[name] <= hand + 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test that the script runs)")
    parser.add_argument("--count", action="store_true", help="op counts on the CPU instead of timings")
    parser.add_argument("--compile", action="store_true", help="also lpa's E2E step compiled, on the first shape (default mode, "
                        "and reduce-overhead's CUDA graphs on a GPU)")
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append", help="only these shapes (default: both)")
    args = parser.parse_args()
    device = setup()
    if args.count:
        counted(args.quick)
        dtype_profile(args.quick)
        return
    modes = [None, "reduce-overhead"] if args.compile and device.type == "cuda" else ([None] if args.compile else [])
    if args.quick:
        timed("quick", QUICK, device, repeats=2, warmup=1, compile_modes=modes, ks=(256, 1024))
        return
    for i, name in enumerate(args.shape or ["llama", "qwen"]):  # compiling costs minutes: the first shape only
        timed(name, SHAPES[name], device, repeats=8, warmup=3, compile_modes=modes if i == 0 else [])


if __name__ == "__main__":
    sys.exit(main())
