"""The one trainer. It knows the `ResidualModel` protocol, an `Objective` and a `Task` — nothing
about architectures.

Reproducibility and resume: the batch of step s is a pure function of (seed, s), the learning rate
is a pure function of s, and snapshots hold weights, optimiser state, the RNG states and the step.
So a run killed at any point and resumed from its last snapshot ends with the same tensors as an
uninterrupted one. Data-parallel runs (torchrun) split each global batch across ranks; only rank 0
evaluates and writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from analyzers.atomic import atomic_path, check_writable
from analyzers.errors import CheckpointError, UsageError
from lpa_cli import __version__
from lpa_cli.checkpoint import save_checkpoint, save_file
from lpa_cli.config import RunConfig
from lpa_cli.evaluate import depth_metrics
from lpa_cli.models import ResidualModel, build_model, count_parameters
from lpa_cli.objectives import LossOutput, Objective
from lpa_cli.runtime import resolve_device, seed_everything, set_threads
from lpa_cli.tasks import Task, load_task

log = logging.getLogger(__name__)
SNAPSHOT_FORMAT = "lpa-snapshot"


class Callbacks:
    """Hooks the command line uses for progress display; the library itself only logs."""

    def on_start(self, total_steps: int, start_step: int) -> None: ...

    def on_step(self, step: int, loss: float | None) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, list[float]]) -> None: ...

    def on_end(self) -> None: ...


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
    progress = (step - t.warmup) / max(1, t.steps - t.warmup)
    return t.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> Tensor | None:
    """Indices of step ``step``'s batch: epochs of seeded permutations; None means the full batch."""
    if batch_size <= 0 or batch_size >= n:
        return None
    per_epoch = n // batch_size
    epoch, slot = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    return perm[slot * batch_size : (slot + 1) * batch_size]


def make_optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    params = model.parameters()
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)


class _LossModule(nn.Module):
    """Wraps model + objective so DistributedDataParallel sees the whole loss in one forward()."""

    def __init__(self, model: ResidualModel, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: Tensor, y: Tensor, generator: torch.Generator | None) -> LossOutput:
        return self.objective(self.model, x, y, generator)


# --- snapshots -------------------------------------------------------------------------------


def snapshot_path(output: Path) -> Path:
    return output.with_name(output.name + ".snapshot")


def log_path(output: Path) -> Path:
    return output.with_suffix(".jsonl")


def _save_snapshot(path: Path, cfg: RunConfig, step: int, model: nn.Module, opt: torch.optim.Optimizer, depth_gen: torch.Generator) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.depths"] = depth_gen.get_state()
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    meta = {
        "format": SNAPSHOT_FORMAT,
        "config": cfg.to_json(),
        "step": str(step),
        "param_groups": json.dumps(opt_state["param_groups"]),
        "optim_scalars": json.dumps(scalars),
    }
    # Tied weights share storage; a snapshot stores a private copy of each name.
    tensors = {k: v.clone() for k, v in tensors.items()}
    with atomic_path(path, force=True) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _load_snapshot(path: Path, cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer, depth_gen: torch.Generator) -> int:
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read snapshot ({err}); delete it to start over") from None
    if meta.get("format") != SNAPSHOT_FORMAT:
        raise CheckpointError(f"{path}: not an lpa snapshot")
    saved = json.loads(meta["config"])
    if saved != json.loads(cfg.to_json()):
        raise UsageError(f"{path}: snapshot was made with different settings; rerun the same command, or use --force to start over")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in json.loads(meta["optim_scalars"]).items():
        state.setdefault(int(idx), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    torch.set_rng_state(tensors["rng.torch"])
    depth_gen.set_state(tensors["rng.depths"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    return int(meta["step"])


def _truncate_log(path: Path, step: int) -> None:
    """After a resume, drop log records written after the snapshot (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue  # a line cut by the kill
    with atomic_path(path, force=True) as tmp:
        tmp.write_text("".join(x + "\n" for x in keep))


# --- the loop -------------------------------------------------------------------------------


def _distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether we created the process group) under torchrun; (0, 1, False) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    created = False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("LPA_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
        created = True
    return dist.get_rank(), dist.get_world_size(), created


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def train(
    cfg: RunConfig,
    output: str | Path | None = None,
    *,
    force: bool = False,
    resume: bool = False,
    snapshot_every: int = 500,
    callbacks: Callbacks | None = None,
    task: Task | None = None,
) -> TrainResult:
    """Train ``cfg`` and (when ``output`` is given) save a self-describing checkpoint there."""
    callbacks = callbacks or Callbacks()
    rank, world, created_group = _distributed()
    output = Path(output) if output is not None else None
    snap = snapshot_path(output) if output is not None else None
    if output is not None and rank == 0:
        check_writable(output, force=force)
        if snap.exists() and not resume and not force:
            raise UsageError(f"{snap}: an interrupted run left this snapshot; use --resume to continue it or --force to start over")
    t = cfg.train
    set_threads(t.threads)
    device = resolve_device(t.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    task = task or load_task(cfg.task)
    seed_everything(t.seed)
    model = build_model(cfg.model, task.in_shape, task.out_dim, task.input_kind).to(device)
    objective = Objective(cfg.objective, model.num_blocks, task.kind)
    step_module: nn.Module = _LossModule(model, objective)
    if world > 1:
        unused = objective.detach_inputs or cfg.objective.sample_depths > 0 or max(objective.depths) < model.num_blocks
        step_module = nn.parallel.DistributedDataParallel(step_module, find_unused_parameters=unused)
    opt = make_optimizer(cfg, model)
    depth_gen = torch.Generator().manual_seed(t.seed + 7919)
    start = 0
    if resume and snap is not None and snap.exists():
        start = _load_snapshot(snap, cfg, model, opt, depth_gen)
        log.info("resuming from %s at step %d", snap, start)
        if rank == 0:
            _truncate_log(log_path(output), start)
    elif output is not None and rank == 0 and log_path(output).exists():
        log_path(output).unlink()

    x_train, y_train = task.x_train, task.y_train
    if device.type != "cpu":
        x_train, y_train = x_train.to(device), y_train.to(device)
    model.train()
    callbacks.on_start(t.steps, start)
    began = time.perf_counter()
    last_loss: Tensor | None = None
    metrics: dict[str, list[float]] = {}
    for step in range(start, t.steps):
        idx = batch_indices(x_train.shape[0], t.batch_size, t.seed, step)
        if world > 1:
            idx = torch.arange(x_train.shape[0]) if idx is None else idx
            idx = idx[rank::world]
        xb = x_train if idx is None else x_train[idx.to(x_train.device)]
        yb = y_train if idx is None else y_train[idx.to(y_train.device)]
        lr = learning_rate(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr
        out = step_module(xb.to(device), yb.to(device), depth_gen)
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        last_loss = loss.detach()
        done = step + 1
        report = done % 10 == 0 or done == t.steps
        callbacks.on_step(done, float(last_loss) if report else None)
        if rank == 0 and t.eval_every and done % t.eval_every == 0 and done < t.steps:
            metrics = depth_metrics(model, task.x_test, task.y_test, task.kind)
            _append_log(output, done, lr, float(last_loss), out.per_depth, metrics, time.perf_counter() - began)
            callbacks.on_eval(done, metrics)
        if snap is not None and rank == 0 and snapshot_every and done % snapshot_every == 0 and done < t.steps:
            _save_snapshot(snap, cfg, done, model, opt, depth_gen)
    callbacks.on_end()
    elapsed = time.perf_counter() - began
    metrics = depth_metrics(model, task.x_test, task.y_test, task.kind)
    training = {
        "steps": t.steps,
        "final_loss": float(last_loss) if last_loss is not None else None,
        "parameters": count_parameters(model),
        "world_size": world,
        "lpa_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    }
    info = task.info()
    sha = ""
    if rank == 0:
        if output is not None:
            sha = save_checkpoint(output, model, cfg, info, metrics, training, force=force or resume)
            if snap.exists():
                snap.unlink()
        # logged only once the checkpoint exists: a failed save leaves no new file behind
        _append_log(output, t.steps, learning_rate(cfg, max(0, t.steps - 1)), training["final_loss"], {}, metrics, elapsed)
    if world > 1:
        dist.barrier()
        if created_group:
            dist.destroy_process_group()
    return TrainResult(output, cfg, info, metrics, training | {"seconds": round(elapsed, 3)}, sha, model)


def _append_log(output: Path | None, step: int, lr: float, loss: float | None, per_depth: dict[int, Tensor], metrics: dict[str, list[float]], elapsed: float) -> None:
    if output is None:
        return
    record = {
        "step": step,
        "lr": lr,
        "train_loss": loss,
        "train_loss_per_depth": {str(k): float(v) for k, v in per_depth.items()},
        "test": metrics,
        "elapsed_s": round(elapsed, 3),
    }
    path = log_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
