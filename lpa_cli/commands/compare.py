"""`lpa compare`: LPA vs E2E (or any groups of runs) diffed into one self-contained HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from lpa_cli.commands.options import PLOTLYJS_DEFAULT, Factory, Force, Json, Output, PlotlyJs, Quiet, Seed, TrustFactory
from lpa_cli.commands.render import consoles, esc, fmt, print_json


def trajectory_table(result) -> list:
    """Alignment, KL to final and calibration per depth, the groups side by side, and what they mean."""
    groups = result.trajectory
    if not groups:
        return []
    measures = [(m, title) for m, title in (("alignment", "alignment"), ("kl_to_final", "KL to final"), ("calibration_error", "calibration"))
                if any(getattr(t, m) is not None and any(v is not None for v in getattr(t, m)) for t in groups.values())]
    table = Table(title="the trajectory per depth", title_justify="left")
    table.add_column("depth", justify="right")
    for _, title in measures:
        for g in groups:
            table.add_column(f"{title}: {esc(g)}", justify="right")
    for k in sorted({k for t in groups.values() for k in t.depths}):
        table.add_row(str(k), *[fmt(t.at(k, m)) for m, _ in measures for t in groups.values()])
    return [table, "[dim]Alignment: the cosine between each step and its residual target (the paper claims LPA's steps are aligned "
                   "and E2E's are not). For an exit depth: KL to final is how far its answers are from the full model's, calibration "
                   "whether its confidence can be trusted as an exit threshold.[/dim]"]


def compare_command(
    run: Annotated[list[str], typer.Option("--run", help="NAME=PATH (checkpoint or trace); repeat a NAME for more seeds; globs allowed.")],
    output: Output = None,
    metric: Annotated[Optional[str], typer.Option("--metric", help="Metric to compare (default by task).")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for each run's CIs.")] = 1000,
    seed: Seed = None,
    measure: Annotated[bool, typer.Option("--measure/--no-measure", help="Also run early exit for real on each group's first "
                                          "checkpoint and time it (classifiers, language models).")] = True,
    plotlyjs: PlotlyJs = PLOTLYJS_DEFAULT,
    factory: Factory = None,
    trust_factory: TrustFactory = False,
    force: Force = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Compare groups of runs: config diff, per-depth curves and gaps, final-depth test, monotonicity,
    cost per depth (train once, use N models), early exit, heatmaps, training curves.

    Runs evaluated on different test data are refused unless --force (which also allows overwriting -o).
    """
    from lpa_core.atomic import check_writable
    from lpa_core.errors import UsageError
    from analyzers.report.compare import compare_page
    from analyzers.report.page import PLOTLYJS
    from lpa_cli.workflows.compare import compare_runs, parse_runs

    if plotlyjs not in PLOTLYJS:  # before the work, not after it
        raise UsageError(f"--plotlyjs must be {' or '.join(PLOTLYJS)}, got {plotlyjs!r}")
    runs = [p for paths in parse_runs(run).values() for p in paths]
    target = check_writable(output or Path("compare.html"), force, inputs=runs + [p.with_suffix(".jsonl") for p in runs])
    result = compare_runs(run, metric=metric, force=force, seed=seed or 0, bootstrap=bootstrap, measure=measure,
                          factory=factory or "", trust_factory=trust_factory)
    compare_page(result).save(target, force=force, plotlyjs=plotlyjs)
    if json_:
        print_json(result.to_dict() | {"report": str(target)})
        return
    out, _ = consoles(quiet)
    table = Table(title=f"per-depth {result.metric}", title_justify="left")
    table.add_column("depth", justify="right")
    for g, c in result.curves.items():
        table.add_column(f"{esc(g)} ({c.seeds})", justify="right")
    depths = sorted({k for c in result.curves.values() for k in c.depths})
    for k in depths:
        table.add_row(str(k), *[fmt(c.mean[c.depths.index(k)], result.metric) if k in c.depths else "-" for c in result.curves.values()])
    out.print(table)
    for item in trajectory_table(result):
        out.print(item)
    for g in result.never_learned:
        out.print(f"[bold red]{esc(g)} never learned[/bold red]: its final depth is no better than a constant predictor (no descent)")
    for f in result.final:
        out.print(esc(f.statement))
    for x in result.runs:
        colour = "green" if x.monotone else "red"
        out.print(f"  {esc(x.group)}: {esc(x.path)}: [{colour}]{x.verdict}[/{colour}], deploy depth {x.deploy_depth}")
    for note in result.notes:
        out.print(f"[yellow]{esc(note)}[/yellow]")
    out.print(f"report: [bold]{esc(target)}[/bold]")
