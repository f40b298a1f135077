"""`lpa reproduce`: the paper's experiments and the referee's questions, one command each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown
from rich.markup import escape

from lpa_cli.commands.options import Device, Json, Precision, Quiet
from lpa_cli.commands.render import consoles, print_json


def reproduce_command(
    experiment: Annotated[str, typer.Argument(help="surface, digits, lm, llm, minilm, lm-cost, ablation, counterexample, trajectory or all.")],
    seeds: Annotated[int, typer.Option("--seeds", help="Seeds per group.")] = 3,
    quick: Annotated[bool, typer.Option("--quick", help="Small budgets (all experiments in minutes, targets not expected).")] = False,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder for checkpoints, reports and summaries.")] = Path("results"),
    device: Device = None,
    precision: Precision = None,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Train LPA and E2E on the same budget and seeds, compare, and print a summary with targets.

    A configuration already trained under the output folder is reused, so an interrupted run continues.
    """
    from lpa_cli.workflows.reproduce import reproduce

    out, err = consoles(quiet or json_)
    hardware = {k: v for k, v in (("device", device), ("precision", precision)) if v is not None}  # else the config's defaults
    text, outcomes = reproduce(experiment, seeds, quick, output, progress=lambda msg: err.print(f"[dim]{escape(msg)}[/dim]"), **hardware)
    if json_:
        print_json([{"experiment": o["experiment"], "study": o["study"], "report": o["report"], "metrics": o["metrics"],
                     "targets": [{"target": t, "met": ok, "value": v} for t, ok, v in o["targets"]]} for o in outcomes])
        return
    out.print(Markdown(text))
    out.print(f"summary: [bold]{Path(output) / f'summary-{experiment}.md'}[/bold]")
