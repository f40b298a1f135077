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
    from lpa_cli.training.chunked_head import chunked_loss as real
    monkeypatch.setattr("lpa_cli.training.objectives.chunked_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    obj(model, batch)
    assert not calls  # 4 depths x 5 x 12 tokens x 32 logits: tiny
    monkeypatch.setattr(head_loss, "CPU_BUDGET", 1024)
    obj(model, batch)
    assert not calls  # the budget is chosen once per objective and device
    build_objective(ObjectiveConfig(name="lpa"), model.num_blocks, kind)(model, batch)
    assert calls


def test_chunked_never_holds_every_depths_logits(monkeypatch):
    """The largest tensor any operation makes during the chunked loss (forward and backward) is a chunk
    of logits, not the (D, B, T, V) stack the stacked path makes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    monkeypatch.setattr(head_loss, "CPU_BUDGET", 512 << 10)
    torch.manual_seed(0)
    from lpa_cli.config import ModelConfig
    from lpa_cli.models import build_model

    vocab, T, B = 4096, 64, 4
    model = build_model(ModelConfig(arch="gpt", depth=4, width=32, options={"heads": 2}), (T,), vocab, "tokens", "lm")
    batch = Batch(torch.randint(0, vocab, (B, T)), torch.randint(0, vocab, (B, T)))

    class Largest(TorchDispatchMode):
        most = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype.is_floating_point:
                    Largest.most = max(Largest.most, t.numel())
            return out

    for mode in ("stacked", "chunked"):
        obj = build_objective(ObjectiveConfig(name="lpa", head_loss=mode), model.num_blocks, "lm")
        obj(model, batch).loss.backward()  # the first call measures a row
        Largest.most = 0
        with Largest():
            obj(model, batch).loss.backward()
        if mode == "stacked":
            assert Largest.most == 5 * B * T * vocab
        else:  # a chunk's logits (16 tokens: half the budget) or the head's weight gradient (vocab x width 32)
            assert Largest.most <= max(head_loss.CPU_BUDGET // 2 // 4, vocab * 32)


@pytest.mark.parametrize("kind", ["regression", "classification", "lm"])
def test_vectorised_depth_terms_equal_the_per_depth_loop(kind):
    """`stacked_terms` (one operation for every depth) gives each depth's `loss_sum / loss_denominator`."""
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


def _lm(depth=4, vocab=512, B=2, T=64, seed=0):
    from lpa_cli.config import ModelConfig
    from lpa_cli.models import build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch="decoder", depth=depth, width=32, zero_init=False, options={"heads": 2, "vocab": vocab}),
                        (T,), vocab, "tokens", "lm")
    g = torch.Generator().manual_seed(seed + 1)
    y = torch.randint(0, vocab, (B, T), generator=g)
    y[0, :5] = -100  # padding counts nowhere
    return model, Batch(torch.randint(0, vocab, (B, T), generator=g), y)


def test_a_chunk_holds_several_depths_in_one_head_call():
    """With room for two depths' logits per chunk, the head runs once per two depths (not once per depth
    and chunk, which is what made exact LPA 7x a hand-written loop on a GPU), with the same losses and
    gradients as the stacked path."""
    model, batch = _lm()  # 5 depths x 128 tokens x 512 logits x 4 bytes = 1.25 MiB stacked
    calls = []  # the rows the head's features read at once (its norm; the fused path applies the projection itself)
    handle = model.head.norm.register_forward_hook(lambda m, a, out: calls.append(out.shape[0]))
    try:
        chunked, g_chunked = _run(model, batch, "lm", {"head_chunk_mb": 1}, "auto")  # chunks of 0.5 MiB: two depths
    finally:
        handle.remove()
    assert calls[-3:] == [256, 256, 128], calls  # 5 depths x 128 rows in chunks of 256 rows (one warm-up read of a row first)
    stacked, g_stacked = _run(model, batch, "lm", {}, "stacked")
    torch.testing.assert_close(chunked.losses, stacked.losses, rtol=1e-5, atol=1e-7)
    for name in g_stacked:
        torch.testing.assert_close(g_chunked[name], g_stacked[name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_budget_comes_from_the_device(monkeypatch):
    from lpa_cli.training.head_loss import GPU_BUDGET_RANGE, head_budget

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert head_budget(0, cpu) == 64 << 20 and head_budget(100, cpu) == 100 << 20 and head_budget(100, gpu) == 100 << 20
    free = {"bytes": 140 << 30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 141 << 30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 2 << 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1 << 30)
    assert head_budget(0, gpu) == GPU_BUDGET_RANGE[1]  # an H200: capped at 4 GiB
    free["bytes"] = 15 << 30  # 16 GiB free with the allocator's cached GiB: a sixteenth
    assert head_budget(0, gpu) == 1 << 30
    free["bytes"] = 0
    assert head_budget(0, gpu) == GPU_BUDGET_RANGE[0]


@pytest.mark.parametrize("settings", [{"name": "e2e"}, {"name": "lpa"}, {"name": "lpa", "head_chunk_mb": 1},
                                      {"name": "lpa", "head_chunk_mb": 1, "align": "kl", "align_mix": 0.5},
                                      {"name": "lpa", "head_chunk_mb": 1, "loss_power": 0.5, "sample_fraction": 0.5},
                                      {"name": "lpa", "head_loss": "sampled:64"}, {"name": "lpa", "head_loss": "sampled:64", "head_chunk_mb": 1}])
def test_the_head_loss_never_reads_back_to_the_host(settings):
    """No `.item()` and no data-dependent shape on the device in a step's loss, forward and backward
    (each one stops a GPU's queue); the sampled loss copies the targets to the host once and draws there."""
    from bench.common import count_ops

    model, batch = _lm()
    obj = build_objective(ObjectiveConfig(**settings), model.num_blocks, "lm")
    gen = torch.Generator().manual_seed(0)
    obj(model, batch, 0, gen).loss.backward()  # the first call measures a row and makes its index tensors
    copies = []
    real_cpu = torch.Tensor.cpu
    try:
        torch.Tensor.cpu = lambda t, *a, **k: copies.append(t.shape) or real_cpu(t, *a, **k)
        ops, reads, _ = count_ops(lambda: obj(model, batch, 1, gen).loss.backward())
    finally:
        torch.Tensor.cpu = real_cpu
    sampled = "sampled" in settings.get("head_loss", "")
    assert copies == ([batch.y.flatten().shape] if sampled else []), copies
    assert reads == (3 if sampled else 0)  # sampled: unique and two nonzero, on the host copy (`sampled_head.draw`)
    assert ops > 50


def test_a_step_with_only_depth_n_under_the_sampled_loss_keeps_to_the_budget():
    """`sampled:K` on a step that reads depth N alone (E2E, or a rotation step) is stacked or chunked as
    `auto` would: above the budget it never stacks."""
    model, batch = _lm()
    sizes = []
    handle = model.head.norm.register_forward_hook(lambda m, a, out: sizes.append(out.numel() // out.shape[-1]))
    try:
        build_objective(ObjectiveConfig(name="e2e", head_loss="sampled:64", head_chunk_mb=1), model.num_blocks, "lm")(model, batch)
    finally:
        handle.remove()
    # 128 tokens x 512 logits = 256 KiB: fits 1 MiB, one read of every token (after the one-row measurement)
    assert sizes[-1] == 128
    model2, batch2 = _lm(B=8, T=128)  # 1,024 tokens x 512 logits = 2 MiB: chunks of 256 tokens
    sizes.clear()
    handle = model2.head.norm.register_forward_hook(lambda m, a, out: sizes.append(out.numel() // out.shape[-1]))
    try:
        build_objective(ObjectiveConfig(name="e2e", head_loss="sampled:64", head_chunk_mb=1), model2.num_blocks, "lm")(model2, batch2)
    finally:
        handle.remove()
    assert max(sizes) == 256, sizes
