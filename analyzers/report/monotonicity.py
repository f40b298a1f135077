"""The monotonicity report: curves with confidence bands, step tests, per-sample summaries."""

from __future__ import annotations

import math
from pathlib import PurePath

import plotly.graph_objects as go

from analyzers.metrics import format_p, format_t
from analyzers.monotonicity import MonotonicityResult
from analyzers.report.page import Page, colour, depth_axis, label, log_axis, rgba
from analyzers.report.trajectory import add_charts


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v == 0 or 1e-3 <= abs(v) < 1e4:
        return f"{v:.4f}"
    return f"{v:.3e}"


def legend_names(sources: list[str]) -> list[str]:
    """Each input's file name, or its whole path where two inputs share a file name (a legend has room
    for a name, not for a path)."""
    names = [PurePath(s).name or s for s in sources]
    return [n if names.count(n) == 1 else s for n, s in zip(names, sources)]


def curve_figure(results: list[MonotonicityResult]) -> go.Figure:
    fig = go.Figure()
    for i, (r, text) in enumerate(zip(results, legend_names([r.source for r in results]))):
        name, hue = label(text), colour(i)  # plotly renders HTML in legend entries; a file name is text
        fig.add_trace(go.Scatter(x=r.depths + r.depths[::-1], y=r.ci_high + r.ci_low[::-1], fill="toself", fillcolor=rgba(hue, 0.2),
                                 line={"width": 0, "color": hue}, hoverinfo="skip", name=f"{name}: 95% bootstrap band"))
        fig.add_trace(go.Scatter(x=r.depths, y=r.curve, mode="lines+markers", name=name, line={"color": hue}))
    log = log_axis([v for r in results for v in r.curve + r.ci_low])
    fig.update_layout(xaxis=depth_axis(), yaxis_title=results[0].metric + (" (log axis)" if log else ""), yaxis_type="log" if log else "linear",
                      title="per-depth error with bootstrap confidence band", height=420)
    return fig


def symlog(values: list[float], unit: float) -> list[float]:
    """sign(v) log10(1 + |v| / unit): linear near 0, logarithmic beyond ``unit``, both signs kept."""
    return [math.copysign(math.log10(1 + abs(v) / unit), v) for v in values]


def _symlog_ticks(lo: float, hi: float, unit: float) -> tuple[list[float], list[str]]:
    """Tick values (in symlog units) and their labels (in data units): 0 and signed powers of ten."""
    values = [0.0]
    for k in range(math.floor(math.log10(unit)) + 1, math.ceil(math.log10(max(abs(lo), abs(hi), unit))) + 1):
        values += [10.0**k, -(10.0**k)]
    values = [v for v in sorted(values) if lo - unit <= v <= hi + unit]
    return symlog(values, unit), [_power(v) for v in values]


def _power(v: float) -> str:
    """A signed power of ten, short (``-1e-5``, ``0.01``, ``0``): long tick labels crowd the axis title."""
    if v == 0:
        return "0"
    k = round(math.log10(abs(v)))
    return ("-" if v < 0 else "") + (f"{10.0**k:g}" if -2 <= k <= 3 else f"1e{k}")


def step_figure(r: MonotonicityResult) -> go.Figure:
    """The paired change at each step, with its interval; on a symlog axis when one step dwarfs the others,
    so the small steps (where a rise would hide) stay readable."""
    labels = [f"{s.frm}→{s.to}" for s in r.steps]
    deltas, highs, lows = [s.delta for s in r.steps], [s.ci_high for s in r.steps], [s.ci_low for s in r.steps]
    sizes = sorted(abs(d) for d in deltas if d)
    unit = sizes[len(sizes) // 2] / 10 if sizes else 0.0  # a tenth of the median step: linear below it
    scaled = bool(sizes) and sizes[-1] / sizes[len(sizes) // 2] > 20
    f = (lambda v: symlog(v, unit)) if scaled else (lambda v: v)
    y, hi, lo = f(deltas), f(highs), f(lows)
    fig = go.Figure(go.Bar(x=labels, y=y, marker_color=["#b00020" if s.significant else "#4a78b5" for s in r.steps],
                           text=[f"change {fmt(s.delta)} [{fmt(s.ci_low)}, {fmt(s.ci_high)}], error {s.direction}" for s in r.steps],
                           hoverinfo="text+x", error_y={"type": "data", "symmetric": False, "array": [a - b for a, b in zip(hi, y)],
                                                        "arrayminus": [b - a for a, b in zip(lo, y)]}))
    fig.add_hline(y=f([r.tolerance])[0], line_dash="dot", annotation_text="tolerance")
    axis = {"title": "mean change" + (" (symlog axis)" if scaled else "")}
    if scaled:
        axis["tickvals"], axis["ticktext"] = _symlog_ticks(min(lows + [r.tolerance]), max(highs + [r.tolerance]), unit)
    fig.update_layout(title="paired change of the per-sample error at each step (red: significant rise)",
                      xaxis_title="step", yaxis=axis, height=360)
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
        rows.append([f"{s.frm} → {s.to}", s.direction, fmt(s.delta), f"[{fmt(s.ci_low)}, {fmt(s.ci_high)}]", format_t(s.t), format_p(s.p_holm),
                     "rise" if s.significant else ("rise (strict)" if s.significant_strict else "ok")])
        classes.append(["", "", "", "", "", "", "bad" if s.significant else ""])
    page.table(["step", "error", "mean change", "CI", "t (vs tolerance)", "p of a rise (Holm-corrected)", "verdict"], rows, left=2, classes=classes)
    page.paragraph("Each step is tested one-sided for a rise beyond the tolerance: a falling step's p of a rise is close to 1 "
                   "by construction (it says the error did not rise). \"no spread\": every sample changed by the same amount.", "note")
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
    add_charts(page, list(zip(legend_names([r.source for r in results]), [r.trajectory for r in results])))
    page.raw_json("lpa-results", [r.to_dict() for r in results])
    return page
