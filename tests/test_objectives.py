import math

import pytest
import torch

from lpa_cli.config import ModelConfig, ObjectiveConfig
import torch.nn.functional as F
from lpa_cli.models import build_model
from lpa_cli.data.batch import Batch
from lpa_cli.training.objectives import build_objective as Objective, depth_weights
from tests.conftest import tiny_model


def reference_loss(pred, y, kind):
    """The mean loss, written with torch's own functions (independent of lpa's loss code)."""
    if kind == "regression":
        return F.mse_loss(pred, y)
    return F.cross_entropy(pred.reshape(-1, pred.shape[-1]), y.reshape(-1))


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


def test_e2e_is_the_depth_n_loss_and_trains_every_parameter(arch):
    model, batch, kind = tiny_model(arch)
    obj = Objective(ObjectiveConfig(name="e2e"), model.num_blocks, kind)
    out = obj(model, batch)
    torch.testing.assert_close(out.loss, reference_loss(model(batch.x, batch.mask), batch.y, kind))
    assert list(out.per_depth) == [model.num_blocks]
    grads = _grads(model, out.loss)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_lpa_with_only_depth_n_equals_e2e(arch):
    model, batch, kind = tiny_model(arch)
    e2e = Objective(ObjectiveConfig(name="e2e"), model.num_blocks, kind)
    lpa = Objective(ObjectiveConfig(name="lpa", depths=str(model.num_blocks)), model.num_blocks, kind)
    a, b = e2e(model, batch), lpa(model, batch)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)
    ga, gb = _grads(model, a.loss), _grads(model, b.loss)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=0, atol=0)


def test_lpa_is_the_weighted_sum_of_per_depth_losses(arch):
    model, batch, kind = tiny_model(arch)
    obj = Objective(ObjectiveConfig(name="lpa", weights="linear"), model.num_blocks, kind)
    out = obj(model, batch)
    preds = model.predictions(batch.x, attention_mask=batch.mask)
    weights = [k + 1 for k in range(model.num_depths)]
    expected = sum(w * reference_loss(p, batch.y, kind) for w, p in zip(weights, preds)) / sum(weights)
    torch.testing.assert_close(out.loss, expected)


def test_lpa_local_sends_no_gradient_from_depth_k_into_earlier_blocks(arch):
    model, batch, kind = tiny_model(arch, depth=3)
    for k in range(1, model.num_depths):
        local = Objective(ObjectiveConfig(name="lpa-local", depths=str(k)), model.num_blocks, kind)
        grads = _grads(model, local(model, batch).loss)
        for j in range(model.num_blocks):
            block = [g for n, g in grads.items() if n.startswith(f"blocks.{j}.")]
            got = any(g is not None and g.abs().sum() > 0 for g in block)
            assert got == (j == k - 1), f"depth {k} term, block {j}"
        # the embedding gets nothing either, except a matrix it shares with the head (tied GPT embeddings)
        head_ids = {id(p) for p in model.head.parameters()}
        params = dict(model.named_parameters())
        embed_only = [n for n in grads if n.startswith("embed.") and id(params[n]) not in head_ids]
        assert embed_only and all(grads[n] is None or grads[n].abs().sum() == 0 for n in embed_only)
        # plain lpa on the same depth does reach the earlier blocks (so this test can fail)
        plain = Objective(ObjectiveConfig(name="lpa", depths=str(k)), model.num_blocks, kind)
        grads = _grads(model, plain(model, batch).loss)
        assert all(any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(f"blocks.{j}.")) for j in range(k))


def test_lpa_local_has_the_same_loss_value_as_lpa(arch):
    model, batch, kind = tiny_model(arch)
    a = Objective(ObjectiveConfig(name="lpa"), model.num_blocks, kind)(model, batch)
    b = Objective(ObjectiveConfig(name="lpa-local"), model.num_blocks, kind)(model, batch)
    torch.testing.assert_close(a.loss, b.loss)


@pytest.mark.parametrize(
    "scheme,raw",
    [
        ("uniform", lambda k: 1.0),
        ("linear", lambda k: k + 1.0),
        ("sqrt", lambda k: math.sqrt(k + 1)),
        ("inv", lambda k: 1.0 / (k + 1)),
    ],
)
def test_weight_schemes_are_normalised(scheme, raw):
    depths = [0, 2, 4, 8]
    w = depth_weights(depths, scheme, None, 8)
    total = sum(raw(k) for k in depths)
    assert w == pytest.approx([raw(k) / total for k in depths])
    assert sum(w) == pytest.approx(1.0)


def test_lambda_form_weights_task_loss_one_and_others_lambda():
    w = depth_weights([1, 2, 3, 4], "uniform", 0.1, 4)
    assert w == pytest.approx([0.1 / 1.3, 0.1 / 1.3, 0.1 / 1.3, 1 / 1.3])
    obj = Objective(ObjectiveConfig(name="lpa", lpa_lambda=0.5, depths="0:2"), 4, "regression")
    assert obj.depths == [0, 1, 4]  # depth N is always part of the lambda form


def test_depth_sampling_keeps_depth_n_and_is_seeded():
    obj = Objective(ObjectiveConfig(name="lpa", sample_depths=3), 8, "regression")
    picks = [obj.plan(0, torch.Generator().manual_seed(s)) for s in range(20)]
    for depths, weights in picks:
        assert len(depths) == 3 and depths[-1] == 8 and sum(weights) == pytest.approx(1.0)
    assert len({tuple(d) for d, _ in picks}) > 1
    again = [obj.plan(0, torch.Generator().manual_seed(s)) for s in range(20)]
    assert picks == again


@pytest.mark.parametrize("power", [0.0, 0.5, 0.25])
def test_loss_power_has_the_gradient_of_the_powered_sum(power):
    """Reference: autograd through sum_k w_k L_k^p (sum_k w_k log L_k at p = 0), written out directly."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", depth=3, width=8, zero_init=False), (2,), 1)
    x = torch.randn(32, 2)
    with torch.no_grad():  # a target close to depth N's output: the per-depth losses differ a lot
        y = model(x) + 0.01 * torch.randn(32, 1)
    obj = Objective(ObjectiveConfig(name="lpa", weights="linear", loss_power=power), 3, "regression")
    out = obj(model, Batch(x, y))
    got = torch.autograd.grad(out.loss, list(model.parameters()))
    losses = torch.stack([((p - y) ** 2).mean() for p in model.predictions(x)])
    w = torch.tensor(obj.weights)
    plain = (w * losses).sum()
    assert out.loss.item() == pytest.approx(plain.item(), rel=1e-6)  # the logged value stays the plain weighted loss
    reference = (w * (losses.log() if power == 0 else losses**power / power)).sum()
    ref = torch.autograd.grad(reference, list(model.parameters()), retain_graph=True)
    # equal up to one positive factor common to all parameters (Adam is indifferent to it)
    flat_got, flat_ref = torch.cat([g.ravel() for g in got]), torch.cat([g.ravel() for g in ref])
    scale = (flat_got @ flat_ref) / (flat_ref @ flat_ref)
    assert scale > 0
    assert torch.allclose(flat_got, scale * flat_ref, rtol=1e-4, atol=1e-7)
    flat_plain = torch.cat([g.ravel() for g in torch.autograd.grad(plain, list(model.parameters()))])
    cosine = (flat_got @ flat_plain) / (flat_got.norm() * flat_plain.norm())
    assert cosine < 0.999  # a different direction from the plain sum's, not just a rescaled one


def test_sample_fraction_uses_part_of_the_batch_for_shallower_depths_only(arch):
    model, batch, kind = tiny_model(arch)
    obj = Objective(ObjectiveConfig(name="lpa", sample_fraction=0.5), model.num_blocks, kind)
    out = obj(model, batch)
    n = len(batch)
    part = math.ceil(0.5 * n)
    assert part < n
    with torch.no_grad():
        preds = model.predictions(batch.x, attention_mask=batch.mask)
        for k in range(model.num_blocks):  # reference: each depth's own loss on the first half
            assert out.per_depth[k].item() == pytest.approx(reference_loss(preds[k][:part], batch.y[:part], kind).item(), rel=1e-5)
        assert out.per_depth[model.num_blocks].item() == pytest.approx(reference_loss(preds[-1], batch.y, kind).item(), rel=1e-5)
    grads = _grads(model, out.loss)
    assert all(g is not None for g in grads.values())


def test_rotation_gives_each_depth_its_loss_once_every_period():
    from lpa_cli.config import ObjectiveConfig
    from lpa_cli.training.objectives import build_objective

    o = build_objective(ObjectiveConfig(name="lpa", depth_schedule="rotation:3"), 6, "regression")
    plans = [o.plan(s, None)[0] for s in range(9)]
    assert all(p[-1] == 6 for p in plans)  # depth N every step
    for k in range(6):
        hits = [s for s, p in enumerate(plans) if k in p]
        assert len(hits) == 3 and all(b - a == 3 for a, b in zip(hits, hits[1:]))
    depths, weights = o.plan(4, None)
    assert sum(weights) == pytest.approx(1) and len(weights) == len(depths)
    assert plans == [o.plan(s, torch.Generator().manual_seed(s)) [0] for s in range(9)]  # a pure function of the step


def test_curriculum_switches_depths_on_from_the_top_down():
    from lpa_cli.config import ObjectiveConfig
    from lpa_cli.training.objectives import build_objective

    o = build_objective(ObjectiveConfig(name="lpa", depth_schedule="curriculum:2"), 4, "regression")
    assert [o.plan(s, None)[0] for s in (0, 1, 2, 4, 6, 8, 50)] == [[4], [4], [3, 4], [2, 3, 4], [1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("value", ["rotation:0", "rotation", "curriculum:-1", "cyclic:3", "rotation:x"])
def test_bad_depth_schedules_name_the_option(value, tmp_path):
    from tests.cli_helpers import TINY_TRAIN, assert_clean_error, run

    assert_clean_error(run("train", *TINY_TRAIN, "--depth-schedule", value, "-o", tmp_path / "m.safetensors"), "--depth-schedule")
    assert_clean_error(run("train", *TINY_TRAIN, "--depth-schedule", "rotation:2", "--sample-depths", "3", "-o", tmp_path / "m.safetensors"),
                       "--sample-depths")


def test_resume_mid_rotation_is_exact(tmp_path):
    """Interrupted at step 9 of a rotation (a snapshot at 6), resumed: the uninterrupted run's tensors."""
    from lpa_cli.models.open import load_checkpoint
    from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
    from tests.cli_helpers import assert_resume_is_exact

    cfg = RunConfig(ModelConfig(depth=4, width=16), TaskConfig(n_train=256, n_test=32), ObjectiveConfig(name="lpa", depth_schedule="rotation:3"),
                    TrainConfig(steps=12, batch_size=32, threads=1))
    out = assert_resume_is_exact(cfg, tmp_path)
    assert load_checkpoint(out).config.objective.depth_schedule == "rotation:3"
