"""`lpa monotonicity`: does error fall with depth? Statistics, violations, exit codes, HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from analyzers.metrics import format_p
from lpa_cli.commands.options import Depths, EvalData, ExitZero, Factory, Force, Json, PLOTLYJS_DEFAULT, PlotlyJs, Quiet, Seed, TrustFactory, Verify
from lpa_cli.commands.render import bars, consoles, distinct_names, esc, fmt, print_json


def _detail(r) -> list:
    table = Table(title=f"{esc(r.source)}: {r.metric} per depth", title_justify="left")
    for col in ("depth", r.metric, "95% CI", "step Δ", "error", "p of a rise (Holm)", ""):
        table.add_column(col, justify="right" if col != "" else "left")
    drawn = bars(r.curve)
    for j, k in enumerate(r.depths):
        if j == 0:
            step, direction, p, flag = "", "", "", ""
        else:
            s = r.steps[j - 1]
            step, direction, p = fmt(s.delta), s.direction, format_p(s.p_holm)
            flag = "[red]rise[/red]" if s.significant else ("[yellow]rise (strict)[/yellow]" if s.significant_strict else "")
        table.add_row(str(k), fmt(r.curve[j], r.metric), f"[{fmt(r.ci_low[j], r.metric)}, {fmt(r.ci_high[j], r.metric)}]", step, direction, p,
                      f"[cyan]{drawn[j]}[/cyan] {flag}")
    colour = "green" if r.monotone else "red"
    lines = [
        f"[bold {colour}]{r.verdict}[/bold {colour}] at alpha {r.alpha:g}, tolerance {r.tolerance_rel:g} of the descent "
        f"({fmt(r.tolerance)}); strict: {'monotone' if r.monotone_strict else 'not monotone'}",
        f"Kendall tau {r.kendall_tau:.3f} ({format_p(r.kendall_p)}), Sen slope {fmt(r.sen_slope)}/depth, "
        f"isotonic distance {fmt(r.isotonic_rmse)} ({r.isotonic_rel:.1%} of descent)",
        f"{r.sample_monotone_share:.1%} of samples never rise beyond tolerance; samples reach their final error at depth "
        f"{r.mean_first_within:.2f} on average; shallowest depth within {r.within:.0%} of final: [bold]{r.deploy_depth}[/bold]",
        "[dim]How to read it: \"p of a rise\" tests each step for a mean rise larger than the tolerance (one-sided, Holm-"
        f"corrected); below {r.alpha:g} flags a rise, and p = 1 means the error clearly falls there. The verdict is about the "
        "mean curve; single samples are noisy, so few of them fall at every step even when the mean does.[/dim]",
    ]
    if r.overthinking_share is not None:
        lines.append(f"destructive overthinking {r.overthinking_share:.1%}, wasteful depth {r.wasteful_share:.1%}")
    return [table, *lines, *[esc(n) for n in r.notes], *_trajectory(r)]


def _band(value, band) -> str:
    if value is None:
        return "-"
    return f"{value:.3f} [{band[0]:.3f}, {band[1]:.3f}]" if band[0] is not None else f"{value:.3f}"


def _trajectory(r) -> list:
    """The trajectory table (issue 42) and what each column means for choosing an exit depth."""
    t = r.trajectory
    if t is None:
        return []
    unit = "tokens" if t.unit == "token" else "samples"
    table = Table(title=f"{esc(r.source)}: the trajectory per depth", title_justify="left")
    cols = ["depth", "alignment (95% CI)", "error removed"] + (["KL to final", "calibration error", f"{unit} settled"]
                                                               if t.kl_to_final is not None or t.calibration_error is not None else [])
    for col in cols:
        table.add_column(col, justify="right")
    for j, k in enumerate(t.depths):
        row = [str(k), _band(t.alignment[j], t.alignment_band[j]), "-" if t.removal[j] is None else f"{t.removal[j]:.1%}"]
        if len(cols) > 3:
            row += [fmt(t.kl_to_final[j]) if t.kl_to_final else "-", fmt(t.calibration_error[j]) if t.calibration_error else "-",
                    f"{t.prediction_depth[j]:,}" if t.prediction_depth else "-"]
        table.add_row(*row)
    lines = ["[dim]Alignment: the cosine between the step into a depth and its residual target (the negative loss gradient "
             "before it); the paper's claim is that LPA's steps are aligned (near 1) and E2E's are not. Error removed: the share "
             "of the previous depth's mean error the step took away."]
    if len(cols) > 3:
        lines[0] += (f" For an exit at depth k: KL to final is how far its answers are from the full model's (0 at the last), "
                     f"the calibration error ({t.bins} equal-width bins) whether its top probability can serve as an exit "
                     f"threshold, and {unit} settled how many reach the final answer there and keep it"
                     + (f" (mean prediction depth {t.mean_prediction_depth:.2f})." if t.mean_prediction_depth is not None else "."))
    lines[0] += "[/dim]"
    return [table, *lines, *[esc(n) for n in t.notes]]


def _summary(results: list) -> Table:
    table = Table(title="monotonicity", title_justify="left")
    for col in ("input", "metric", "n", "verdict", "strict", "worst step", "p of a rise (Holm)", "deploy depth"):
        table.add_column(col, justify="left" if col in ("input", "verdict") else "right")
    for r, name in zip(results, distinct_names([r.source for r in results])):
        worst = max(r.steps, key=lambda s: s.delta)
        colour = "green" if r.monotone else "red"
        table.add_row(esc(name), r.metric, f"{r.n:,}", f"[{colour}]{r.verdict}[/{colour}]", "yes" if r.monotone_strict else "no",
                      f"{worst.frm}→{worst.to} {fmt(worst.delta)}", format_p(worst.p_holm), str(r.deploy_depth))
    return table


def monotonicity_command(
    inputs: Annotated[list[Path], typer.Argument(help="Traces (.h5) or checkpoints (traced on their test split first).")],
    metric: Annotated[Optional[str], typer.Option("--metric", help="mse, rmse | err, ce, acc | ce, ppl (default by task).")] = None,
    depths: Depths = None,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Allowed rise, as a fraction of the curve's total descent.")] = 0.01,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level (Holm-corrected across steps).")] = 0.05,
    within: Annotated[float, typer.Option("--within", help="Deploy depth: shallowest within this fraction of the final error.")] = 0.05,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for confidence intervals.")] = 1000,
    seed: Seed = None,
    lens: Annotated[Optional[str], typer.Option("--lens", help="Read depths through a fitted probe: tuned:FILE or linear:FILE.")] = None,
    report: Annotated[bool, typer.Option("--report", help="Write a self-contained HTML report next to the (first) input.")] = False,
    report_path: Annotated[Optional[Path], typer.Option("--report-path", help="Write the HTML report here.")] = None,
    plotlyjs: PlotlyJs = PLOTLYJS_DEFAULT,
    verify: Verify = True,
    data: EvalData = None,
    factory: Factory = None,
    trust_factory: TrustFactory = False,
    force: Force = False,
    exit_zero: ExitZero = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Test whether error falls with depth: CIs, paired step tests, trend, per-sample summaries.

    Exit 0 when every input is monotone, 1 when one is not (unless --exit-zero), 2 on bad input.
    """
    from lpa_core.atomic import check_writable
    from lpa_cli.workflows.monotonicity import analyze, write_report

    target = (report_path or inputs[0].with_suffix(".monotonicity.html")) if (report or report_path) else None
    if target is not None:
        check_writable(target, force, inputs=inputs)  # before the work, not after it
        from lpa_core.errors import UsageError
        from analyzers.report.page import PLOTLYJS

        if plotlyjs not in PLOTLYJS:
            raise UsageError(f"--plotlyjs must be {' or '.join(PLOTLYJS)}, got {plotlyjs!r}")
    results = [
        analyze(p, lens=lens, verify=verify, factory=factory or "", trust_factory=trust_factory, data=data, metric=metric, depths=depths, tolerance=tolerance, alpha=alpha,
                within=within, bootstrap=bootstrap, seed=seed or 0)
        for p in inputs
    ]
    written = write_report(results, target, inputs, force, plotlyjs) if target is not None else None
    if json_:
        data = [r.to_dict() for r in results]
        print_json({"results": data, "report": str(written) if written else None} if len(results) > 1 else data[0] | {"report": str(written) if written else None})
    else:
        out, _ = consoles(quiet)
        if len(results) == 1:
            for item in _detail(results[0]):
                out.print(item)
        else:
            out.print(_summary(results))
        if written:
            out.print(f"report: [bold]{esc(written)}[/bold]")
    if not exit_zero and not all(r.monotone for r in results):
        raise typer.Exit(1)
