"""`lpa trace`: per-depth predictions, errors and (optionally) block states of a model, into HDF5."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from lpa_cli.commands.options import Depths, Device, Factory, Force, Json, Output, Quiet, TrustFactory, Verify
from lpa_cli.commands.render import consoles, depth_table, esc, print_json, progress_lines


class SpeedColumn(ProgressColumn):
    def render(self, task) -> Text:
        # rich's windowed speed needs several updates; short traces fall back to the overall rate
        speed = task.speed or (task.completed / task.elapsed if task.elapsed else 0)
        return Text(f"{speed:,.0f} samples/s")


def progress_bar(console) -> Progress:
    return Progress(TextColumn("[bold]tracing"), BarColumn(), MofNCompleteColumn(), SpeedColumn(), TimeRemainingColumn(), console=console,
                    disable=not console.is_terminal)  # a log gets plain lines; a live display would leave a blank line


def trace_command(
    checkpoint: Annotated[Path, typer.Argument(help="An lpa checkpoint (.safetensors) or a local Hugging Face model directory.")],
    data: Annotated[
        Optional[str], typer.Option("--data", help="Trace on this data instead: a task spec (digits, text:FILE...) or a .npz/.csv/.h5 file.")
    ] = None,
    split: Annotated[str, typer.Option("--split", help="train or test split of the data.")] = "test",
    output: Output = None,
    states: Annotated[bool, typer.Option("--states/--no-states", help="Also store the residual stream at every depth.")] = False,
    predictions: Annotated[bool, typer.Option("--predictions/--no-predictions", help="Store per-depth head outputs.")] = True,
    depths: Depths = ":",
    dtype: Annotated[str, typer.Option("--dtype", help="float32 or float16 for predictions and states.")] = "float32",
    compression: Annotated[str, typer.Option("--compression", help="none, lzf or gzip.")] = "none",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per forward pass (0: by task kind).")] = 0,
    limit: Annotated[int, typer.Option("--limit", help="Trace only the first N samples (0: all).")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted trace (<output>.partial).")] = False,
    text: Annotated[
        Optional[str], typer.Option("--text", help="Hugging Face models: UTF-8 text file to evaluate on (default: built-in corpus).")
    ] = None,
    context: Annotated[Optional[int], typer.Option("--context", help="Hugging Face models: tokens per sequence (default: 128, "
                                                   "or the model's positions when fewer; more than it has is refused).")] = None,
    bos: Annotated[bool, typer.Option("--bos/--no-bos", help="Hugging Face models: start every window with the BOS token "
                                      "(its first text token is then predicted from BOS alone).")] = False,
    device: Device = None,
    verify: Verify = True,
    factory: Factory = None,
    trust_factory: TrustFactory = False,
    force: Force = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Record per-depth predictions (and block states) of a residual model in an HDF5 trace.

    Without flags, an lpa checkpoint is traced on its own task's test split into CKPT.test.h5.
    """
    from lpa_cli.models.open import source_kind
    from lpa_cli.serving.trace import trace_checkpoint

    out, err = consoles(quiet or json_)
    options = dict(depths=depths, states=states, predictions=predictions, dtype=dtype, compression=compression,
                   batch_size=batch_size, limit=limit, resume=resume, force=force)
    with progress_bar(err) as progress:
        bars: list = []  # the bar appears with the first batch, so load errors print one line only

        def bar(done: int, total: int) -> None:
            if not bars:
                bars.append(progress.add_task("trace", total=total))
            progress.update(bars[0], completed=done, total=total)

        report = bar if err.is_terminal else progress_lines(err, "traced", "samples")  # a live bar, or plain lines in a log

        if source_kind(checkpoint, "CHECKPOINT") == "hf":
            from lpa_cli.serving.trace_hf import trace_hf

            result = trace_hf(checkpoint, output, text=text, context=context, bos=bos, device=device or "cpu", progress=report, **options)
        else:
            result = trace_checkpoint(checkpoint, output, split=split, data=data, verify=verify, device=device or "cpu", progress=report,
                                      factory=factory or "", trust_factory=trust_factory, **options)
    if json_:
        print_json(result.to_dict())
        return
    out.print(depth_table(result.metrics, title=f"{result.path}: {result.n} samples, depths {', '.join(map(str, result.depths))}",
                          depths=result.depths))
    resumed = f", resumed at sample {result.resumed_from}" if result.resumed_from else ""
    out.print(f"wrote [bold]{esc(result.path)}[/bold] ({result.bytes / 1e6:.1f} MB, {result.samples_per_s:,.0f} samples/s{resumed})")
