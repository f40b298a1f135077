"""The chunked per-depth head loss gives the stacked path's losses and gradients, on every architecture
and with every objective option; and it never holds more than one chunk of head output."""

from __future__ import annotations

import pytest
import torch

from lpa_cli.training import head_loss
from lpa_cli.data.batch import Batch
from lpa_cli.config import ObjectiveConfig
from lpa_cli.training.objectives import build_objective
from tests.conftest import tiny_model

VARIANTS = {
    "plain": {},
    "sampled depths": {"sample_depths": 2},
    "sample fraction": {"sample_fraction": 0.5},
    "loss power": {"loss_power": 0.5},
    "log loss": {"loss_power": 0.0},
    "lambda form": {"lpa_lambda": 0.1},
    "kl alignment": {"align": "kl", "align_mix": 0.7},
    "local": {"name": "lpa-local"},
}


def _run(model, batch, kind, settings, mode, seed=3):
    obj = build_objective(ObjectiveConfig(**({"name": "lpa"} | settings | {"head_loss": mode})), model.num_blocks, kind)
    model.zero_grad(set_to_none=True)
    out = obj(model, batch, step=0, generator=torch.Generator().manual_seed(seed))
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chunked_equals_stacked(arch, variant, monkeypatch):
    monkeypatch.setattr(head_loss, "CPU_BUDGET", 128)  # many chunks (of 64 bytes) even for tiny heads
    model, batch, kind = tiny_model(arch)
    stacked, g_stacked = _run(model, batch, kind, VARIANTS[variant], "stacked")
    chunked, g_chunked = _run(model, batch, kind, VARIANTS[variant], "chunked")
    assert stacked.depths == chunked.depths
    torch.testing.assert_close(chunked.loss, stacked.loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(chunked.losses, stacked.losses, rtol=1e-5, atol=1e-7)
    assert set(g_chunked) == set(g_stacked)
    for name in g_stacked:
        torch.testing.assert_close(g_chunked[name], g_stacked[name], rtol=1e-5, atol=1e-6, msg=name)


def test_auto_picks_chunked_only_for_large_outputs(monkeypatch):
    model, batch, kind = tiny_model("gpt")
    obj = build_objective(ObjectiveConfig(name="lpa"), model.num_blocks, kind)
    calls = []
    real = head_loss.chunked_loss
    monkeypatch.setattr("lpa_cli.training.objectives.chunked_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    obj(model, batch)
    assert not calls  # 4 depths x 5 x 12 tokens x 32 logits: tiny
    monkeypatch.setattr(head_loss, "CPU_BUDGET", 1024)
    obj(model, batch)
    assert not calls  # the budget is chosen once per objective and device
    build_objective(ObjectiveConfig(name="lpa"), model.num_blocks, kind)(model, batch)
    assert calls


def test_chunked_never_holds_every_depths_logits(monkeypatch):
    """The largest head output during the chunked loss is a chunk, not the (D, B, T, V) stack."""
    monkeypatch.setattr(head_loss, "CPU_BUDGET", 512 << 10)
    torch.manual_seed(0)
    from lpa_cli.config import ModelConfig
    from lpa_cli.models import build_model

    vocab, T, B = 4096, 64, 4
    model = build_model(ModelConfig(arch="gpt", depth=4, width=32, options={"heads": 2}), (T,), vocab, "tokens", "lm")
    batch = Batch(torch.randint(0, vocab, (B, T)), torch.randint(0, vocab, (B, T)))
    sizes = []

    def record(module, args, output):
        sizes.append(output.numel())

    handle = model.head.register_forward_hook(record)
    for mode in ("stacked", "chunked"):
        sizes.clear()
        obj = build_objective(ObjectiveConfig(name="lpa", head_loss=mode), model.num_blocks, "lm")
        obj(model, batch).loss.backward()
        largest = max(sizes)
        if mode == "stacked":
            assert largest == 5 * B * T * vocab
        else:
            assert largest * 4 <= head_loss.CPU_BUDGET // 2  # 16 tokens' logits at a time
    handle.remove()


@pytest.mark.parametrize("kind", ["regression", "classification", "lm"])
def test_vectorised_depth_terms_equal_the_per_depth_loop(kind):
    """`stacked_terms` (one operation for every depth) gives each depth's `loss_sum / loss_count`."""
    from lpa_cli.training.head_loss import stacked_terms
    from lpa_cli.training.task_losses import loss_denominator, loss_sum

    g = torch.Generator().manual_seed(0)
    if kind == "regression":
        preds, y = torch.randn(9, 32, 3, generator=g), torch.randn(32, 3, generator=g)
    elif kind == "classification":
        preds, y = torch.randn(5, 16, 7, generator=g), torch.randint(0, 7, (16,), generator=g)
    else:
        preds, y = torch.randn(3, 4, 6, 11, generator=g), torch.randint(0, 11, (4, 6), generator=g)
        y[0, :2] = -100  # padding counts nowhere
    loop = torch.stack([loss_sum(p, y, kind) / loss_denominator(y, kind) for p in preds])
    torch.testing.assert_close(stacked_terms(preds, y, kind), loop)
