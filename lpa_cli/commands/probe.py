"""`lpa probe`: fit per-depth read-outs (tuned lens, linear probes) on one trace, evaluate on another."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lpa_cli.commands.options import Depths, Force, Json, Output, Quiet
from lpa_cli.commands.render import consoles, esc, fmt, print_json


def probe_command(
    trace: Annotated[Path, typer.Argument(help="Trace to evaluate on (held-out split, recorded with --states).")],
    fit_on: Annotated[Path, typer.Option("--fit-on", help="Training-split trace (with --states) to fit the probe on.")],
    kind: Annotated[str, typer.Option("--kind", help="logit, tuned or linear.")] = "tuned",
    output: Output = None,
    depths: Depths = None,
    ridge: Annotated[float, typer.Option("--ridge", help="Ridge strength, relative to the mean feature variance.")] = 1e-3,
    force: Force = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Fit per-depth read-outs for models not trained with LPA; compare them to the logit lens.

    The saved probe is used with `lpa monotonicity TRACE --lens tuned:FILE`.
    """
    from lpa_cli.workflows.probe import probe

    result = probe(trace, fit_on, kind, output, depths, ridge, force)
    if json_:
        print_json(result)
        return
    out, _ = consoles(quiet)
    metric = next(m for m in ("mse", "ce", "acc") if m in result["logit"])
    extra = "acc" if "acc" in result["logit"] and metric != "acc" else None
    table = Table(title=f"{kind} probe fitted on {esc(fit_on)}, evaluated on {esc(trace)}", title_justify="left")
    table.add_column("depth", justify="right")
    for label in (f"logit {metric}", f"{kind} {metric}") + ((f"logit {extra}", f"{kind} {extra}") if extra else ()):
        table.add_column(label, justify="right")
    for j, k in enumerate(result["depths"]):
        row = [str(k), fmt(result["logit"][metric][j], metric), fmt(result["probe"][metric][j], metric)]
        if extra:
            row += [fmt(result["logit"][extra][j], extra), fmt(result["probe"][extra][j], extra)]
        table.add_row(*row)
    out.print(table)
    if result["output"]:
        out.print(f"saved [bold]{esc(result['output'])}[/bold] (use: lpa monotonicity {esc(trace)} --lens {kind}:{esc(result['output'])})")
