"""Training every registered architecture on its kind of task, through the one trainer."""

import pytest

from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
from lpa_cli.training.evaluate import evaluate
from lpa_cli.registry import ARCHITECTURES
from lpa_cli.data.tasks import load_task
from lpa_cli.training.trainer import train
from tests.conftest import small_options, task_kind

MAIN_METRIC = {"regression": "mse", "classification": "ce", "lm": "ce"}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """A small text-classification file (two kinds of sentence)."""
    path = tmp_path_factory.mktemp("texts") / "texts.csv"
    rows = ["text,label"] + [f"{'the sun is warm and bright' if i % 2 else 'the rain is cold and grey'} {i},{i % 2}" for i in range(96)]
    path.write_text("\n".join(rows))
    return path


def cheapest_task(arch: str, texts) -> TaskConfig:
    """The cheapest built-in task for an architecture's first input and task kinds."""
    input_kind, kind = ARCHITECTURES[arch].input_kinds[0], task_kind(arch)
    if input_kind == "vector":
        return TaskConfig(name="surface:ripple", n_train=256, n_test=64)
    if input_kind == "image":
        return TaskConfig(name="shapes", n_train=256, n_test=64, options={"size": 8})
    if kind == "lm":
        return TaskConfig(name="text", n_train=64, n_test=16, options={"context": 16})
    return TaskConfig(name=f"classify:{texts}", options={"context": 32})


def _cfg(arch: str, objective: str, steps: int, texts) -> RunConfig:
    options = {k: v for k, v in small_options(arch).items() if k != "vocab"}  # the task's tokenizer sets it
    return RunConfig(
        model=ModelConfig(arch=arch, depth=2, width=16, options=options),
        task=cheapest_task(arch, texts),
        objective=ObjectiveConfig(name=objective),
        train=TrainConfig(steps=steps, batch_size=32, lr=3e-3, threads=1),
    )


@pytest.mark.parametrize("objective", ["e2e", "lpa", "lpa-local"])
def test_short_seeded_run_lowers_the_loss(arch, objective, texts):
    cfg = _cfg(arch, objective, 30, texts)
    task = load_task(cfg.task)
    before = train(_cfg(arch, objective, 0, texts), task=task).model
    after = train(cfg, task=task).model
    metric = MAIN_METRIC[task.kind]
    loss_before = evaluate(before, task.train, task.kind)[metric]
    loss_after = evaluate(after, task.train, task.kind)[metric]
    assert len(loss_after) == 3
    assert loss_after[-1] < loss_before[-1]


@pytest.mark.parametrize("weights,lam", [("linear", None), ("sqrt", None), ("inv", None), ("uniform", 0.1)])
def test_every_weighting_trains(arch, weights, lam, texts):
    cfg = _cfg(arch, "lpa", 5, texts)
    cfg = RunConfig(cfg.model, cfg.task, ObjectiveConfig(name="lpa", weights=weights, lpa_lambda=lam), cfg.train)
    result = train(cfg)
    assert result.training["final_loss"] is not None


def test_digits_lpa_accuracy_rises_with_depth():
    cfg = RunConfig(
        model=ModelConfig(arch="resnet", depth=3, width=16),
        task=TaskConfig(name="digits"),
        objective=ObjectiveConfig(name="lpa"),
        train=TrainConfig(steps=300, batch_size=64, lr=3e-3, threads=2),
    )
    acc = train(cfg).metrics["acc"]
    assert acc[-1] > 0.85
    assert acc[1] > acc[0] + 0.4
    assert all(acc[k + 1] >= acc[k] - 0.02 for k in range(len(acc) - 1))
