
import pytest
import torch

from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
from lpa_cli.training.trainer import batch_indices, learning_rate, train
from tests.conftest import tiny_run


def _stripe(objective: str) -> RunConfig:
    # Small but real: enough for LPA's curve to fall with depth on the paper's stripe surface.
    return RunConfig(
        model=ModelConfig(depth=4, width=64),
        task=TaskConfig(name="surface:stripe", n_train=2048, n_test=1024),
        objective=ObjectiveConfig(name=objective),
        train=TrainConfig(steps=400, batch_size=256, lr=5e-3, threads=2, seed=0),
    )


@pytest.fixture(scope="module")
def stripe_runs():
    return {name: train(_stripe(name)) for name in ("lpa", "e2e")}


def test_lpa_error_falls_with_depth_on_the_stripe(stripe_runs):
    mse = stripe_runs["lpa"].metrics["mse"]
    r2 = stripe_runs["lpa"].metrics["r2"]
    assert mse[-1] < 0.05 * mse[0]
    assert r2[-1] > 0.95
    # falls from depth 0 to N: no depth is worse than an earlier one beyond 5% of the total descent
    slack = 0.05 * (mse[0] - mse[-1])
    assert all(mse[k + 1] <= mse[k] + slack for k in range(len(mse) - 1))


def test_lpa_final_error_within_a_factor_of_e2e(stripe_runs):
    # Stated factor: at this small budget LPA's depth-N MSE is within 3x of E2E's.
    assert stripe_runs["lpa"].metrics["mse"][-1] <= 3.0 * stripe_runs["e2e"].metrics["mse"][-1]
    # ... while E2E's intermediate depths are far worse than LPA's (the paper's contrast)
    assert stripe_runs["e2e"].metrics["mse"][1] > 2 * stripe_runs["lpa"].metrics["mse"][1]


def test_same_seed_gives_identical_tensors_and_different_seed_does_not():
    a = train(tiny_run(steps=20)).model.state_dict()
    b = train(tiny_run(steps=20)).model.state_dict()
    c = train(tiny_run(steps=20, seed=1)).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_batches_are_seeded_epochs_without_replacement():
    n, b = 100, 20
    seen = torch.cat([batch_indices(n, b, seed=0, step=s) for s in range(5)])
    assert sorted(seen.tolist()) == list(range(n))  # one epoch covers every sample once
    assert torch.equal(batch_indices(n, b, 0, 7), batch_indices(n, b, 0, 7))
    assert batch_indices(n, 0, 0, 3) is None and batch_indices(n, 500, 0, 3) is None


def test_cosine_schedule_with_warmup():
    cfg = tiny_run(steps=100, lr=1.0)
    assert learning_rate(cfg, 0) == pytest.approx(1.0)
    assert learning_rate(cfg, 50) == pytest.approx(0.5)
    assert learning_rate(cfg, 100) == pytest.approx(0.0, abs=1e-12)
    cfg = RunConfig(train=TrainConfig(steps=100, lr=1.0, warmup=10))
    assert learning_rate(cfg, 4) == pytest.approx(0.5)


def test_every_objective_lowers_the_loss():
    for name in ("e2e", "lpa", "lpa-local"):
        before = train(tiny_run(name, steps=0)).metrics["mse"][-1]
        after = train(tiny_run(name, steps=60)).metrics["mse"][-1]
        assert after < before, name
