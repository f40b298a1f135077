"""The CUDA paths, on a GPU when there is one (skipped otherwise; `bench/device_check.sh` runs them on a
lent device): bf16 autocast training, the chunked and sampled head losses, the GPU memory peak the
benchmarks read, and greedy generation, each against the same computation on the CPU."""

from __future__ import annotations

import pytest
import torch

from lpa_cli.config import ModelConfig, ObjectiveConfig
from lpa_cli.data.batch import Batch
from lpa_cli.models import build_model
from lpa_cli.training.objectives import build_objective

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]


def _lm(vocab: int = 2048, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="decoder", depth=3, width=64, zero_init=False, options={"heads": 4, "vocab": vocab}),
                        (32,), vocab, "tokens", "lm")
    g = torch.Generator().manual_seed(seed + 1)
    return model, Batch(torch.randint(0, vocab, (4, 32), generator=g), torch.randint(0, vocab, (4, 32), generator=g))


@pytest.mark.parametrize("mode", ["stacked", "chunked", "sampled:256", "sampled:2048"])  # 2,048: every row a candidate
def test_head_losses_on_the_gpu_equal_the_cpu(mode):
    model, batch = _lm()
    obj = build_objective(ObjectiveConfig(name="lpa", head_loss=mode, align="kl"), 3, "lm")
    cpu = obj(model, batch, 0, torch.Generator().manual_seed(0))
    gpu = obj(model.cuda(), batch.to("cuda"), 0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(gpu.losses.cpu(), cpu.losses, rtol=2e-4, atol=2e-5)
    gpu.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_autocast_training_learns_and_peak_memory_is_read(tmp_path):
    from lpa_cli.config import RunConfig, TaskConfig, TrainConfig
    from lpa_cli.training.trainer import train

    torch.cuda.reset_peak_memory_stats()
    cfg = RunConfig(ModelConfig(arch="gpt", depth=2, width=32, options={"heads": 2}), TaskConfig(name="text", options={"context": 32}),
                    ObjectiveConfig(name="lpa", head_loss="sampled:64"),
                    TrainConfig(steps=60, batch_size=16, lr=3e-3, device="cuda", precision="bf16"))
    result = train(cfg, tmp_path / "m.safetensors")
    assert result.training["final_loss"] < 4.0  # bytes: ln 256 = 5.5 at the start
    assert torch.cuda.max_memory_allocated() > 0


def test_greedy_generation_on_the_gpu_is_the_cpus():
    from lpa_cli.formats.tokenizer import BYTES
    from lpa_cli.serving.generate import generate

    model, _ = _lm(vocab=256)
    cpu = generate(model.eval(), BYTES, "hello", max_new_tokens=12)
    gpu = generate(model.cuda(), BYTES, "hello", max_new_tokens=12)
    assert gpu.tokens == cpu.tokens


@pytest.mark.parametrize("settings", [{}, {"align": "kl", "align_mix": 0.5}, {"loss_power": 0.5}, {"head_loss": "sampled:256"}])
def test_the_budgeted_head_loss_on_the_gpu_equals_the_cpus_stacked_loss(settings):
    """A 1 MiB budget on the GPU (chunks of two depths' logits) against the CPU's stacked path: the
    same losses and gradients; and the GPU's own default budget (from its free memory) stacks them."""
    from lpa_cli.training.head_loss import GPU_BUDGET_RANGE

    model, batch = _lm(vocab=1024)
    base = {"name": "lpa"} | settings
    cpu_obj = build_objective(ObjectiveConfig(**base | {"head_loss": settings.get("head_loss", "stacked")}), 3, "lm")
    cpu = cpu_obj(model, batch, 0, torch.Generator().manual_seed(0))
    cpu.loss.backward()
    cpu_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    gpu_obj = build_objective(ObjectiveConfig(**base | {"head_chunk_mb": 1}), 3, "lm")
    gpu = gpu_obj(model.cuda(), batch.to("cuda"), 0, torch.Generator().manual_seed(0))
    gpu.loss.backward()
    torch.testing.assert_close(gpu.losses.cpu(), cpu.losses, rtol=2e-4, atol=2e-5)
    for name, g in cpu_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad.cpu(), g, rtol=2e-3, atol=2e-5, msg=name)
    default = build_objective(ObjectiveConfig(name="lpa"), 3, "lm").budget(torch.device("cuda"))
    assert GPU_BUDGET_RANGE[0] <= default <= GPU_BUDGET_RANGE[1]


def test_fused_adam_on_the_gpu():
    from lpa_cli.training.setup import fused_options

    assert fused_options([torch.nn.Parameter(torch.zeros(2, device="cuda"))]) == {"fused": True}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("form", ["e2e", "lpa", "kl", "loss power"])
@pytest.mark.parametrize("model_name", ["gpt", "decoder", "hf-llama"])
def test_the_precision_matrix_on_the_gpu(model_name, form, precision, monkeypatch):
    """Issue 39's CUDA slice: the chunked head loss (one row a chunk) under CUDA autocast, fp16 with the
    loss scaled as GradScaler scales it, against the same model's fp32 stacked step on the GPU."""
    from tests.test_precision import check_case

    check_case(model_name, form, "chunked", precision, monkeypatch, device="cuda")
