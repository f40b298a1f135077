"""The one trainer. It knows the `ResidualModel` protocol, an `Objective` and a `Task` — nothing
about architectures.

Reproducibility and resume: the batch of step s is a pure function of (seed, s), the learning rate
is a pure function of s, and snapshots hold weights, optimiser state, the RNG states, the gradient
scaler and the step. So a run killed at any point and resumed from its last snapshot ends with the
same tensors as an uninterrupted one. Distributed runs (torchrun; `lpa_cli.distributed`) split each
global batch across ranks; only rank 0 writes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from analyzers.atomic import check_writable, output_lock
from analyzers.errors import LpaError, UsageError
from analyzers.metrics import finite
from lpa_cli import __version__
from lpa_cli.batch import Batch
from lpa_cli.checkpoint import save_checkpoint
from lpa_cli.config import RunConfig
from lpa_cli.distributed import World, full_model_state, full_optimizer_state, is_main_process, join, load_full_state, wrap
from lpa_cli.evaluate import autocast, evaluate
from lpa_cli.models import ResidualModel, count_parameters
from lpa_cli.objectives import LossOutput, Objective, build_objective
from lpa_cli.runtime import resolve_device, restored_process_state, seed_everything, set_threads
from lpa_cli.snapshot import load_snapshot, restore_rng, save_snapshot, snapshot_path
from lpa_cli.tasks import Task, load_task
from lpa_cli.tasks.splits import Split, batch_indices
from lpa_cli.trackers import Callbacks, Tracker, make_trackers

log = logging.getLogger(__name__)

__all__ = ["Callbacks", "TrainResult", "TrainingError", "batch_indices", "is_main_process", "learning_rate", "train"]


class TrainingError(LpaError):
    """Training cannot go on (the loss diverged); nothing was written."""


@dataclass
class TrainResult:
    path: Path | None
    config: RunConfig
    task: dict[str, Any]
    metrics: dict[str, list[float]]
    training: dict[str, Any]
    sha256: str
    model: ResidualModel = field(repr=False)


def learning_rate(cfg: RunConfig, step: int) -> float:
    t = cfg.train
    if t.warmup and step < t.warmup:
        return t.lr * (step + 1) / t.warmup
    if t.schedule == "constant" or t.steps <= t.warmup:
        return t.lr
    progress = min(1.0, (step - t.warmup) / max(1, t.steps - t.warmup))
    if t.schedule == "linear":
        return t.lr * (1.0 - progress)
    return t.lr * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(cfg: RunConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    if not params:
        raise UsageError("nothing to train: every parameter is frozen (check --train-only)")
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)


class _LossModule(nn.Module):
    """Wraps model + objective so DDP/FSDP and torch.compile see the whole loss in one forward()."""

    def __init__(self, model: ResidualModel, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Batch, step: int, generator: torch.Generator | None) -> LossOutput:
        return self.objective(self.model, batch, step, generator)


class _StepBatches(torch.utils.data.Dataset):
    """Item s is this rank's share of step s's batch, so worker processes can gather ahead."""

    def __init__(self, split: Split, batch_size: int, seed: int, world: World) -> None:
        self.split, self.batch_size, self.seed, self.world = split, batch_size, seed, world
        self.mode = split.draw_rows()

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, step: int) -> Batch:
        n = len(self.split)
        idx = batch_indices(n, self.batch_size, self.seed, step, self.mode)
        if self.world.size > 1:
            idx = (torch.arange(n) if idx is None else idx)[self.world.rank :: self.world.size]
        return self.split.rows(0, n) if idx is None else self.split.batch(idx)


def _batches(split: Split, cfg: RunConfig, start: int, world: World, pin: bool) -> Iterator[Batch]:
    t = cfg.train
    data = _StepBatches(split, t.batch_size, t.seed, world)
    if t.workers == 0:
        return (data[s] for s in range(start, t.steps))
    loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start, t.steps), num_workers=t.workers,
                                         prefetch_factor=4, pin_memory=pin, persistent_workers=False)
    return iter(loader)


def _check_outputs(output: Path, cfg: RunConfig, force: bool, resume: bool) -> None:
    """The checkpoint goes to a .safetensors file that is none of the run's inputs; its log may be
    replaced only with --force (or continued with --resume)."""
    if output.suffix != ".safetensors":
        raise UsageError(f"{output}: checkpoints are .safetensors files (its log, snapshot and lock sit beside it under other suffixes)")
    inputs = [cfg.model.init, cfg.task.name.partition(":")[2]]
    for p in inputs:
        if p and Path(p).exists() and Path(p).resolve() == output.resolve():
            raise UsageError(f"{output}: the output is one of the run's inputs; choose another -o")
    check_writable(output, force=force or resume)
    jsonl = output.with_suffix(".jsonl")
    if jsonl.exists() and not (force or resume) and "jsonl" in cfg.train.log:
        raise UsageError(f"{jsonl}: a log of an earlier run is in the way (use --force to replace it)")
    snap = snapshot_path(output)
    if snap.exists() and not resume and not force:
        raise UsageError(f"{snap}: an interrupted run left this snapshot; use --resume to continue it or --force to start over")


def _with_model_description(cfg: RunConfig, model: ResidualModel) -> RunConfig:
    """The config a checkpoint records: the real number of blocks of a ready-made model."""
    if model.num_blocks != cfg.model.depth:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=model.num_blocks))
    return cfg


def train(
    cfg: RunConfig,
    output: str | Path | None = None,
    *,
    model: ResidualModel | None = None,
    task: Task | None = None,
    force: bool = False,
    resume: bool = False,
    snapshot_every: int = 500,
    callbacks: Callbacks | None = None,
    trust_factory: bool = False,
) -> TrainResult:
    """Train ``cfg`` and (when ``output`` is given) save a self-describing checkpoint there.

    ``model``: a ready `ResidualModel` to train instead of building one from ``cfg.model`` (its
    checkpoint then loads with ``load_checkpoint(path, model=...)`` unless ``cfg.model`` builds the
    same model, e.g. through ``cfg.model.factory``). ``task``: data already loaded. The process's
    torch thread count and RNG states are restored when training ends. ``trust_factory``: with
    ``cfg.model.init`` an lpa checkpoint whose model a factory builds, use the factory it names even
    when ``cfg.model.factory`` does not name the same one (`lpa_cli.models.factory`).
    """
    if snapshot_every < 0:
        raise UsageError(f"--snapshot-every must be >= 0, got {snapshot_every}")
    from lpa_cli.finetune import resolve_init

    cfg = resolve_init(cfg, trust_factory)
    world = join()
    output = Path(output) if output is not None else None
    lock = contextlib.nullcontext()
    if output is not None and world.main:
        _check_outputs(output, cfg, force, resume)
        lock = output_lock(output)
    try:
        with lock, restored_process_state():
            return _train(cfg, output, model, task, force, resume, snapshot_every, callbacks or Callbacks(), world)
    finally:
        world.close()


def _train(cfg, output, model, task, force, resume, snapshot_every, callbacks, world) -> TrainResult:
    from lpa_cli.finetune import build_initial_model, complete, prepare_training

    t = cfg.train
    set_threads(t.threads)
    device = resolve_device(t.device)
    if device.type == "cuda" and world.size > 1:
        import os

        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    task = task or load_task(cfg.task)
    if t.epochs:  # passes over the data decide the steps, now that the data is known
        per_step = t.batch_size or len(task.train)
        t = dataclasses.replace(t, steps=max(1, math.ceil(t.epochs * len(task.train) / per_step)))
        cfg = dataclasses.replace(cfg, train=t)
    seed_everything(t.seed)
    if model is None:
        cfg = complete(cfg, task)
        model = build_initial_model(cfg, task)
    task.check_token_ids(model.input_vocab, f"the model{' from ' + cfg.model.init if cfg.model.init else ''}")
    cfg = _with_model_description(cfg, model)
    model.to(device)
    trainable, finish = prepare_training(model, cfg)
    model.checkpoint_blocks = t.activation_checkpointing
    objective = build_objective(cfg.objective, model.num_blocks, task.kind)
    step_module = wrap(_LossModule(model, objective), model, t.parallel, world, objective.leaves_parameters_unused(model))
    fsdp = world.size > 1 and t.parallel == "fsdp"
    opt = make_optimizer(cfg, [p for p in step_module.parameters() if p.requires_grad] if fsdp else trainable)
    scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None
    depth_gen = torch.Generator().manual_seed(t.seed + 7919)
    snap = snapshot_path(output) if output is not None else None
    start = 0
    if resume and snap is not None and snap.exists():
        start, model_state, opt_state, rng, scaler_state = load_snapshot(snap, cfg)
        load_full_state(step_module if fsdp else model, opt, {f"model.{k}": v for k, v in model_state.items()} if fsdp else model_state,
                        opt_state, t.parallel, world)
        restore_rng(rng, depth_gen)
        if scaler is not None and scaler_state:
            scaler.load_state_dict(scaler_state)
        log.info("resuming from %s at step %d", snap, start)
    trackers: list[Tracker] = make_trackers(t.log, output) if world.main else []
    for tr in trackers:
        tr.start(cfg.to_dict(), start)
    runner = _compiled(step_module) if t.compile else step_module
    model.train()
    watch = _LossWatch()
    log_every = max(1, t.steps // 100)
    per_step = t.batch_size or len(task.train)
    getattr(callbacks, "on_plan", lambda plan: None)({"parameters": sum(p.numel() for p in model.parameters()), "trainable": sum(p.numel() for p in trainable),
                       "samples_per_step": per_step, "tokens_per_step": per_step * task.in_shape[0] if task.input_kind == "tokens" else None,
                       "steps": t.steps, "start": start, "device": str(device), "processes": world.size, "precision": t.precision})
    callbacks.on_start(t.steps, start)
    on_progress = getattr(callbacks, "on_progress", lambda step, loss, per_depth: None)  # callbacks written before 0.3 lack it
    began = time.perf_counter()
    last_loss: float | None = None
    out: LossOutput | None = None
    try:
        for step, batch in zip(range(start, t.steps), _batches(task.train, cfg, start, world, device.type == "cuda")):
            lr = learning_rate(cfg, step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            out, runner = _step(runner, step_module, batch, step, depth_gen, device, cfg, scaler, world, fsdp)
            loss = float(out.loss)
            if not math.isfinite(loss):
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
            last_loss = loss
            done = step + 1
            callbacks.on_step(done, loss if done % 10 == 0 or done == t.steps else None)
            on_progress(done, loss, out.per_depth)
            watch.add(loss)
            if world.main and done % log_every == 0 and done < t.steps and not (t.eval_every and done % t.eval_every == 0):
                per_depth = {k: float(v) for k, v in out.per_depth.items()}  # the log's training curve between evaluations
                for tr in trackers:
                    tr.record(done, lr, loss, per_depth, {}, time.perf_counter() - began)
            if t.eval_every and done % t.eval_every == 0 and done < t.steps:
                metrics = _evaluate(model, step_module, task, cfg, fsdp)
                if world.main:
                    per_depth = {k: float(v) for k, v in out.per_depth.items()}
                    for tr in trackers:
                        tr.record(done, lr, loss, per_depth, metrics, time.perf_counter() - began)
                    callbacks.on_eval(done, metrics)
            if snap is not None and snapshot_every and done % snapshot_every == 0 and done < t.steps:
                _snapshot(snap, cfg, done, model, step_module, opt, depth_gen, scaler, world, fsdp)
        callbacks.on_end()
        elapsed = time.perf_counter() - began
        metrics = _evaluate(model, step_module, task, cfg, fsdp)
        warnings = watch.judge(metrics, task) if world.main else []
        for w in warnings:
            log.warning("%s", w)
        finish(model)
        state = full_model_state(step_module, t.parallel, world) if fsdp else None
        if state is not None:
            state = {k.removeprefix("model."): v for k, v in state.items()}
        training = {
            "steps": t.steps,
            "final_loss": last_loss,
            # under FSDP parameters are DTensors, whose numel() is the whole (logical) tensor's
            "parameters": count_parameters(model) if not fsdp else sum(p.numel() for p in step_module.parameters()),
            "world_size": world.size,
            "lpa_version": __version__,
            "torch_version": torch.__version__.split("+")[0],
        } | ({"warnings": warnings} if warnings else {})
        info = task.info()
        sha = ""
        if world.main:
            if output is not None:
                sha = save_checkpoint(output, model, cfg, info, finite(metrics), training, force=True, state=state,
                                      tokenizer=task.tokenizer, extra=_hf_metadata(cfg))
                if snap.exists():
                    snap.unlink()
                for tr in trackers:
                    tr.saved(output)
            # logged only once the checkpoint exists: a failed save leaves no new file behind
            for tr in trackers:
                tr.record(t.steps, learning_rate(cfg, max(0, t.steps - 1)), last_loss, {}, metrics, elapsed)
        world.barrier()
    except BaseException:
        if snap is None or not snap.exists():  # a run that wrote no checkpoint (nor a snapshot to resume) leaves no new log
            for tr in trackers:
                tr.discard()
        raise
    finally:
        for tr in trackers:
            tr.close()
    return TrainResult(output, cfg, info, metrics, training | {"seconds": round(elapsed, 3)}, sha, model)


class _LossWatch:
    """Whether a run learned anything: its first and last ten step losses, and the final depth's test
    metrics against a constant predictor (judged once, at the end)."""

    def __init__(self) -> None:
        self.first: list[float] = []
        self.last: collections.deque = collections.deque(maxlen=10)

    def add(self, loss: float) -> None:
        if len(self.first) < 10:
            self.first.append(loss)
        self.last.append(loss)

    def judge(self, metrics: dict[str, list[float]], task) -> list[str]:
        out = []
        if len(self.first) >= 10 and len(self.last) == 10:
            a, b = sum(self.first) / 10, sum(self.last) / 10
            if b >= 0.99 * a:
                out.append(f"the training loss did not fall ({a:.4g} over the first ten steps, {b:.4g} over the last ten): "
                           "check --lr (a pretrained model wants about 5e-5) and the data")
        r2, ce = metrics.get("r2"), metrics.get("ce")
        if task.kind == "regression" and r2 and r2[-1] is not None and r2[-1] <= 0.01:
            out.append(f"the final depth's R^2 is {r2[-1]:.3g}: no better than predicting the mean")
        if task.kind == "classification" and ce and ce[-1] is not None and ce[-1] >= 0.98 * math.log(task.out_dim):
            out.append(f"the final depth's cross-entropy is {ce[-1]:.4g}, chance level for {task.out_dim} classes (ln {task.out_dim} = "
                       f"{math.log(task.out_dim):.4g}): the model learned nothing")
        return out


def _hf_metadata(cfg: RunConfig) -> dict[str, str]:
    """What a model started from a Hugging Face directory records (for export --format hf)."""
    if not cfg.model.init:
        return {}
    from lpa_cli.finetune import init_metadata

    return init_metadata(cfg)


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


def _compiled(module: nn.Module):
    try:
        return torch.compile(module)
    except Exception as err:  # noqa: BLE001 - any platform failure means: run eagerly
        log.warning("torch.compile is unavailable here (%s); training without it", str(err).splitlines()[0][:200])
        return module


def _forward(runner, step_module, batch: Batch, step: int, depth_gen):
    """The loss of one batch; a compiled module that fails on first use falls back to eager, once."""
    if runner is step_module:
        return step_module(batch, step, depth_gen), runner
    try:
        return runner(batch, step, depth_gen), runner
    except Exception as err:  # noqa: BLE001 - compilation errors surface at the first call, with many types
        if isinstance(err, LpaError):
            raise
        import warnings

        warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); training without it", stacklevel=2)
        return step_module(batch, step, depth_gen), step_module


def _evaluate(model: ResidualModel, step_module: nn.Module, task: Task, cfg: RunConfig, fsdp: bool) -> dict[str, list[float]]:
    """Test metrics per depth. Under FSDP every rank evaluates, with the root's parameters gathered."""
    t = cfg.train
    if fsdp:
        step_module.unshard()
    try:
        return evaluate(model, task.test, task.kind, samples=t.eval_samples, precision=t.precision)
    finally:
        if fsdp:
            step_module.reshard()


def _snapshot(path: Path, cfg, step: int, model, step_module, opt, depth_gen, scaler, world: World, fsdp: bool) -> None:
    model_state = full_model_state(step_module if fsdp else model, cfg.train.parallel, world)
    opt_state = full_optimizer_state(step_module if fsdp else model, opt, cfg.train.parallel, world)
    if fsdp:
        model_state = {k.removeprefix("model."): v for k, v in model_state.items()}
    if world.main:
        save_snapshot(path, cfg, step, model_state, opt_state, depth_gen, scaler.state_dict() if scaler is not None else None)
    world.barrier()


