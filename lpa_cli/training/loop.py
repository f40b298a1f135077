"""The training loop: one optimisation step after another (micro-batches, gradient scaling, clipping),
with progress, logged training curves, evaluations and resume snapshots along the way. A loss that
stops being finite ends the run with nothing written."""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lpa_core.depths import spans
from lpa_core.errors import LpaError
from lpa_cli.config import RunConfig
from lpa_cli.data.batch import Batch
from lpa_cli.training.distributed import World, full_model_state, full_optimizer_state
from lpa_cli.training.evaluate import autocast, evaluate
from lpa_cli.training.objectives import LossOutput
from lpa_cli.training.setup import Run, batches, set_rates
from lpa_cli.training.snapshot import save_snapshot
from lpa_cli.training.trackers import Callbacks


log = logging.getLogger(__name__)


class TrainingError(LpaError):
    """Training cannot go on (the loss diverged); nothing was written."""


class LossWatch:
    """Whether a run learned anything: its first and last ten step losses, and the final depth's test
    metrics against a constant predictor (judged once, at the end)."""

    def __init__(self) -> None:
        self.first: list[float] = []
        self.last: collections.deque = collections.deque(maxlen=10)
        self.first_per_depth: dict[int, float] = {}

    def follow_depths(self, step: int, steps: int, per_depth: dict) -> None:
        """Each depth's first loss, then at the run's midpoint a warning (in the log and on stderr) naming
        the depths whose loss has not moved from it: two reads of the losses a run, not one a step."""
        if step == 1 or (not self.first_per_depth and per_depth):
            self.first_per_depth = {k: float(v) for k, v in per_depth.items()}
        elif step == steps // 2 and steps >= MIN_STEPS_TO_FOLLOW:
            stuck = stuck_depths(self.first_per_depth, {k: float(v) for k, v in per_depth.items()})
            if stuck and max(self.first_per_depth) not in stuck:  # the model learns (its deepest depth moved), these depths do not
                log.warning("step %d of %d: the loss of %s has not moved from its first value (within %.0f%%): likely never to "
                            "leave chance", step, steps, spans(stuck), 100 * STUCK)

    def add(self, loss: float) -> None:
        if len(self.first) < 10:
            self.first.append(loss)
        self.last.append(loss)

    def judge(self, metrics: dict[str, list[float]], task, lr: float = 0.0, pretrained: bool = False) -> list[str]:
        out = []
        if len(self.first) >= 10 and len(self.last) == 10:
            a, b = sum(self.first) / 10, sum(self.last) / 10
            if b >= 0.99 * a:
                hint = ""  # a rate hint only where the rate is off the usual range for what is trained
                if pretrained and not 1e-5 <= lr <= 3e-4:
                    hint = f"; fine-tuning a pretrained model usually runs at 1e-5 to 3e-4 (this run: {lr:g})"
                out.append(f"the training loss did not fall ({a:.4g} over the first ten steps, {b:.4g} over the last ten): "
                           f"check the data and --lr{hint}")
        r2, ce = metrics.get("r2"), metrics.get("ce")
        if task.kind == "regression" and r2 and r2[-1] is not None and r2[-1] <= 0.01:
            out.append(f"the final depth's R^2 is {r2[-1]:.3g}: no better than predicting the mean")
        if task.kind == "classification" and ce and ce[-1] is not None and ce[-1] >= 0.98 * math.log(task.out_dim):
            out.append(f"the final depth's cross-entropy is {ce[-1]:.4g}, chance level for {task.out_dim} classes (ln {task.out_dim} = "
                       f"{math.log(task.out_dim):.4g}): the model learned nothing")
        if not out:  # the model learned: say which depths did not (LPA's promise is a model at every depth)
            out.extend(never_learned(metrics, task))
        return out


def chance_depths(metrics: dict[str, list[float]], task) -> tuple[list[int], str]:
    """(the depths that never left chance on the test split, the baseline in words): for classification
    an accuracy no better than always answering the majority class, for regression an R^2 of at most
    0.01 (`lpa monotonicity` tests the same against the constant predictor's leave-one-out error)."""
    depths = list(range(len(metrics.get("r2") or metrics.get("acc") or [])))  # evaluated at every depth 0..N
    if task.kind == "regression" and metrics.get("r2"):
        return [d for d, r in zip(depths, metrics["r2"]) if r is not None and r <= 0.01], "predicting the mean (R^2 <= 0.01)"
    if task.kind == "classification" and metrics.get("acc") and isinstance(getattr(task.test, "y", None), torch.Tensor):
        y = task.test.y
        majority = float(torch.bincount(y.flatten().clamp_min(0)).max()) / max(1, y.numel())
        return ([d for d, a in zip(depths, metrics["acc"]) if a is not None and a <= majority + 1e-9],
                f"always answering the majority class ({majority:.3g})")
    return [], ""


def never_learned(metrics: dict[str, list[float]], task) -> list[str]:
    """A warning naming the depths that never left chance (`chance_depths`)."""
    never, baseline = chance_depths(metrics, task)
    return [f"{spans(never)} never left chance: no better than {baseline} on the test split"] if never else []


STUCK = 0.02  # a depth whose loss is within this fraction of its first value at the midpoint has not moved
MIN_STEPS_TO_FOLLOW = 20  # shorter runs (smoke tests) are too short to say


def stuck_depths(first: dict[int, float], now: dict[int, float]) -> list[int]:
    """The depths whose loss ``now`` is within `STUCK` of its ``first`` value (and that learned, then, nothing)."""
    return sorted(k for k, v in now.items() if k in first and abs(v - first[k]) <= STUCK * abs(first[k]))


@dataclass
class Loop:
    """What the loop leaves for the finish."""

    last_loss: float | None = None
    elapsed: float = 0.0
    watch: LossWatch = field(default_factory=LossWatch)


def run_steps(run: Run, callbacks: Callbacks, snapshot_every: int) -> Loop:
    """Steps ``run.start`` .. ``steps``, then the callbacks' ``on_end``."""
    t = run.cfg.train
    run.model.train()
    getattr(callbacks, "on_plan", lambda plan: None)(run.plan())
    callbacks.on_start(t.steps, run.start)
    on_progress = getattr(callbacks, "on_progress", lambda step, loss, per_depth: None)  # callbacks written before 0.3 lack it
    loop = Loop()
    began = time.perf_counter()
    log_every = max(1, t.steps // 100)
    for step, batch in zip(range(run.start, t.steps), batches(run.task.train, run.cfg, run.start, run.world, run.device.type == "cuda")):
        lr, loss, out = _one_step(run, step, batch)
        loop.last_loss = loss
        done = step + 1
        callbacks.on_step(done, loss if done % 10 == 0 or done == t.steps else None)
        on_progress(done, loss, out.per_depth)
        loop.watch.add(loss)
        loop.watch.follow_depths(done, t.steps, out.per_depth)
        if done == t.steps:
            continue
        evaluating = bool(t.eval_every) and done % t.eval_every == 0
        if run.world.main and done % log_every == 0 and not evaluating:
            _record(run, done, lr, loss, out, {}, time.perf_counter() - began)  # the log's training curve between evaluations
        if evaluating:
            metrics = evaluate_run(run)
            if run.world.main:
                _record(run, done, lr, loss, out, metrics, time.perf_counter() - began)
                callbacks.on_eval(done, metrics)
        if run.snap is not None and snapshot_every and done % snapshot_every == 0:
            snapshot(run.snap, run, done)
    callbacks.on_end()
    loop.elapsed = time.perf_counter() - began
    return loop


def _one_step(run: Run, step: int, batch: Batch) -> tuple[float, float, LossOutput]:
    """(learning rate, loss, loss output) of one optimisation step, taken."""
    t, opt, scaler = run.cfg.train, run.opt, run.scaler
    lr = set_rates(run.cfg, opt, step)
    opt.zero_grad(set_to_none=True)
    out, run.runner = _step(run.runner, run.step_module, batch, step, run.depth_gen, run.device, run.cfg, scaler, run.world, run.fsdp)
    loss = float(out.loss)
    if not math.isfinite(loss):
        output = run.output
        kept = f"{output} is unchanged" if output is not None and output.exists() else "no checkpoint was written"
        raise TrainingError(f"training diverged at step {step + 1}: the loss is {loss} (lower --lr, try --clip-grad 1, "
                            f"or check the data); {kept}")
    if scaler is not None:
        scaler.unscale_(opt)
    if t.grad_clip > 0:
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], t.grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return lr, loss, out


def _record(run: Run, step: int, lr: float, loss: float, out: LossOutput, metrics: dict, seconds: float) -> None:
    per_depth = {k: float(v) for k, v in out.per_depth.items()}
    for tr in run.trackers:
        tr.record(step, lr, loss, per_depth, metrics, seconds)


def _step(runner, step_module, batch: Batch, step: int, depth_gen, device, cfg: RunConfig, scaler, world: World, fsdp: bool):
    """One optimisation step's forward and backward passes (several micro-batches with --grad-accum).

    Every micro-batch uses the same depth plan: the depth generator is rewound before each."""
    t = cfg.train
    parts = batch.split(t.grad_accum) if t.grad_accum > 1 else [batch]
    gen_state = depth_gen.get_state()
    total = None
    losses = []
    for i, part in enumerate(parts):
        depth_gen.set_state(gen_state)
        last = i == len(parts) - 1
        sync = contextlib.nullcontext()
        if not last and world.size > 1:
            if fsdp:
                step_module.set_requires_gradient_sync(False)
            else:
                sync = step_module.no_sync()
        elif last and fsdp and len(parts) > 1:
            step_module.set_requires_gradient_sync(True)
        with sync:
            with autocast(device, t.precision):
                out, runner = _forward(runner, step_module, part.to(device, non_blocking=True), step, depth_gen)
            share = len(part) / len(batch)
            scaled = out.loss * share
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total = scaled.detach() if total is None else total + scaled.detach()
        losses.append(out.losses * share)
    return LossOutput(total, out.depths, torch.stack(losses).sum(0)), runner


def _forward(runner, step_module, batch: Batch, step: int, depth_gen):
    """The loss of one batch; a compiled module that fails on first use falls back to eager, once."""
    if runner is step_module:
        return step_module(batch, step, depth_gen), runner
    try:
        return runner(batch, step, depth_gen), runner
    except Exception as err:  # noqa: BLE001 - compilation errors surface at the first call, with many types
        if isinstance(err, LpaError):
            raise
        warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); training without it", stacklevel=2)
        return step_module(batch, step, depth_gen), step_module


def evaluate_run(run: Run) -> dict[str, list[float]]:
    """Test metrics per depth. Under FSDP every rank evaluates, with the root's parameters gathered."""
    t = run.cfg.train
    if run.fsdp:
        run.step_module.unshard()
    try:
        return evaluate(run.model, run.task.test, run.task.kind, samples=t.eval_samples, precision=t.precision)
    finally:
        if run.fsdp:
            run.step_module.reshard()


def snapshot(path: Path, run: Run, step: int) -> None:
    cfg, world, fsdp = run.cfg, run.world, run.fsdp
    holder = run.step_module if fsdp else run.model
    model_state = full_model_state(holder, cfg.train.parallel, world)
    opt_state = full_optimizer_state(holder, run.opt, cfg.train.parallel, world)
    if fsdp:
        model_state = {k.removeprefix("model."): v for k, v in model_state.items()}
    if world.main:
        save_snapshot(path, cfg, step, model_state, opt_state, run.depth_gen, run.scaler.state_dict() if run.scaler is not None else None)
    world.barrier()
