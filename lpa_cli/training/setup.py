"""Setting a run up: the data, the model (built, or given, with its starting weights), the objective
wrapped with the model for DDP/FSDP and torch.compile, the optimiser, the resume snapshot, the trackers.
Also what stays a pure function of the step: its learning rate and its batch."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lpa_core.atomic import check_writable
from lpa_core.errors import UsageError
from lpa_core.files import refuse_link
from lpa_cli.config import RunConfig
from lpa_cli.data.batch import Batch
from lpa_cli.data.splits import Split, batch_indices
from lpa_cli.data.tasks import Task, load_task, spec_files
from lpa_cli.models import ResidualModel
from lpa_cli.models.open import build_initial_model, complete
from lpa_cli.runtime import resolve_device, resolve_precision, seed_everything, set_threads
from lpa_cli.training.distributed import World, load_full_state, wrap
from lpa_cli.training.finetune import prepare_training
from lpa_cli.training.objectives import LossOutput, Objective, build_objective
from lpa_cli.training.snapshot import load_snapshot, restore_rng, snapshot_path
from lpa_cli.training.trackers import Tracker, make_trackers

log = logging.getLogger(__name__)


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


def make_optimizer(cfg: RunConfig, params: list[nn.Parameter], head: set[int] | None = None) -> torch.optim.Optimizer:
    """The optimizer over ``params``; with ``--head-lr-scale`` or ``--head-warmup`` the parameters whose ids
    are in ``head`` form a second group (`lr_scale`, `warm`: what `group_rates` reads each step)."""
    t = cfg.train
    if not params:
        raise UsageError("nothing to train: every parameter is frozen (check --train-only)")
    groups: list[dict] = [{"params": params, "lr_scale": 1.0, "warm": True}]
    if head is not None and (t.head_lr_scale != 1.0 or t.head_warmup):
        body = [p for p in params if id(p) not in head]
        tops = [p for p in params if id(p) in head]
        groups = [g for g in ({"params": body, "lr_scale": 1.0, "warm": False}, {"params": tops, "lr_scale": t.head_lr_scale, "warm": True})
                  if g["params"]]
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr, weight_decay=t.weight_decay, **fused_options(params))
    if t.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=t.lr, weight_decay=t.weight_decay, **fused_options(params))
    return torch.optim.SGD(groups, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)


def set_rates(cfg: RunConfig, opt: torch.optim.Optimizer, step: int) -> float:
    """Set every group's learning rate for ``step``: the schedule's, times the group's scale, and 0 for
    the body during ``--head-warmup``. Returns the schedule's rate (what logs show)."""
    lr = learning_rate(cfg, step)
    warming = step < cfg.train.head_warmup
    for group in opt.param_groups:
        group["lr"] = 0.0 if warming and not group.get("warm", True) else lr * group.get("lr_scale", 1.0)
    return lr


def fused_options(params: list[nn.Parameter]) -> dict:
    """``fused=True`` where every parameter is a plain floating-point CUDA tensor: Adam's update in one
    kernel per parameter group instead of a dozen per tensor, as transformers' Trainer does on GPUs
    (``adamw_torch_fused``). Elsewhere (a CPU, FSDP's sharded tensors) the default implementation."""
    plain = all(type(p.data) is torch.Tensor and p.is_cuda and p.is_floating_point() for p in params)
    return {"fused": True} if plain and params else {}


class LossModule(nn.Module):
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


def batches(split: Split, cfg: RunConfig, start: int, world: World, pin: bool) -> Iterator[Batch]:
    t = cfg.train
    data = _StepBatches(split, t.batch_size, t.seed, world)
    if t.workers == 0:
        return (data[s] for s in range(start, t.steps))
    loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start, t.steps), num_workers=t.workers,
                                         prefetch_factor=4, pin_memory=pin, persistent_workers=False)
    return iter(loader)


def check_outputs(output: Path, cfg: RunConfig, force: bool, resume: bool) -> None:
    """The checkpoint goes to a .safetensors file that is none of the run's inputs; its log may be
    replaced only with --force (or continued with --resume)."""
    if output.suffix != ".safetensors":
        raise UsageError(f"{output}: checkpoints are .safetensors files (its log, snapshot and lock sit beside it under other suffixes)")
    inputs = [Path(p) for p in [cfg.model.init] if p] + spec_files(cfg.task.name)
    check_writable(output, force=force or resume, inputs=inputs)
    jsonl = output.with_suffix(".jsonl")
    if "jsonl" in cfg.train.log:  # every output checked before the work: a link, folder or device here fails now, not after saving
        check_writable(refuse_link(jsonl), force=True, inputs=inputs)
        if jsonl.exists() and not (force or resume):
            raise UsageError(f"{jsonl}: a log of an earlier run is in the way (use --force to replace it)")
    snap = snapshot_path(output)
    if snap.exists() and not resume and not force:
        raise UsageError(f"{snap}: an interrupted run left this snapshot; use --resume to continue it or --force to start over")


def _with_model_description(cfg: RunConfig, model: ResidualModel) -> RunConfig:
    """The config a checkpoint records: the real number of blocks of a ready-made model."""
    if model.num_blocks != cfg.model.depth:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, depth=model.num_blocks))
    return cfg


@dataclass
class Run:
    """Everything a set-up run holds; the loop and the finish read and advance it."""

    cfg: RunConfig
    output: Path | None
    task: Task
    model: ResidualModel
    world: World
    device: torch.device
    step_module: nn.Module  # model + objective, wrapped for DDP/FSDP
    runner: nn.Module  # step_module, compiled with --compile
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    depth_gen: torch.Generator  # the depth plan's random stream (snapshotted)
    snap: Path | None
    start: int
    trackers: list[Tracker]
    trainable: list[nn.Parameter]
    finish: Callable[[ResidualModel], None]  # what to do to the model before it is saved (merge LoRA)
    fsdp: bool

    def plan(self) -> dict:
        """What the run will do, said before it starts."""
        t, task = self.cfg.train, self.task
        per_step = t.batch_size or len(task.train)
        return {"parameters": sum(p.numel() for p in self.model.parameters()), "trainable": sum(p.numel() for p in self.trainable),
                "samples_per_step": per_step, "tokens_per_step": per_step * task.in_shape[0] if task.input_kind == "tokens" else None,
                "padded_to_longest": bool(getattr(task.train, "dynamic", False)),  # then tokens_per_step is a bound
                "steps": t.steps, "start": self.start, "device": str(self.device), "processes": self.world.size, "precision": t.precision}


def on_hardware(cfg: RunConfig, runs_on: torch.device | None = None, **train: str) -> RunConfig:
    """``cfg`` as it runs: with ``train`` settings (device, precision) replaced, and ``auto`` precision
    made the one the device trains in (what the checkpoint records, so a rerun finds its own)."""
    t = dataclasses.replace(cfg.train, **train)
    runs_on = runs_on or resolve_device(t.device)
    return dataclasses.replace(cfg, train=dataclasses.replace(t, precision=resolve_precision(t.precision, runs_on)))


def _device(cfg: RunConfig, world: World) -> torch.device:
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _steps_from_epochs(cfg: RunConfig, task: Task) -> RunConfig:
    """With ``epochs``, passes over the data decide the steps, now that the data is known."""
    t = cfg.train
    if not t.epochs:
        return cfg
    per_step = t.batch_size or len(task.train)
    return dataclasses.replace(cfg, train=dataclasses.replace(t, steps=max(1, math.ceil(t.epochs * len(task.train) / per_step))))


def prepare(cfg: RunConfig, output: Path | None, model: ResidualModel | None, task: Task | None, resume: bool, world: World) -> Run:
    """Set the run up, resumed from its snapshot when asked and one exists."""
    set_threads(cfg.train.threads)
    device = _device(cfg, world)
    cfg = on_hardware(cfg, device)
    task = task or load_task(cfg.task)
    cfg = _steps_from_epochs(cfg, task)
    t = cfg.train
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
    step_module = wrap(LossModule(model, objective), model, t.parallel, world, objective.leaves_parameters_unused(model))
    fsdp = world.size > 1 and t.parallel == "fsdp"
    opt = make_optimizer(cfg, [p for p in step_module.parameters() if p.requires_grad] if fsdp else trainable,
                         {id(p) for p in model.head.parameters()})
    scaler = torch.amp.GradScaler(device.type) if t.precision == "fp16" else None
    depth_gen = torch.Generator().manual_seed(t.seed + 7919)
    snap = snapshot_path(output) if output is not None else None
    run = Run(cfg, output, task, model, world, device, step_module, step_module, opt, scaler, depth_gen, snap, 0, [], trainable, finish, fsdp)
    if resume and snap is not None and snap.exists():
        _resume(run)
    run.trackers = make_trackers(t.log, output) if world.main else []
    for tr in run.trackers:
        tr.start(cfg.to_dict(), run.start)
    run.runner = compiled(step_module) if t.compile else step_module
    return run


def _resume(run: Run) -> None:
    t = run.cfg.train
    run.start, model_state, opt_state, rng, scaler_state = load_snapshot(run.snap, run.cfg)
    if run.fsdp:
        model_state = {f"model.{k}": v for k, v in model_state.items()}
    load_full_state(run.step_module if run.fsdp else run.model, run.opt, model_state, opt_state, t.parallel, run.world)
    restore_rng(rng, run.depth_gen)
    if run.scaler is not None and scaler_state:
        run.scaler.load_state_dict(scaler_state)
    log.info("resuming from %s at step %d", run.snap, run.start)


def compiled(module: nn.Module):
    try:
        return torch.compile(module)
    except Exception as err:  # noqa: BLE001 - any platform failure means: run eagerly
        log.warning("torch.compile is unavailable here (%s); training without it", str(err).splitlines()[0][:200])
        return module
