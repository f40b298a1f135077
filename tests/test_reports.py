"""The HTML reports as a reader gets them: small enough to mail (inline SVG figures by default, plotly
kept behind --plotlyjs), every figure drawn, per-depth training curves on a log axis, a step chart that
stays readable when one step dominates, legend swatches in their lines' colours, a note where a section
does not apply, and falling steps shown as falling."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from analyzers.monotonicity import MonotonicityResult, Step
from analyzers.report.monotonicity import monotonicity_page, step_figure, symlog
from analyzers.report.page import PLOTLYJS
from analyzers.report.raster import png_data_uri
from analyzers.report.svg import figure_svg
from lpa_cli.commands.options import PLOTLYJS_DEFAULT
from tests.cli_helpers import assert_self_contained, run_json

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
MAX_REPORT = 1_500_000


def test_the_flag_default_is_the_pages():
    assert PLOTLYJS_DEFAULT == PLOTLYJS[0] == "none"


def test_compare_and_monotonicity_reports_are_small_and_offline(tmp_path):
    report = tmp_path / "c.html"
    run_json("compare", "--no-measure", "--run", f"LPA={SAMPLES / 'mlp-stripe-lpa.safetensors'}",
             "--run", f"E2E={SAMPLES / 'mlp-stripe-e2e.safetensors'}", "-o", report)
    html = report.read_text()
    assert report.stat().st_size <= MAX_REPORT and "<script src" not in html and "Plotly" not in html
    assert_self_contained(html)
    assert html.count("<svg") >= 5 and "data:image/png;base64," in html  # curves, gap, cost, heatmaps (PNG), training
    embedded = json.loads(re.search(r'<script type="application/json" id="lpa-compare">(.*?)</script>', html, re.S).group(1))
    assert all(isinstance(v, str) for v in embedded["training"].values()) and "groups" not in embedded["heatmaps"]  # in --json only
    mono = tmp_path / "m.html"
    run_json("monotonicity", SAMPLES / "mlp-stripe-lpa.safetensors", "--report-path", mono)
    assert mono.stat().st_size <= MAX_REPORT and mono.read_text().count("<svg") == 3  # curve, steps, alignment (a regressor: no KL, no ECE)
    embed = tmp_path / "e.html"
    run_json("monotonicity", SAMPLES / "mlp-stripe-lpa.safetensors", "--report-path", embed, "--plotlyjs", "embed")
    assert "Plotly.newPlot" in embed.read_text() and embed.stat().st_size > 4_000_000  # the interactive page is still there


def test_training_curves_show_every_depth_on_a_log_axis(tmp_path):
    report = tmp_path / "c.html"
    run_json("compare", "--no-measure", "--run", f"LPA={SAMPLES / 'resnet-digits-lpa.safetensors'}",
             "--run", f"E2E={SAMPLES / 'resnet-digits-e2e.safetensors'}", "-o", report)
    html = report.read_text()
    svg = next(s for s in re.findall(r"<svg.*?</svg>", html, re.S) if "training loss at every depth" in s)
    assert all(f">depth {k}<" in svg for k in range(7))  # the ResNet's depths 0..6 in the legend
    assert svg.count("<polyline") >= 7 + 1  # LPA: a line per depth; E2E: its final depth
    assert "Does not apply" not in html  # a classifier: every section applies


def test_regression_reports_say_which_sections_do_not_apply(tmp_path):
    report = tmp_path / "c.html"
    run_json("compare", "--no-measure", "--run", f"LPA={SAMPLES / 'mlp-stripe-lpa.safetensors'}",
             "--run", f"E2E={SAMPLES / 'mlp-stripe-e2e.safetensors'}", "-o", report)
    html = report.read_text()
    for heading in ("Early exit", "When samples are first right"):
        section = html.split(f"<h2>{heading}</h2>", 1)[1].split("<h2>", 1)[0]
        assert "Does not apply here" in section and "regression" in section


def _step(frm, delta, t=1.0, p=1.0):
    return Step(frm, frm + 1, delta, delta - 0.01 * abs(delta), delta + 0.01 * abs(delta), t, p, p, False, False)


def test_the_step_chart_goes_symlog_when_one_step_dominates():
    r = MonotonicityResult.__new__(MonotonicityResult)
    r.steps, r.tolerance = [_step(0, -10.0), _step(1, -0.01), _step(2, -0.02), _step(3, 0.005)], 1e-4
    fig = step_figure(r)
    assert "symlog" in fig.layout.yaxis.title.text
    y = list(fig.data[0].y)
    assert y == pytest.approx(symlog([-10.0, -0.01, -0.02, 0.005], unit=0.002))  # a tenth of the median step (0.02)
    assert abs(y[1]) > 0.2 * abs(y[0])  # the small steps are visible beside the big one (linear: 1/1000 of it)
    labels = list(fig.layout.yaxis.ticktext)
    assert "0" in labels and any(t.startswith("-10") for t in labels)
    r.steps = [_step(0, -1.0), _step(1, -0.5), _step(2, -0.4)]
    assert "symlog" not in step_figure(r).layout.yaxis.title.text  # comparable steps: a linear axis


def test_falling_steps_are_shown_as_falling_and_no_infinite_t(tmp_path):
    from lpa_cli.workflows.monotonicity import analyze

    result = analyze(SAMPLES / "mlp-stripe-lpa.safetensors")
    result.steps[0] = _step(0, -0.02, t=float("-inf"))
    html = monotonicity_page([result]).render()
    assert "inf" not in html.replace("info", "") and "no spread" in html
    table = html.split("p of a rise (Holm-corrected)", 1)[1].split("</table>", 1)[0]
    assert table.count("<td class=\"l\">falls</td>") >= 1


def test_legend_swatches_match_their_lines():
    fig = go.Figure([go.Scatter(x=[0, 1, 1, 0], y=[1, 2, 1.5, 0.5], fill="toself", fillcolor="rgba(214,39,40,0.2)",
                                line={"width": 0, "color": "#d62728"}, name="E2E: band"),
                     go.Scatter(x=[0, 1], y=[1, 1.8], mode="lines+markers", line={"color": "#d62728"}, name="E2E")])
    svg = figure_svg(fig)
    legend = svg.split(">E2E: band<")[0].rsplit("<g>", 1)[1]
    assert 'fill="rgba(214,39,40,0.2)"' in legend and 'stroke="#d62728"' in legend
    assert svg.count('stroke="#d62728"') >= 2


def test_svg_draws_bars_heatmaps_and_log_axes_and_refuses_the_rest():
    fig = go.Figure([go.Bar(x=["a", "b"], y=[1, -2], marker_color=["red", "blue"], name="bars")])
    svg = figure_svg(fig)
    assert svg.count('fill="red"') == 1 and svg.count('fill="blue"') == 1 and ">a<" in svg
    log = go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 10, 1000]))
    log.update_layout(yaxis_type="log")
    assert all(f">{v}<" in figure_svg(log) for v in ("1", "10", "100", "1000"))
    heat = go.Figure(go.Heatmap(z=np.arange(6.0).reshape(2, 3)))
    assert "data:image/png;base64," in figure_svg(heat)
    with pytest.raises(ValueError, match="pie"):
        figure_svg(go.Figure(go.Pie(values=[1, 2])))


def test_png_encoder_round_trips_through_pillow():
    pil = pytest.importorskip("PIL.Image", reason="Pillow (the images extra) reads the PNG back")
    import base64
    import io

    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    uri = png_data_uri(rgb)
    back = np.asarray(pil.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
    assert np.array_equal(back, rgb)
