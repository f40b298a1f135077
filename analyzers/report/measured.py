"""The "Early exit, measured" section of the compare report: each exit setting run for real and timed
in rounds against the full model, beside the speed-up its FLOPs allow."""

from __future__ import annotations

import plotly.graph_objects as go

from analyzers.compare_types import CompareResult
from analyzers.report.monotonicity import fmt
from analyzers.report.page import Page, colour as _colour, label as _name


def measured_figure(r: CompareResult) -> go.Figure:
    fig = go.Figure()
    for i, (g, points) in enumerate(r.measured.items()):
        for strategy in dict.fromkeys(p.strategy for p in points):
            pts = [p for p in points if p.strategy == strategy]
            fig.add_trace(go.Scatter(x=[p.measured_speedup for p in pts], y=[p.quality for p in pts], mode="lines+markers",
                                     name=f"{_name(g)}: {strategy}, measured", text=[p.setting for p in pts], line={"color": _colour(i)}))
            sim = [p for p in pts if p.simulated_speedup is not None]
            if sim:
                fig.add_trace(go.Scatter(x=[p.simulated_speedup for p in sim], y=[p.quality for p in sim], mode="markers",
                                         marker={"symbol": "x", "color": _colour(i)}, name=f"{_name(g)}: {strategy}, simulated (FLOPs)",
                                         text=[p.setting for p in sim]))
    fig.add_vline(x=1, line_dash="dot")
    fig.update_layout(title="early exit run for real: quality against measured speed-up (x: the FLOPs-based simulation)",
                      xaxis_title="speed-up over all depths (this machine)", yaxis_title="accuracy / agreement with full decoding", height=420)
    return fig


def measured_section(page: Page, r: CompareResult) -> None:
    if not any(r.measured.values()):
        return
    page.heading("Early exit, measured")
    page.paragraph("Each setting was run for real on the first run of each group (lpa predict --exit, lpa generate --strategy) and "
                   "timed against the same model through all depths, in 3 rounds "
                   "after a warm-up, each round timing the full model and then every setting back to back: the table gives the "
                   "median speed-up and the range of the rounds. Beside it, the speed-up a simulation from FLOPs per depth "
                   "claims: the gap is the cost of reading the head at every depth and of smaller batches. For language models, "
                   "quality is the share of tokens equal to full greedy decoding's (self-speculation: 1 by construction).", "note")
    page.figure(measured_figure(r))
    rows = [[g, p.strategy, p.setting, fmt(p.quality), fmt(p.full_quality), "-" if p.mean_depth is None else f"{p.mean_depth:.2f}",
             p.speedup_text(), "-" if p.simulated_speedup is None else f"{p.simulated_speedup:.2f}x"]
            for g, points in r.measured.items() for p in points]
    page.table(["group", "strategy", "setting", "quality", "full model", "mean depth", "measured speed-up (range)", "simulated (FLOPs)"],
               rows, left=3)
    if any(p.beyond_flops for points in r.measured.values() for p in points):
        page.paragraph("A measured speed-up above its FLOPs bound is flagged: skipping depths cannot save more time than the "
                       "work those depths do, so such a figure is timing noise (or a difference in overheads) on this machine, "
                       "not a speed-up to expect. The range is the spread over the rounds; rerun on a quiet machine, or trust "
                       "the simulated column.", "note")
