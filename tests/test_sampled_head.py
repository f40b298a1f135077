"""The sampled head loss (`--head-loss sampled:K`): exact when every row is a candidate, an unbiased
normaliser otherwise (checked against a hand-written softmax), seeded, resumable, and refused where it
means nothing."""

from __future__ import annotations

import math

import pytest
import torch

from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
from lpa_cli.data.batch import Batch
from lpa_cli.models import build_model
from lpa_cli.training import head_loss
from lpa_cli.training.objectives import build_objective
from lpa_cli.training.sampled_head import draw
from tests.cli_helpers import assert_clean_error, assert_resume_is_exact, run
from tests.conftest import tiny_model

OPTIONS = {"plain": {}, "kl alignment": {"align": "kl", "align_mix": 0.7}, "loss power": {"loss_power": 0.5},
           "lambda form": {"lpa_lambda": 0.1}, "sample fraction": {"sample_fraction": 0.6}, "local": {"name": "lpa-local"}}


def _grads(model, settings, mode, seed=3):
    obj = build_objective(ObjectiveConfig(**({"name": "lpa"} | settings | {"head_loss": mode})), model.num_blocks, "lm")
    model.zero_grad(set_to_none=True)
    out = obj(model, BATCH, step=0, generator=torch.Generator().manual_seed(seed))
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


MODEL, BATCH, _ = tiny_model("gpt")  # vocabulary 32


@pytest.mark.parametrize("path", ["stacked", "chunked"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_every_row_a_candidate_is_the_exact_loss(option, path, monkeypatch):
    """K >= the rows outside the always-in set: the candidate head is the whole head, in vocabulary
    order, unshifted, so the losses are the exact path's bit for bit; their total and the gradients to float rounding
    (depth N is read in its own head call, so they are summed in another order)."""
    if path == "chunked":
        monkeypatch.setattr(head_loss, "CPU_BUDGET", 128)
    exact, g_exact = _grads(MODEL, OPTIONS[option], path if path == "stacked" else "chunked")
    sampled, g_sampled = _grads(MODEL, OPTIONS[option], "sampled:32")
    assert sampled.depths == exact.depths
    assert torch.equal(sampled.losses, exact.losses), (sampled.losses, exact.losses)
    # the weighted total is summed per row on the chunked path, so in another order than per depth
    torch.testing.assert_close(sampled.loss, exact.loss, rtol=1e-6, atol=0)
    assert set(g_sampled) == set(g_exact)
    for name in g_exact:
        torch.testing.assert_close(g_sampled[name], g_exact[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_normaliser_is_unbiased_against_a_hand_written_softmax():
    """Over many draws, the mean of sum(exp(shifted candidate logits)) is the full softmax's Z."""
    g = torch.Generator().manual_seed(0)
    vocab, k = 200, 20
    z = torch.randn(vocab, generator=g, dtype=torch.float64) * 2
    always = torch.tensor([3, 17, 150])
    full = z.exp().sum().item()
    estimates = []
    for _ in range(4000):
        cand = draw(vocab, always, k, g, torch.device("cpu"))
        assert len(cand.ids) == k + 3 and set(always.tolist()) <= set(cand.ids.tolist())
        assert torch.all(cand.shift[torch.isin(cand.ids, always)] == 0)
        assert torch.allclose(cand.shift[~torch.isin(cand.ids, always)], torch.tensor(math.log((vocab - 3) / k), dtype=torch.float32))
        estimates.append((z[cand.ids] + cand.shift.double()).exp().sum().item())
    mean = sum(estimates) / len(estimates)
    sd = (sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1)) ** 0.5 / len(estimates) ** 0.5
    assert abs(mean - full) < 4 * sd, (mean, full, sd)


def test_the_final_depth_stays_exact_and_shallow_depths_move_toward_exact_with_k():
    torch.manual_seed(0)
    vocab, T, B = 512, 16, 4
    model = build_model(ModelConfig(arch="gpt", depth=3, width=32, zero_init=False, options={"heads": 2}), (T,), vocab, "tokens", "lm")
    batch = Batch(torch.randint(0, vocab, (B, T)), torch.randint(0, vocab, (B, T)))
    exact = build_objective(ObjectiveConfig(name="lpa"), 3, "lm")(model, batch).losses
    gaps = []
    for k in (16, 128, 448):
        obj = build_objective(ObjectiveConfig(name="lpa", head_loss=f"sampled:{k}"), 3, "lm")
        runs = torch.stack([obj(model, batch, 0, torch.Generator().manual_seed(s)).losses for s in range(8)])
        assert torch.equal(runs[:, -1], exact[-1].expand(8))  # depth N: the exact loss every time
        gaps.append((runs[:, :-1].mean(0) - exact[:-1]).abs().max().item())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.05, gaps


def test_the_same_seed_draws_the_same_candidates():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="gpt", depth=2, width=16, zero_init=False, options={"heads": 2}), (8,), 300, "tokens", "lm")
    batch = Batch(torch.randint(0, 300, (2, 8)), torch.randint(0, 300, (2, 8)))
    obj = build_objective(ObjectiveConfig(name="lpa", head_loss="sampled:4"), 2, "lm")
    a, b, c = (obj(model, batch, 0, torch.Generator().manual_seed(s)).losses for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a[:-1], c[:-1]) and torch.equal(a[-1], c[-1])


def _text_run(head_loss: str, **objective) -> RunConfig:
    return RunConfig(ModelConfig(arch="decoder", depth=2, width=16, options={"heads": 2, "vocab": 300}),
                     TaskConfig(name="text", n_train=64, n_test=8, options={"context": 16}),
                     ObjectiveConfig(name="lpa", head_loss=head_loss, **objective),
                     TrainConfig(steps=12, batch_size=8, threads=1, grad_accum=2))


def test_a_resumed_sampled_run_is_bit_identical(tmp_path):
    assert_resume_is_exact(_text_run("sampled:64", align="kl", depth_schedule="rotation:2"), tmp_path)


@pytest.mark.parametrize("args, words", [
    (["--head-loss", "sampled:0"], "--head-loss"),
    (["--head-loss", "sampled:x"], "--head-loss"),
    (["--head-loss", "sampled:4"], "language models"),  # the stripe surface: a regression
    (["--task", "text", "--arch", "gpt", "--set", "task.options.context=8", "--head-loss", "sampled:999"], "at most the vocabulary"),
])
def test_bad_sampled_settings_are_one_line_errors(args, words, tmp_path):
    result = run("train", "--steps", "2", "--depth", "2", "--width", "8", "-o", str(tmp_path / "m.safetensors"), *args)
    assert_clean_error(result, words)


def test_a_head_without_a_vocabulary_projection_is_refused():
    from lpa_core.errors import UsageError
    from lpa_cli.training.sampled_head import projection

    with pytest.raises(UsageError, match="--head-loss sampled:8"):
        projection(torch.nn.Linear(4, 4), "--head-loss sampled:8")


def test_sampled_composes_with_bf16_lora_accumulation_and_the_lambda_form(tmp_path):
    """A decoder fine-tuned in bf16 with LoRA adapters, micro-batches and the λ form learns under the
    sampled head loss (the candidate rows are gathered from the merged head inside the step)."""
    pytest.importorskip("peft", reason="LoRA needs the hf extra (peft)")
    from lpa_cli.training.trainer import train

    cfg = _text_run("sampled:32", lpa_lambda=0.1)
    cfg = RunConfig(cfg.model, cfg.task, cfg.objective,
                    TrainConfig(steps=30, batch_size=8, threads=1, grad_accum=2, precision="bf16", lr=1e-2))
    result = train(cfg, tmp_path / "m.safetensors")
    lora = RunConfig(cfg.model, cfg.task, cfg.objective, TrainConfig(steps=30, batch_size=8, threads=1, lora_rank=4, lr=1e-2))
    adapted = train(lora, tmp_path / "lora.safetensors")
    for r in (result, adapted):
        losses = r.metrics["ce"]
        assert all(math.isfinite(v) for v in losses) and losses[-1] < math.log(300)


def test_ddp_and_fsdp_agree_under_the_sampled_loss(tmp_path):
    """Two processes draw from the same seeded stream; DDP and FSDP give the same model."""
    from lpa_cli.models.open import load_checkpoint
    from tests.cli_helpers import TINY_TRAIN
    from tests.test_scale import _torchrun

    args = [*TINY_TRAIN, "--arch", "gpt", "--task", "text", "--set", "model.options.heads=2", "--set", "task.options.context=16",
            "--head-loss", "sampled:16", "--align", "kl"]
    for mode in ("ddp", "fsdp"):
        done = _torchrun(tmp_path, *args, "--parallel", mode, "-o", str(tmp_path / f"{mode}.safetensors"))
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_checkpoint(tmp_path / "ddp.safetensors"), load_checkpoint(tmp_path / "fsdp.safetensors")
    for name, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[name], value, rtol=1e-4, atol=1e-5)
