"""The trajectory charts (issue 42): alignment, KL to the final depth and calibration error per depth, one
line per input with its bootstrap band; shared by the monotonicity and compare reports."""

from __future__ import annotations

import plotly.graph_objects as go

from analyzers.report.page import Page, colour, depth_axis, label, rgba
from analyzers.trajectory_summary import TrajectoryResult

# measure -> (band field, chart title, y-axis title, what it means for choosing an exit depth)
CHARTS = {
    "alignment": ("alignment_band", "alignment of each step with its residual target", "cosine",
                  "The cosine between the step into a depth (from the traced depth before it) and the negative loss gradient there, "
                  "the residual target. The paper claims LPA's steps are aligned (near 1) and E2E's are not; a step that keeps the "
                  "answer and refines it can sit near 0 even when its error falls."),
    "kl_to_final": ("kl_to_final_band", "KL divergence from the final depth's distribution", "KL(p_final || p_k), nats",
                    "How far an exit's answers are from the full model's: 0 at the last depth. An exit depth whose KL is small "
                    "serves nearly the full model's distribution."),
    "calibration_error": ("calibration_error_band", "expected calibration error per depth", "ECE",
                          "Whether a depth's top probability means what it says (equal-width bins): a confidence threshold for "
                          "early exit is only as good as the calibration at the depths it exits."),
}


def figure(named: list[tuple[str, TrajectoryResult]], measure: str) -> go.Figure | None:
    """One measure's chart, or None where no input has it."""
    band_name, title, y_title, _ = CHARTS[measure]
    fig, drawn = go.Figure(), False
    for i, (text, t) in enumerate(named):
        values = getattr(t, measure)
        if values is None:
            continue
        pts = [(d, v, b) for d, v, b in zip(t.depths, values, getattr(t, band_name)) if v is not None]
        if not pts:
            continue
        drawn = True
        name, hue = label(text), colour(i)
        xs = [p[0] for p in pts]
        if all(p[2][0] is not None for p in pts) and t.bootstrap:
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=[p[2][1] for p in pts] + [p[2][0] for p in pts][::-1], fill="toself",
                                     fillcolor=rgba(hue, 0.2), line={"width": 0, "color": hue}, hoverinfo="skip", name=f"{name}: 95% band"))
        fig.add_trace(go.Scatter(x=xs, y=[p[1] for p in pts], mode="lines+markers", name=name, line={"color": hue}))
    if not drawn:
        return None
    fig.update_layout(xaxis=depth_axis(), yaxis_title=y_title, title=title, height=360)
    return fig


def add_charts(page: Page, named: list[tuple[str, TrajectoryResult]]) -> None:
    """Each measure's chart with its sentence, and the notes (a format-1 trace lacks the measures)."""
    named = [(n, t) for n, t in named if t is not None]
    if not named:
        return
    page.heading("The trajectory", 2)
    for measure, (_, _, _, meaning) in CHARTS.items():
        fig = figure(named, measure)
        if fig is not None:
            page.figure(fig)
            page.paragraph(meaning, "note")
    for text, t in named:
        if t.mean_prediction_depth is not None:
            page.paragraph(f"{text}: mean prediction depth {t.mean_prediction_depth:.2f} (the first depth from which a "
                           f"{t.unit}'s arg-max equals the last depth's and keeps it).", "note")
        for note in t.notes:
            page.paragraph(f"{text}: {note}", "note")
