"""The compare report: one self-contained page a user can mail to a colleague.

The page is a list of sections (`SECTIONS`); each is a function ``(page, result) -> None`` that adds
its heading, figures and tables, or nothing when the result has nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyzers.compare_types import CompareResult
from analyzers.report.measured import measured_section
from analyzers.report.monotonicity import fmt
from analyzers.report.page import Page, colour as _colour, depth_axis, label as _name, log_axis, rgba as _rgba
from analyzers.report.trajectory import add_charts

def curves_figure(r: CompareResult) -> go.Figure:
    fig = go.Figure()
    for i, (g, c) in enumerate(r.curves.items()):
        if all(v is not None and v == v for v in c.low + c.high):
            fig.add_trace(go.Scatter(x=c.depths + c.depths[::-1], y=c.high + c.low[::-1], fill="toself", fillcolor=_rgba(_colour(i), 0.2),
                                     line={"width": 0, "color": _colour(i)}, hoverinfo="skip", name=f"{_name(g)}: {_name(c.band)}"))
        fig.add_trace(go.Scatter(x=c.depths, y=c.mean, mode="lines+markers", line={"color": _colour(i)},
                                 name=f"{_name(g)} ({c.seeds} seed{'s' * (c.seeds > 1)}{', mean' if c.seeds > 1 else ''})"))
        if c.seeds > 1:
            xs = [k for _ in c.per_seed for k in c.depths]
            ys = [v for curve in c.per_seed for v in curve]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", marker={"color": _colour(i), "size": 5, "opacity": 0.6},
                                     name=f"{_name(g)}: each seed"))
    log = log_axis([v for c in r.curves.values() for v in c.mean + c.low])
    fig.update_layout(title="per-depth error (band: 95% interval, see legend)", xaxis=depth_axis(), yaxis_title=r.metric,
                      yaxis_type="log" if log else "linear", height=440)
    return fig


def gap_figure(r: CompareResult) -> go.Figure:
    fig = go.Figure()
    for i, g in enumerate(sorted({x.group for x in r.gaps})):
        rows = [x for x in r.gaps if x.group == g]
        fig.add_trace(go.Scatter(x=[x.depth for x in rows], y=[x.gap for x in rows], mode="lines+markers",
                                 name=f"{_name(g)} − {_name(rows[0].vs)}", line={"color": _colour(i + 1)},
                                 error_y={"type": "data", "symmetric": False, "array": [x.high - x.gap for x in rows],
                                          "arrayminus": [x.gap - x.low for x in rows]}))
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(title="per-depth gap of the per-sample error (paired over test samples, 95% CI)", xaxis=depth_axis(),
                      yaxis_title="difference", height=380)
    return fig


def cost_figure(r: CompareResult, key: str, label: str) -> go.Figure:
    fig = go.Figure()
    for i, (g, c) in enumerate(r.cost.items()):
        values = getattr(c, key)
        if not values:
            continue
        fig.add_trace(go.Scatter(x=values, y=c.error, mode="lines+markers", name=_name(g), text=[f"depth {k}" for k in c.depths],
                                 line={"color": _colour(i)}))
        if key == "flops" and c.pareto:
            idx = [c.depths.index(k) for k in c.pareto]
            fig.add_trace(go.Scatter(x=[values[j] for j in idx], y=[c.error[j] for j in idx], mode="markers",
                                     marker={"symbol": "diamond-open", "size": 12, "color": _colour(i)}, name=f"{_name(g)} Pareto front"))
    fig.update_layout(title=f"train once, use N models: error against {label} for every depth", xaxis_title=label, yaxis_title=r.metric,
                      yaxis_type="log" if log_axis([v for c in r.cost.values() for v in c.error]) else "linear", height=400)
    return fig


def exit_figure(r: CompareResult) -> go.Figure:
    fig = go.Figure()
    # one colour a group, and a dash and a marker a rule: the legend tells the three rules apart
    styles = {"max_prob": ("solid", "circle"), "entropy": ("dash", "diamond"), "patience": ("dot", "x")}
    for i, (g, rules) in enumerate(r.early_exit.items()):
        for rule, sweep in rules.items():
            dash, symbol = styles.get(rule, ("solid", "circle"))
            fig.add_trace(go.Scatter(x=sweep.depth, y=sweep.accuracy, mode="lines+markers", name=f"{_name(g)}: {rule}",
                                     line={"color": _colour(i), "dash": dash}, marker={"symbol": symbol, "size": 8}))
    fig.update_layout(title="early exit, simulated from the trace: accuracy against average exit depth (threshold sweeps)",
                      xaxis_title="average exit depth", yaxis_title="accuracy", height=420)
    return fig


def first_correct_figure(r: CompareResult) -> go.Figure:
    fig = go.Figure()
    for i, (g, shares) in enumerate(r.first_correct.items()):
        depths = r.curves[g].depths
        fig.add_trace(go.Bar(x=depths, y=shares, name=_name(g), marker_color=_colour(i)))
    fig.update_layout(title="depth at which each test sample is first classified right (share of samples)", xaxis=depth_axis(),
                      yaxis_title="share of samples", barmode="group", height=360)
    return fig


def heatmap_figure(r: CompareResult) -> go.Figure:
    h = r.heatmaps
    groups = list(h.groups)
    cols = max(len(v) for v in h.groups.values()) + 1
    titles = []
    for g in groups:
        titles += ["target"] + [f"{_name(g)} depth {k}" for k in h.depths[g]] + [""] * (cols - 1 - len(h.depths[g]))
    height = 180 * len(groups) + 80
    # about 40 px between rows whatever their number (plotly's spacing is a fraction of the height)
    fig = make_subplots(rows=len(groups), cols=cols, subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=40 / height)
    for row, g in enumerate(groups, start=1):
        maps = ([h.target] if h.target else [None]) + h.groups[g]
        for col, z in enumerate(maps, start=1):
            if z is not None:
                # an array, not nested lists: plotly validates lists element by element (seconds for 15 groups)
                fig.add_trace(go.Heatmap(z=np.asarray(z, dtype=np.float64), coloraxis="coloraxis", showscale=False), row=row, col=col)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title="prediction at each depth (the paper's surface figure)", coloraxis={"colorscale": "RdBu_r"}, height=height)
    return fig


def _curve_key(r: CompareResult) -> str:
    return r.metric if r.metric in ("mse", "ce") else ("acc" if r.kind != "regression" else "mse")


def _test_points(records: list[dict], key: str) -> list[tuple[int, float]]:
    pts = []
    for rec in records:
        test = rec.get("test") or {}
        values = test.get(key) or next(iter(test.values()), None)
        if isinstance(values, list) and values and values[-1] is not None:
            pts.append((rec["step"], values[-1]))
    return pts


def _curve_points(r: CompareResult) -> tuple[dict[str, list[tuple[int, float]]], str]:
    """Each run's (step, final-depth test metric) from its log, or, for runs evaluated only at the end,
    (step, final-depth training loss); runs with fewer than two points have no curve. Also says which."""
    key = _curve_key(r)
    tests = {path: _test_points(records, key) for path, records in r.training.items()}
    if any(len(p) >= 2 for p in tests.values()):
        return {path: pts for path, pts in tests.items() if len(pts) >= 2}, f"test {key}"
    out = {}
    for path, records in r.training.items():
        pts = []
        for rec in records:
            per_depth = rec.get("train_loss_per_depth") or {}
            if per_depth:
                last = max(per_depth, key=int)
                if per_depth[last] is not None:
                    pts.append((rec["step"], per_depth[last]))
        if len(pts) >= 2:
            out[path] = pts
    return out, "training loss"


def training_figure(r: CompareResult, points: dict[str, list[tuple[int, float]]], key: str) -> go.Figure:
    fig = go.Figure()
    for i, (path, pts) in enumerate(points.items()):
        fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=_name(path), line={"color": _colour(i)}))
    log = log_axis([p[1] for pts in points.values() for p in pts])
    fig.update_layout(title=f"training: {key} at the final depth", xaxis_title="step", yaxis_title=key, yaxis_type="log" if log else "linear",
                      height=360)
    return fig


def depth_colour(j: int, n: int) -> str:
    """The j-th of n depths on a light-to-dark blue ramp: shallow depths pale, the final depth darkest."""
    f = min(1.0, max(0.0, j / max(1, n - 1)))
    lo, hi = (158, 202, 225), (8, 48, 107)
    return "#" + "".join(f"{round(a + f * (b - a)):02x}" for a, b in zip(lo, hi))


def _depth_runs(r: CompareResult) -> dict[str, tuple[str, list[dict]]]:
    """Each group's first run whose log holds per-depth training losses at two steps or more."""
    out = {}
    for g, paths in r.groups.items():
        for path in paths:
            records = [rec for rec in r.training.get(path) or [] if rec.get("train_loss_per_depth")]
            if len(records) >= 2:
                out[g] = (path, records)
                break
    return out


def depth_training_figure(runs: dict[str, tuple[str, list[dict]]]) -> go.Figure:
    """Every depth's training loss against the step, one panel per group, on a log axis."""
    depths = sorted({int(k) for _, recs in runs.values() for rec in recs for k in rec["train_loss_per_depth"]})
    fig = make_subplots(rows=1, cols=len(runs), subplot_titles=[_name(g) for g in runs], horizontal_spacing=0.06)
    for col, (g, (_, records)) in enumerate(runs.items(), start=1):
        for j, k in enumerate(depths):
            pts = [(rec["step"], rec["train_loss_per_depth"].get(str(k))) for rec in records]
            pts = [(step, v) for step, v in pts if v is not None and v > 0]
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines", name=f"depth {k}", legendgroup=f"depth {k}",
                                     showlegend=col == 1, line={"color": depth_colour(j, len(depths)), "width": 1.5}), row=1, col=col)
    fig.update_yaxes(type="log")
    fig.update_xaxes(title="step")
    fig.update_layout(title="training loss at every depth (log axis; each group's first run)", yaxis_title="training loss", height=400)
    return fig


# --- sections ------------------------------------------------------------------------------------


def summary_section(page: Page, r: CompareResult) -> None:
    groups = ", ".join(f"{g} ({len(p)} run{'s' if len(p) > 1 else ''})" for g, p in r.groups.items())
    page.paragraph(f"Groups: {groups}. Metric: {r.metric} ({r.kind}). Every number is also in the embedded JSON.", "note")
    for g in r.never_learned:
        page.paragraph(f"{g} never learned: every run's final depth is no better than a constant predictor (verdict: no descent). "
                       "Its comparisons below declare no winner.", "bad")


def diff_section(page: Page, r: CompareResult) -> None:
    page.heading("What differs")
    if r.diff:
        page.table(["setting"] + list(r.groups), [[d.key] + [", ".join(map(str, d.values.get(g, []))) for g in r.groups] for d in r.diff])
    else:
        page.paragraph("The runs' configurations are identical.")


def final_section(page: Page, r: CompareResult) -> None:
    page.heading("Final depth")
    for f in r.final:
        page.paragraph(f"{f.statement} — {f.test}.")


def curves_section(page: Page, r: CompareResult) -> None:
    page.heading("Per-depth error")
    page.figure(curves_figure(r))
    depths = sorted({k for c in r.curves.values() for k in c.depths})
    rows = []
    for k in depths:
        row = [k]
        for c in r.curves.values():
            j = c.depths.index(k) if k in c.depths else None
            row.append("-" if j is None else f"{fmt(c.mean[j])} [{fmt(c.low[j])}, {fmt(c.high[j])}]")
        rows.append(row)
    page.table(["depth"] + [f"{g} {r.metric} [95% interval]" for g in r.curves], rows)
    page.paragraph("; ".join(f"{g}: {c.band}" for g, c in r.curves.items()), "note")


def gap_section(page: Page, r: CompareResult) -> None:
    if not r.gaps:
        return
    page.heading("Gap per depth")
    page.figure(gap_figure(r))
    page.table(["group", "vs", "depth", "mean gap", "95% CI"], [[x.group, x.vs, x.depth, fmt(x.gap), f"[{fmt(x.low)}, {fmt(x.high)}]"] for x in r.gaps], left=2)


def monotonicity_section(page: Page, r: CompareResult) -> None:
    page.heading("Monotonicity per run")
    page.table(["group", "run", "verdict", "strict", "deploy depth", "violations"],
               [[x.group, x.path, x.verdict, "monotone" if x.monotone_strict else "not monotone", x.deploy_depth,
                 ", ".join(f"{v.frm}→{v.to}" for v in x.violations) or "none"] for x in r.runs], left=3,
               classes=[["", "", "good" if x.monotone else "bad"] for x in r.runs])


def cost_section(page: Page, r: CompareResult) -> None:
    if not any(c.flops for c in r.cost.values()):
        return
    page.heading("Train once, use N models")
    page.figure(cost_figure(r, "flops", "FLOPs per sample"))
    if any(c.latency_ms for c in r.cost.values()):
        page.figure(cost_figure(r, "latency_ms", "measured latency per sample (ms, this machine)"))
        for g, c in r.cost.items():
            lat = c.latency_ms or []
            if any(b < a * 0.95 for a, b in zip(lat, lat[1:])):
                page.paragraph(f"{g}: measured latency does not grow with depth everywhere; at these sizes timing noise "
                               "(or fixed per-call costs) is as large as a block's cost.", "note")
    rows = []
    for g, c in r.cost.items():
        for j, k in enumerate(c.depths):
            rows.append([g, k, fmt(c.flops[j]) if c.flops else "-", fmt(c.latency_ms[j]) if c.latency_ms else "-", fmt(c.error[j]),
                         "yes" if k in c.pareto else ""])
    page.table(["group", "depth", "FLOPs/sample", "ms/sample", r.metric, "Pareto"], rows)


def not_applicable(page: Page, heading: str, why: str) -> None:
    """A section that does not apply to these runs keeps its heading and says why, so nothing vanishes unexplained."""
    page.heading(heading)
    page.paragraph(f"Does not apply here: {why}", "note")


def first_correct_section(page: Page, r: CompareResult) -> None:
    if not r.first_correct:
        if r.kind == "regression":
            not_applicable(page, "When samples are first right", "regression predictions are never right or wrong; the per-depth error "
                           "above is their measure.")
        return
    page.heading("When samples are first right")
    page.figure(first_correct_figure(r))


def early_exit_section(page: Page, r: CompareResult) -> None:
    if not r.early_exit:
        if r.kind == "regression":
            not_applicable(page, "Early exit", "exiting by confidence needs class probabilities, and these are regression runs; a fixed "
                           "depth (lpa predict --exit depth:k, lpa export --at k) is how a regressor's prefix is served, and the "
                           "cost table above prices every depth.")
        return
    page.heading("Early exit")
    page.paragraph("Each sample (for language models: each token) exits at the first depth whose confidence passes the "
                   "threshold: largest softmax probability ≥ t (max_prob), entropy ≤ t (entropy), or the same prediction "
                   "for p consecutive depths (patience). The last depth is used otherwise. Simulated from the trace: "
                   "`lpa predict --exit` and `lpa generate --strategy exit` run it and measure the time.", "note")
    page.figure(exit_figure(r))


def heatmap_section(page: Page, r: CompareResult) -> None:
    if r.heatmaps:
        page.heading("Predictions by depth")
        page.figure(heatmap_figure(r))
        page.paragraph("The grids behind this figure are in `lpa compare --json`, not in this page's embedded JSON (they are "
                       "most of its size).", "note")


def training_section(page: Page, r: CompareResult) -> None:
    points, key = _curve_points(r)
    runs = _depth_runs(r)
    page.heading("Training curves")
    if runs:
        page.figure(depth_training_figure(runs))
    if points and key.startswith("test"):
        page.figure(training_figure(r, points, key))
    if not runs and not points:
        page.paragraph("Not shown: no run's training log (<checkpoint>.jsonl beside the checkpoint) is at hand, or none records "
                       "per-depth training losses.", "note")


def shared_section(page: Page, r: CompareResult) -> None:
    page.heading("Shared settings")
    page.table(["setting", "value"], [[k, v] for k, v in sorted(r.shared.items())], left=2)
    for note in r.notes:
        page.paragraph(note, "note")


def trajectory_section(page: Page, r: CompareResult) -> None:
    """Alignment, KL to final and calibration per depth, the groups side by side (the paper's alignment claim)."""
    add_charts(page, list(r.trajectory.items()))


SECTIONS: list[Callable[[Page, CompareResult], None]] = [
    summary_section, diff_section, final_section, curves_section, gap_section, monotonicity_section, cost_section,
    trajectory_section, first_correct_section, early_exit_section, measured_section, heatmap_section, training_section, shared_section,
]


def compare_page(r: CompareResult, title: str = "lpa compare", sections: list[Callable[[Page, CompareResult], None]] | None = None) -> Page:
    page = Page(title)
    for section in sections or SECTIONS:
        section(page, r)
    data = r.to_dict()  # the heaviest parts stay where they are (`lpa compare --json` has them): the grids, the logs
    if data.get("heatmaps"):
        data["heatmaps"] = {k: v for k, v in data["heatmaps"].items() if k not in ("groups", "target")} | {"grids": "lpa compare --json"}
    data["training"] = {path: f"{len(records)} log records: the run's .jsonl log" for path, records in data.get("training", {}).items()}
    page.raw_json("lpa-compare", data)
    return page
