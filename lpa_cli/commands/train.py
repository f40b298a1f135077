"""`lpa train`: train a residual model with an LPA or E2E objective and save a checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lpa_cli.commands.options import Depths, Device, Force, Json, Output, Quiet, Seed, TrustFactory
from lpa_cli.config import ALIGNMENTS, HEAD_LOSSES, PARALLEL, PRECISIONS, TRACKERS, TRAIN_ONLY, RunConfig, TrainConfig, resolve
from lpa_cli.registry import ARCHITECTURES, OBJECTIVES, TASK_HELP, WEIGHTINGS
from lpa_cli.render import LogProgress, duration, consoles, depth_table, esc, print_json


def _count(n: float) -> str:
    return next(f"{n / d:.1f}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "k"), (1, "")) if n >= d or d == 1)


class ProgressCallbacks:
    """Progress on stderr: the plan and a time estimate up front; then a live bar (step, loss, ETA) on
    a terminal, or a plain line every tenth of the run and at least every 30 s in a log (step, loss
    per depth, samples/s, ETA); per-depth tables at each evaluation."""

    ESTIMATE_AFTER = (5, 10.0)  # steps, seconds: whichever comes first

    def __init__(self, progress: Progress, console, defaults: str = "") -> None:
        self.progress = progress
        self.console = console
        self.defaults = defaults  # the fine-tuning defaults in force, said once the run is set up
        self.task_id = None
        self.log: LogProgress | None = None
        self.plan: dict = {}
        self.estimated = False
        self.began = 0.0

    def on_plan(self, plan: dict) -> None:
        self.plan = plan
        if self.defaults:
            self.console.print(esc(self.defaults), soft_wrap=True, highlight=False)
        tokens = f" ({_count(plan['tokens_per_step'])} tokens)" if plan.get("tokens_per_step") else ""
        procs = f" x {plan['processes']} processes" if plan["processes"] > 1 else ""
        resumed = f", resuming at step {plan['start']}" if plan["start"] else ""
        self.console.print(esc(f"plan: {_count(plan['parameters'])} parameters ({_count(plan['trainable'])} trained), "
                               f"{plan['samples_per_step']:,} samples{tokens} per step, {plan['steps']:,} steps{resumed} on "
                               f"{plan['device']}{procs} ({plan['precision']})"), soft_wrap=True, highlight=False)

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.began = time.monotonic()
        if self.console.is_terminal:
            self.task_id = self.progress.add_task("training", total=total_steps, completed=start_step, loss="-")
        else:
            self.log = LogProgress(self.console, "step", total_steps, unit="steps")
            self.log.update(start_step)

    def on_step(self, step: int, loss: float | None) -> None:
        if self.task_id is None:
            return
        if loss is None:
            self.progress.update(self.task_id, completed=step)
        else:
            self.progress.update(self.task_id, completed=step, loss=f"{loss:.3e}")

    def on_progress(self, step: int, loss: float, per_depth: dict) -> None:
        done = step - self.plan.get("start", 0)
        elapsed = time.monotonic() - self.began
        if not self.estimated and (done >= self.ESTIMATE_AFTER[0] or elapsed >= self.ESTIMATE_AFTER[1]) and done > 0:
            self.estimated = True
            left = (self.plan.get("steps", step) - step) * elapsed / done
            self.console.print(esc(f"estimate: {elapsed / done:.3g} s/step over the first {done} steps; about {duration(left)} to go"),
                               soft_wrap=True, highlight=False)
        if self.log is not None and self.log.due(step):  # the per-depth losses are read (a device sync) only for a line
            depths = " ".join(f"{k}:{float(v):.3g}" for k, v in sorted(per_depth.items()))
            self.log.update(step, f"loss {loss:.4g}" + (f" (depths {depths})" if depths else ""), "samples",
                            self.plan.get("samples_per_step", 1))

    def on_eval(self, step: int, metrics: dict[str, list[float]]) -> None:
        self.console.print(depth_table(metrics, title=f"step {step}: per-depth test metrics"))

    def on_end(self) -> None:
        pass


def default_output(cfg: RunConfig) -> Path:
    source = cfg.task.name
    if cfg.model.init:
        source = f"{Path(cfg.model.init).stem}-{source}"
    task = source.replace(":", "-").replace("/", "_").replace("\\", "_")
    arch = cfg.model.factory.replace(":", "-").replace(".", "_") if cfg.model.factory else cfg.model.arch
    return Path("runs") / f"{arch}-{task}-{cfg.objective.name}-s{cfg.train.seed}.safetensors"


def result_json(result) -> dict:
    return {
        "output": str(result.path) if result.path else None,
        "sha256": result.sha256,
        "config": result.config.to_dict(),
        "task": result.task,
        "training": result.training,
        "metrics": result.metrics,
    }


def _choices(values) -> str:
    return ", ".join(values)


def train_command(
    arch: Annotated[Optional[str], typer.Option("--arch", help=f"Architecture: {ARCHITECTURES.help()}.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Your own model: package.module:function returning a "
                                                 "ResidualModel; --set model.options.KEY=VALUE are its keyword arguments.")] = None,
    trust_factory: TrustFactory = False,
    init: Annotated[Optional[Path], typer.Option("--init", help="Start from these weights: a Hugging Face model directory "
                                                 "(local safetensors) or an lpa checkpoint.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help=f"Task spec: {TASK_HELP}.")] = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="Your own data: .npz/.npy/.csv/.h5 arrays, a .txt file or folder, a token file "
                                     "(.bin), a .csv/.jsonl of texts and labels, or a folder of class sub-folders of images.")
    ] = None,
    x_key: Annotated[Optional[str], typer.Option("--x-key", help="Input array/dataset name in .npz/.h5 (x).")] = None,
    y_key: Annotated[Optional[str], typer.Option("--y-key", help="Target array/dataset name in .npz/.h5 (y).")] = None,
    target_column: Annotated[
        Optional[str], typer.Option("--target-column", help="CSV target column, by name or index (last).")
    ] = None,
    objective: Annotated[Optional[str], typer.Option("--objective", help=f"{OBJECTIVES.help()}.")] = None,
    depth: Annotated[Optional[int], typer.Option("--depth", help="Number of residual blocks N.")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Width of the residual stream.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimisation steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Batch size (0: full batch).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help=f"LPA depth weights: {WEIGHTINGS.help()}.")] = None,
    lpa_lambda: Annotated[
        Optional[float], typer.Option("--lpa-lambda", help="LPA as loss_N + lambda * (sum of other depths).")
    ] = None,
    loss_power: Annotated[
        Optional[float], typer.Option("--loss-power", help="Each depth's term is L_k^p (log at 0); 0.5 balances shallow and deep depths.")
    ] = None,
    align: Annotated[Optional[str], typer.Option("--align", help=f"What depths < N fit: {_choices(ALIGNMENTS)} (kl: the final depth's "
                                                 "detached prediction).")] = None,
    align_mix: Annotated[Optional[float], typer.Option("--align-mix", help="With --align kl: weight of the alignment term (1 - it on the labels).")] = None,
    head_loss: Annotated[Optional[str], typer.Option("--head-loss", help=f"{_choices(HEAD_LOSSES)}: chunked never holds every depth's "
                                                     "output (auto: when it would be large).")] = None,
    depths: Depths = None,
    sample_depths: Annotated[
        Optional[int], typer.Option("--sample-depths", help="Use this many of the selected depths per step (0: all).")
    ] = None,
    depth_schedule: Annotated[
        Optional[str], typer.Option("--depth-schedule", help="all; rotation:R (each depth's loss once every R steps) or curriculum:S "
                                    "(depths switched on top down, one more every S steps), LayerSkip's schedules.")
    ] = None,
    sample_fraction: Annotated[
        Optional[float], typer.Option("--sample-fraction", help="Shallower depths' losses on this fraction of each batch (depth N: all).")
    ] = None,
    eval_every: Annotated[
        Optional[int], typer.Option("--eval-every", help="Evaluate every N steps (table + log).")
    ] = None,
    eval_samples: Annotated[Optional[int], typer.Option("--eval-samples", help="Evaluate on this many test samples, spread evenly (0: all).")] = None,
    precision: Annotated[Optional[str], typer.Option("--precision", help=f"{_choices(PRECISIONS)} (autocast; fp16 with a gradient scaler).")] = None,
    compile_: Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the model and loss.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", help="Split each batch into this many micro-batches.")] = None,
    clip_grad: Annotated[Optional[float], typer.Option("--clip-grad", help="Clip the gradient norm to this (0: off).")] = None,
    activation_checkpointing: Annotated[Optional[bool], typer.Option("--activation-checkpointing/--no-activation-checkpointing",
                                                                     help="Recompute each block's activations in the backward pass.")] = None,
    parallel: Annotated[Optional[str], typer.Option("--parallel", help=f"Under torchrun: {_choices(PARALLEL)}.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Data-loading worker processes.")] = None,
    train_only: Annotated[Optional[str], typer.Option("--train-only", help=f"Which parameters train: {_choices(TRAIN_ONLY)}.")] = None,
    lora_rank: Annotated[Optional[int], typer.Option("--lora-rank", help="Train LoRA adapters of this rank on the blocks (peft); merged when saved.")] = None,
    log: Annotated[Optional[list[str]], typer.Option("--log", help=f"Trackers (repeatable): {_choices(TRACKERS)}.")] = None,
    seed: Seed = None,
    threads: Annotated[
        Optional[int], typer.Option("--threads", help="CPU threads (fix it for byte-identical runs).", envvar="LPA_THREADS")
    ] = None,
    device: Device = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="TOML file with \\[model], \\[task], \\[objective] and \\[train] tables.")] = None,
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override any setting: section.key=value (repeatable).")
    ] = None,
    output: Output = None,
    force: Force = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its snapshot.")] = False,
    snapshot_every: Annotated[int, typer.Option("--snapshot-every", help="Write a resume snapshot every N steps (0: never).")] = 500,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Train a residual model; every depth's prediction is read through the shared head.

    Settings come from built-in defaults, then --config, then flags, then --set.
    """
    from lpa_cli.finetune import describe_defaults, finetune_defaults
    from lpa_cli.models.factory import check_factory
    from lpa_cli.tasks import data_spec
    from lpa_cli.train import is_main_process, train

    flags = {
        "model": {"arch": "custom" if model else arch, "depth": depth, "width": width, "factory": model,
                  "init": str(init) if init is not None else None},
        "task": {
            "name": data_spec(str(data)) if data is not None else task,
            "options.x_key": x_key,
            "options.y_key": y_key,
            "options.target_column": target_column,
        },
        "objective": {"name": objective, "weights": weights, "lpa_lambda": lpa_lambda, "depths": depths, "sample_depths": sample_depths, "depth_schedule": depth_schedule,
                      "sample_fraction": sample_fraction, "loss_power": loss_power, "align": align, "align_mix": align_mix,
                      "head_loss": head_loss},
        "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "eval_every": eval_every, "seed": seed, "threads": threads,
                  "device": device, "precision": precision, "compile": compile_, "grad_accum": grad_accum, "grad_clip": clip_grad,
                  "activation_checkpointing": activation_checkpointing, "parallel": parallel, "workers": workers,
                  "eval_samples": eval_samples, "train_only": train_only, "lora_rank": lora_rank, "log": log or None},
    }
    cfg = resolve(config, flags, set_ or [])
    check_factory(cfg.model.factory, config or "--set model.factory", model or "", trust_factory)  # only --model names code
    defaults = finetune_defaults(cfg.model.init, steps_given=cfg.train.steps != TrainConfig().steps or bool(cfg.train.epochs))
    if defaults:  # a pretrained model: fine-tuning defaults under whatever the user set
        cfg = resolve(config, flags, set_ or [], base=defaults)
    output = output or default_output(cfg)
    main_process = is_main_process()  # under torchrun only rank 0 talks
    out, err = consoles(quiet or json_ or not main_process)

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,  # gone when training ends: the table follows, and an error stays one line
    )
    with progress:
        result = train(cfg, output, force=force, resume=resume, snapshot_every=snapshot_every,
                       callbacks=ProgressCallbacks(progress, err, describe_defaults(cfg, defaults) if defaults else ""),
                       trust_factory=trust_factory)
    if not main_process:
        return
    if json_:
        print_json(result_json(result))
        return
    out.print(depth_table(result.metrics, title=f"{result.config.objective.name} {result.config.model.arch} on {result.config.task.name}: per-depth test metrics"))
    out.print(f"saved [bold]{esc(result.path)}[/bold]  sha256 {result.sha256[:16]}…  ({result.training['seconds']:.1f} s)")
