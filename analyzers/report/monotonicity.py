"""The monotonicity report: curves with confidence bands, step tests, per-sample summaries."""

from __future__ import annotations

import html

import plotly.graph_objects as go

from analyzers.metrics import format_p
from analyzers.monotonicity import MonotonicityResult
from analyzers.report.page import Page, depth_axis


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4f}"
    return f"{v:.3e}"


def curve_figure(results: list[MonotonicityResult]) -> go.Figure:
    fig = go.Figure()
    for r in results:
        name = html.escape(r.source)  # plotly renders HTML in legend entries; a file name is text
        fig.add_trace(go.Scatter(x=r.depths + r.depths[::-1], y=r.ci_high + r.ci_low[::-1], fill="toself", opacity=0.2,
                                 line={"width": 0}, showlegend=False, hoverinfo="skip", name=name))
        fig.add_trace(go.Scatter(x=r.depths, y=r.curve, mode="lines+markers", name=name))
    spans = [max(r.curve) / min(r.curve) for r in results if min(r.curve) > 0]
    log = bool(spans) and max(spans) > 30
    fig.update_layout(xaxis=depth_axis(), yaxis_title=results[0].metric, yaxis_type="log" if log else "linear",
                      title="per-depth error with bootstrap confidence band", height=420)
    return fig


def step_figure(r: MonotonicityResult) -> go.Figure:
    labels = [f"{s.frm}→{s.to}" for s in r.steps]
    deltas = [s.delta for s in r.steps]
    fig = go.Figure(go.Bar(x=labels, y=deltas, marker_color=["#b00020" if s.significant else "#4a78b5" for s in r.steps],
                           error_y={"type": "data", "symmetric": False,
                                    "array": [s.ci_high - s.delta for s in r.steps],
                                    "arrayminus": [s.delta - s.ci_low for s in r.steps]}))
    fig.add_hline(y=r.tolerance, line_dash="dot", annotation_text="tolerance")
    fig.update_layout(title="paired change of the per-sample error at each step (red: significant rise)",
                      xaxis_title="step", yaxis_title="mean change", height=360)
    return fig


def add_result(page: Page, r: MonotonicityResult) -> None:
    page.heading(f"{r.source}: {r.verdict}")
    page.paragraph(
        f"{r.n:,} samples, metric {r.metric}, tolerance {r.tolerance_rel:g} of the descent ({fmt(r.tolerance)}), "
        f"alpha {r.alpha:g} (Holm-corrected over {len(r.steps)} steps), {r.bootstrap} bootstrap resamples (seed {r.seed}). "
        f"Strict verdict (tolerance 0): {'monotone' if r.monotone_strict else 'not monotone'}."
    )
    rows, classes = [], []
    for j, k in enumerate(r.depths):
        rows.append([k, fmt(r.curve[j]), f"[{fmt(r.ci_low[j])}, {fmt(r.ci_high[j])}]", r.first_within[j]])
        classes.append([])
    page.table(["depth", r.metric, "95% CI", "samples first within tolerance of final"], rows)
    rows, classes = [], []
    for s in r.steps:
        rows.append([f"{s.frm} → {s.to}", fmt(s.delta), f"[{fmt(s.ci_low)}, {fmt(s.ci_high)}]", fmt(s.t), format_p(s.p_holm),
                     "rise" if s.significant else ("rise (strict)" if s.significant_strict else "ok")])
        classes.append(["", "", "", "", "", "bad" if s.significant else ""])
    page.table(["step", "mean change", "CI", "t", "p (Holm-corrected)", "verdict"], rows, classes=classes)
    page.figure(step_figure(r))
    extra = [
        ["Kendall's tau (depth vs error)", fmt(r.kendall_tau), f"one-sided {format_p(r.kendall_p)}"],
        ["Sen's slope per depth", fmt(r.sen_slope), ""],
        ["distance to best non-increasing curve (RMS)", fmt(r.isotonic_rmse), f"{fmt(r.isotonic_rel)} of the descent"],
        ["samples whose own trajectory never rises beyond tolerance", f"{r.sample_monotone_share:.1%}", ""],
        ["mean depth at which samples reach their final error", fmt(r.mean_first_within), ""],
        [f"shallowest depth within {r.within:.0%} of the final error", r.deploy_depth, "deployable prefix"],
    ]
    if r.overthinking_share is not None:
        extra.append(["destructive overthinking (right before N, wrong at N)", f"{r.overthinking_share:.1%}", ""])
        extra.append(["wasteful depth (right at N and already before)", f"{r.wasteful_share:.1%}", ""])
    page.table(["statistic", "value", ""], extra)
    for note in r.notes:
        page.paragraph(note, "note")


def monotonicity_page(results: list[MonotonicityResult]) -> Page:
    page = Page("lpa monotonicity report")
    page.paragraph("Does error fall with depth? Method: docs/monotonicity.md in the lpa repository.", "note")
    page.figure(curve_figure(results))
    for r in results:
        add_result(page, r)
    page.raw_json("lpa-results", [r.to_dict() for r in results])
    return page
