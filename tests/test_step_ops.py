"""The shape of a training step's work, counted where no GPU is lent (issue 31): aten ops dispatched
(on a GPU, each is at least one kernel launch, and launches set the time of small models) and host
reads, for lpa's steps against transformers' own E2E step and the all-depth loss written by hand on
transformers' model of the same shape (`bench/gpu_step.py --count` runs the full sizes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="the peer is transformers' own model (the hf extra)")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))  # the scripts import their helpers as `common`

from common import count_ops  # noqa: E402
from gpu_step import steps_for  # noqa: E402

SHAPE = {"layers": 6, "width": 32, "heads": 2, "kv_heads": 2, "hidden": 86, "vocab": 512, "tied": False, "bias": False,
         "batch": 4, "context": 64, "family": "llama"}


@pytest.mark.parametrize("budget_mb", [1, 4])  # 7 depths x 256 tokens x 512 logits = 3.5 MiB: chunked (two depths a chunk), stacked
def test_lpa_steps_dispatch_no_more_ops_than_the_peers(budget_mb):
    torch.manual_seed(0)
    steps = steps_for(SHAPE, torch.device("cpu"), budget_mb=budget_mb, ks=(64,),
                      only={"lpa e2e", "lpa exact", "lpa sampled:64", "transformers e2e", "hand-written"})
    steps.pop("_models")
    counts = {}
    for name, step in steps.items():
        step()
        step()  # the optimiser's state exists from the second step on
        counts[name] = count_ops(step)[:2]
    hand, ref = counts["hand-written"], counts["transformers e2e"]
    assert counts["lpa exact"][0] <= hand[0], counts
    assert counts["lpa e2e"][0] <= 1.05 * ref[0], counts
    assert counts["lpa sampled:64"][0] <= 1.1 * hand[0], counts
    optimiser = ref[1]  # AdamW reads each parameter's step count; both sides have it
    assert counts["lpa e2e"][1] == counts["lpa exact"][1] == optimiser, counts
    assert counts["lpa sampled:64"][1] == optimiser + 3, counts  # the candidate draw, on the host copy of the targets


def test_rotary_angles_are_computed_once_per_forward_and_never_leak_across_modes():
    """Every layer shares one `Rotary`, which keeps the last (cos, sin); an evaluation under
    inference mode must not hand its tensors to a training step (autograd refuses inference tensors)."""
    from lpa_cli.config import ModelConfig
    from lpa_cli.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="decoder", depth=3, width=32, options={"heads": 2, "vocab": 64}), (16,), 64, "tokens", "lm")
    x = torch.randint(0, 64, (2, 16))
    _, _, ops = count_ops(lambda: list(model.states(x)))
    assert ops["aten::cos"] == 1 and ops["aten::sin"] == 1  # 3 layers, one computation
    with torch.inference_mode():
        model.head(list(model.states(x))[-1])
    loss = model.head(list(model.states(x))[-1]).logsumexp(-1).mean()
    loss.backward()  # would raise "Inference tensors cannot be saved for backward" with a leaked cache
    assert all(p.grad is not None for p in model.blocks.parameters())


def test_adam_is_fused_only_where_every_parameter_is_a_plain_cuda_tensor():
    from lpa_cli.training.setup import fused_options

    assert fused_options([torch.nn.Parameter(torch.zeros(2))]) == {}  # a CPU: the default implementation
    assert fused_options([]) == {}
    if torch.cuda.is_available():
        assert fused_options([torch.nn.Parameter(torch.zeros(2, device="cuda"))]) == {"fused": True}


def test_under_bf16_autocast_the_chunked_head_runs_every_matmul_in_bf16():
    """Issue 39: a fused chunk's three matmuls (logits, the features' gradient, the weight's) run in the
    autocast dtype, as the hand-written loss's do: no FLOP of the step outside bf16, and the same FLOPs."""
    from common import matmul_flops_by_dtype

    from lpa_cli.training.chunked_head import _Layout

    torch.manual_seed(0)
    steps = steps_for(SHAPE, torch.device("cpu"), budget_mb=1, ks=(64,), precision="bf16", only={"lpa exact", "hand-written"})
    steps.pop("_models")
    chunks = []
    real = _Layout.chunks
    _Layout.chunks = lambda self: (chunks.append(c) or c for c in real(self))
    try:
        flops = {name: matmul_flops_by_dtype(step) for name, step in steps.items()}
    finally:
        _Layout.chunks = real
    assert len(chunks) >= 3, len(chunks)
    assert set(flops["lpa exact"]) == set(flops["hand-written"]) == {"bfloat16"}, flops
    assert flops["lpa exact"]["bfloat16"] == pytest.approx(flops["hand-written"]["bfloat16"], rel=1e-3)  # the same head work
