"""`lpa train` against a minimal hand-written PyTorch loop training the same model with the same
objective on the same batches: samples per second, side by side. Target: >= 0.9x.

    python bench/train_throughput.py [--quick]
"""

from __future__ import annotations

import time

import torch
from common import quick_args, setup, summary

from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
from lpa_cli.models import build_model
from lpa_cli.data.tasks import load_task
from lpa_cli.training.trainer import train


def hand_written(cfg: RunConfig, task) -> float:
    """The loop a user would write: same model, batches, objective terms and optimiser."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, task.in_shape, task.out_dim, task.input_kind, task.kind)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    x_train, y_train = task.train.tensors()
    n, b = x_train.shape[0], cfg.train.batch_size
    t = time.perf_counter()
    for step in range(cfg.train.steps):
        idx = torch.randint(0, n, (b,))
        x, y = x_train[idx], y_train[idx]
        preds = model.predictions(x)
        loss = sum(torch.nn.functional.mse_loss(p, y) for p in preds) / len(preds)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return cfg.train.steps * b / (time.perf_counter() - t)


def main() -> None:
    quick = quick_args(__doc__)
    setup()
    steps = 200 if quick else 1500
    cfg = RunConfig(ModelConfig(depth=8, width=64), TaskConfig(), ObjectiveConfig(name="lpa"), TrainConfig(steps=steps, batch_size=512, threads=2))
    task = load_task(cfg.task)
    rates = {"lpa": [], "hand": []}
    for _ in range(3):  # interleaved repeats
        r = train(cfg, task=task)
        rates["lpa"].append(steps * 512 / r.training["seconds"])
        rates["hand"].append(hand_written(cfg, task))
    lpa, hand = max(rates["lpa"]), max(rates["hand"])
    print(f"lpa train: {lpa:,.0f} samples/s (includes the final per-depth evaluation); hand-written loop: {hand:,.0f} samples/s")
    summary("train_throughput", lpa / hand, "target >= 0.9", lpa / hand >= 0.9)


if __name__ == "__main__":
    main()
