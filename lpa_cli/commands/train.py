"""`lpa train`: train a residual model with an LPA or E2E objective and save a checkpoint."""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from lpa_cli.commands.options import Force, Json, Output, Quiet, TrustFactory, config_option
from lpa_cli.config import RunConfig, TrainConfig, flag_fields, resolve
from lpa_cli.commands.render import LogProgress, duration, consoles, depth_table, esc, print_json


def _count(n: float) -> str:
    """A count for people: 353, 12.3k, 4.5M (whole numbers below a thousand stay whole)."""
    if n < 1000:
        return f"{int(n)}" if float(n).is_integer() else f"{n:.1f}"
    return next(f"{n / d:.1f}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if n >= d)


class ProgressCallbacks:
    """Progress on stderr: the plan and a time estimate up front; then a live bar (step, loss, ETA) on
    a terminal, or a plain line every tenth of the run and at least every 30 s in a log (step, loss
    per depth, samples/s, ETA); per-depth tables at each evaluation."""

    ESTIMATE_AFTER = (5, 10.0)  # steps, seconds after the first step: whichever comes first

    def __init__(self, progress: Progress, console, defaults: str = "") -> None:
        self.progress = progress
        self.console = console
        self.defaults = defaults  # the fine-tuning defaults in force, said once the run is set up
        self.task_id = None
        self.log: LogProgress | None = None
        self.plan: dict = {}
        self.estimated = False
        self.began = 0.0
        self.warm: tuple[int, float] | None = None  # (step, time) once the first step is done: its start-up cost is no rate

    def on_plan(self, plan: dict) -> None:
        self.plan = plan
        if self.defaults:
            self.console.print(esc(self.defaults), soft_wrap=True, highlight=False)
        tokens = ""
        if plan.get("tokens_per_step"):
            bound = "at most " if plan.get("padded_to_longest") else ""  # each batch is padded to its longest text only
            tokens = f" ({bound}{_count(plan['tokens_per_step'])} tokens)"
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
        now = time.monotonic()
        if self.warm is None:  # the first step builds kernels, caches and the data pipeline: time from its end
            self.warm = (step, now)
        done, elapsed = step - self.warm[0], now - self.warm[1]
        if not self.estimated and (done >= self.ESTIMATE_AFTER[0] or elapsed >= self.ESTIMATE_AFTER[1]) and done > 0:
            self.estimated = True
            left = (self.plan.get("steps", step) - step) * elapsed / done
            self.console.print(esc(f"estimate: {elapsed / done:.3g} s/step over {done} steps after the first; about {duration(left)} to go"),
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


def _command_options(
    model: Annotated[Optional[str], typer.Option("--model", help="Your own model: package.module:function returning a "
                                                 "ResidualModel; --set model.options.KEY=VALUE are its keyword arguments.")] = None,
    trust_factory: TrustFactory = False,
    data: Annotated[
        Optional[Path], typer.Option("--data", help="Your own data: .npz/.npy/.csv/.h5 arrays, a .txt file or folder, a token file "
                                     "(.bin), a .csv/.jsonl of texts and labels, or a folder of class sub-folders of images.")
    ] = None,
    x_key: Annotated[Optional[str], typer.Option("--x-key", help="Input array/dataset name in .npz/.h5 (x).")] = None,
    y_key: Annotated[Optional[str], typer.Option("--y-key", help="Target array/dataset name in .npz/.h5 (y).")] = None,
    target_column: Annotated[
        Optional[str], typer.Option("--target-column", help="CSV target column, by name or index (last).")
    ] = None,
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
    """The options of `lpa train` that are not settings (where code and data come from, where the result goes)."""


def _signature() -> inspect.Signature:
    """`lpa train`'s options: the settings' flags, generated from the config fields that declare one
    (`lpa_cli.config.flag`: name, help and default in one place), then the command's own options."""
    settings = [inspect.Parameter(f"{section}_{f.name}", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=config_option(f))
                for section, f in flag_fields()]
    own = inspect.signature(_command_options, eval_str=True).parameters.values()
    return inspect.Signature([*settings, *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own)])


def settings_from(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The flags' values as config sections (None: not given, so the file, the defaults or --set decide)."""
    flags: dict[str, dict[str, Any]] = {}
    for section, f in flag_fields():
        value = values.get(f"{section}_{f.name}")
        flags.setdefault(section, {})[f.name] = value if value != [] else None
    model, data = values.get("model"), values.get("data")
    if model:
        flags["model"] |= {"arch": "custom", "factory": model}
    if flags["model"]["init"]:
        flags["model"]["init"] = str(Path(flags["model"]["init"]))
    if data is not None:
        from lpa_cli.data.tasks import data_spec

        flags["task"]["name"] = data_spec(str(data))
    for key in ("x_key", "y_key", "target_column"):
        flags["task"][f"options.{key}"] = values.get(key)
    return flags


def train_command(**values: Any) -> None:
    """Train a residual model; every depth's prediction is read through the shared head.

    Settings come from built-in defaults, then --config, then flags, then --set.
    """
    from lpa_cli.models.factory import check_factory
    from lpa_cli.training.finetune import describe_defaults, finetune_defaults
    from lpa_cli.training.trainer import is_main_process, train

    config, set_, model, trust_factory = values["config"], values["set_"], values["model"], values["trust_factory"]
    output, quiet, json_ = values["output"], values["quiet"], values["json_"]
    flags = settings_from(values)
    cfg = resolve(config, flags, set_ or [])
    check_factory(cfg.model.factory, config or "--set model.factory", model or "", trust_factory)  # only --model names code
    defaults = finetune_defaults(cfg.model.init, steps_given=cfg.train.steps != TrainConfig().steps or bool(cfg.train.epochs),
                                 objective=cfg.objective.name)
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
        disable=not err.is_terminal,  # a log gets plain lines (LogProgress); a live display would leave a blank line
    )
    with progress:
        result = train(cfg, output, force=values["force"], resume=values["resume"], snapshot_every=values["snapshot_every"],
                       callbacks=ProgressCallbacks(progress, err, describe_defaults(cfg, defaults) if defaults else ""),
                       trust_factory=trust_factory)
    if not main_process:
        return
    if json_:
        print_json(result_json(result))
        return
    out.print(depth_table(result.metrics, title=f"{result.config.objective.name} {result.config.model.arch} on {result.config.task.name}: per-depth test metrics"))
    out.print(f"saved [bold]{esc(result.path)}[/bold]  sha256 {result.sha256[:16]}…  ({result.training['seconds']:.1f} s)")


train_command.__signature__ = _signature()
