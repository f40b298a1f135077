"""`lpa train`: train a residual model with an LPA or E2E objective and save a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lpa_cli.commands.options import Depths, Device, Force, Json, Output, Quiet, Seed
from lpa_cli.config import RunConfig, resolve
from lpa_cli.render import consoles, depth_table, print_json
from lpa_cli.tasks import TASK_HELP
from lpa_cli.train import Callbacks, TrainResult, is_main_process, train


class ProgressCallbacks(Callbacks):
    """A rich progress bar (step, loss, ETA) on stderr, plus per-depth tables at each evaluation."""

    def __init__(self, progress: Progress, console) -> None:
        self.progress = progress
        self.console = console
        self.task_id = None

    def on_start(self, total_steps: int, start_step: int) -> None:
        self.task_id = self.progress.add_task("training", total=total_steps, completed=start_step, loss="-")

    def on_step(self, step: int, loss: float | None) -> None:
        if loss is None:
            self.progress.update(self.task_id, completed=step)
        else:
            self.progress.update(self.task_id, completed=step, loss=f"{loss:.3e}")

    def on_eval(self, step: int, metrics: dict[str, list[float]]) -> None:
        self.console.print(depth_table(metrics, title=f"step {step}: per-depth test metrics"))


def default_output(cfg: RunConfig) -> Path:
    task = cfg.task.name.replace(":", "-").replace("/", "_").replace("\\", "_")
    return Path("runs") / f"{cfg.model.arch}-{task}-{cfg.objective.name}-s{cfg.train.seed}.safetensors"


def result_json(result: TrainResult) -> dict:
    return {
        "output": str(result.path) if result.path else None,
        "sha256": result.sha256,
        "config": result.config.to_dict(),
        "task": result.task,
        "training": result.training,
        "metrics": result.metrics,
    }


def train_command(
    arch: Annotated[Optional[str], typer.Option("--arch", help="Architecture: mlp, resnet, vit or gpt.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help=f"Task spec: {TASK_HELP}.")] = None,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="Your own data: .npz (x, y), .csv (last column = target) or .h5.")
    ] = None,
    x_key: Annotated[Optional[str], typer.Option("--x-key", help="Input array/dataset name in .npz/.h5 (x).")] = None,
    y_key: Annotated[Optional[str], typer.Option("--y-key", help="Target array/dataset name in .npz/.h5 (y).")] = None,
    target_column: Annotated[
        Optional[str], typer.Option("--target-column", help="CSV target column, by name or index (last).")
    ] = None,
    objective: Annotated[Optional[str], typer.Option("--objective", help="e2e, lpa or lpa-local.")] = None,
    depth: Annotated[Optional[int], typer.Option("--depth", help="Number of residual blocks N.")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Width of the residual stream.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimisation steps.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Batch size (0: full batch).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")] = None,
    weights: Annotated[Optional[str], typer.Option("--weights", help="LPA depth weights: uniform, linear, sqrt, inv.")] = None,
    lpa_lambda: Annotated[
        Optional[float], typer.Option("--lpa-lambda", help="LPA as loss_N + lambda * (sum of other depths).")
    ] = None,
    loss_power: Annotated[
        Optional[float], typer.Option("--loss-power", help="Each depth's term is L_k^p (log at 0); 0.5 balances shallow and deep depths.")
    ] = None,
    depths: Depths = None,
    sample_depths: Annotated[
        Optional[int], typer.Option("--sample-depths", help="Use this many of the selected depths per step (0: all).")
    ] = None,
    sample_fraction: Annotated[
        Optional[float], typer.Option("--sample-fraction", help="Shallower depths' losses on this fraction of each batch (depth N: all).")
    ] = None,
    eval_every: Annotated[
        Optional[int], typer.Option("--eval-every", help="Evaluate every N steps (table + JSON Lines log).")
    ] = None,
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
    flags = {
        "model": {"arch": arch, "depth": depth, "width": width},
        "task": {
            "name": f"file:{data}" if data is not None else task,
            "options.x_key": x_key,
            "options.y_key": y_key,
            "options.target_column": target_column,
        },
        "objective": {"name": objective, "weights": weights, "lpa_lambda": lpa_lambda, "depths": depths, "sample_depths": sample_depths,
                      "sample_fraction": sample_fraction, "loss_power": loss_power},
        "train": {"steps": steps, "batch_size": batch_size, "lr": lr, "eval_every": eval_every, "seed": seed, "threads": threads, "device": device},
    }
    cfg = resolve(config, flags, set_ or [])
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
        transient=False,
    )
    with progress:
        result = train(
            cfg, output, force=force, resume=resume, snapshot_every=snapshot_every, callbacks=ProgressCallbacks(progress, err)
        )
    if not main_process:
        return
    if json_:
        print_json(result_json(result))
        return
    out.print(depth_table(result.metrics, title=f"{cfg.objective.name} {cfg.model.arch} on {cfg.task.name}: per-depth test metrics"))
    out.print(f"saved [bold]{result.path}[/bold]  sha256 {result.sha256[:16]}…  ({result.training['seconds']:.1f} s)")
