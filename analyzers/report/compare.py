"""The compare report: one self-contained page a user can mail to a colleague."""

from __future__ import annotations

import html

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from analyzers.compare import CompareResult
from analyzers.report.monotonicity import fmt
from analyzers.report.page import Page

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]


def _name(text: str) -> str:
    """Plotly renders some HTML in trace names and titles: escape user strings before they get there."""
    return html.escape(str(text))


def _colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def curves_figure(r: CompareResult) -> go.Figure:
    fig = go.Figure()
    for i, (g, c) in enumerate(r.curves.items()):
        have_band = all(v is not None and v == v for v in c["low"] + c["high"])
        if have_band:
            fig.add_trace(go.Scatter(x=c["depths"] + c["depths"][::-1], y=c["high"] + c["low"][::-1], fill="toself",
                                     fillcolor=_rgba(_colour(i), 0.2), line={"width": 0}, hoverinfo="skip", showlegend=False))
        fig.add_trace(go.Scatter(x=c["depths"], y=c["mean"], mode="lines+markers", name=f"{_name(g)} ({c['seeds']} seed{'s' * (c['seeds'] > 1)})",
                                 line={"color": _colour(i)}))
    values = [v for c in r.curves.values() for v in c["mean"] if v and v > 0]
    log = bool(values) and max(values) / min(values) > 30
    fig.update_layout(title="per-depth error (band: CI)", xaxis_title="depth", yaxis_title=r.metric, yaxis_type="log" if log else "linear", height=420)
    return fig


def gap_figure(r: CompareResult) -> go.Figure:
    fig = go.Figure()
    for i, g in enumerate(sorted({x["group"] for x in r.gaps})):
        rows = [x for x in r.gaps if x["group"] == g]
        fig.add_trace(go.Scatter(x=[x["depth"] for x in rows], y=[x["gap"] for x in rows], mode="lines+markers",
                                 name=f"{_name(g)} − {_name(rows[0]['vs'])}", line={"color": _colour(i + 1)},
                                 error_y={"type": "data", "symmetric": False, "array": [x["high"] - x["gap"] for x in rows],
                                          "arrayminus": [x["gap"] - x["low"] for x in rows]}))
    fig.add_hline(y=0, line_dash="dot")
    fig.update_layout(title="per-depth gap of the per-sample error (paired over test samples, 95% CI)", xaxis_title="depth",
                      yaxis_title="difference", height=380)
    return fig


def cost_figure(r: CompareResult, key: str, label: str) -> go.Figure:
    fig = go.Figure()
    for i, (g, c) in enumerate(r.cost.items()):
        if not c.get(key):
            continue
        fig.add_trace(go.Scatter(x=c[key], y=c["error"], mode="lines+markers", name=_name(g), text=[f"depth {k}" for k in c["depths"]],
                                 line={"color": _colour(i)}))
        if key == "flops" and c.get("pareto"):
            idx = [c["depths"].index(k) for k in c["pareto"]]
            fig.add_trace(go.Scatter(x=[c[key][j] for j in idx], y=[c["error"][j] for j in idx], mode="markers",
                                     marker={"symbol": "diamond-open", "size": 12, "color": _colour(i)}, name=f"{_name(g)} Pareto front"))
    values = [v for c in r.cost.values() for v in c["error"] if v and v > 0]
    log = bool(values) and max(values) / min(values) > 30
    fig.update_layout(title=f"train once, use N models: error against {label} for every depth", xaxis_title=label, yaxis_title=r.metric,
                      yaxis_type="log" if log else "linear", height=400)
    return fig


def exit_figure(r: CompareResult) -> go.Figure:
    fig = go.Figure()
    dashes = {"max_prob": "solid", "entropy": "dash", "patience": "dot"}
    for i, (g, rules) in enumerate(r.early_exit.items()):
        for rule, sweep in rules.items():
            fig.add_trace(go.Scatter(x=sweep["depth"], y=sweep["accuracy"], mode="lines+markers", name=f"{_name(g)}: {rule}",
                                     line={"color": _colour(i), "dash": dashes.get(rule, "solid")}))
    fig.update_layout(title="early exit: accuracy against average exit depth (threshold sweeps)", xaxis_title="average exit depth",
                      yaxis_title="accuracy", height=420)
    return fig


def heatmap_figure(r: CompareResult) -> go.Figure:
    h = r.heatmaps
    groups = list(h["groups"])
    cols = max(len(v) for v in h["groups"].values()) + 1
    titles = []
    for g in groups:
        titles += ["target"] + [f"{_name(g)} depth {k}" for k in h["depths"][g]] + [""] * (cols - 1 - len(h["depths"][g]))
    height = 180 * len(groups) + 80
    # about 40 px between rows whatever their number (plotly's spacing is a fraction of the height)
    fig = make_subplots(rows=len(groups), cols=cols, subplot_titles=titles, horizontal_spacing=0.01, vertical_spacing=40 / height)
    for row, g in enumerate(groups, start=1):
        maps = ([h["target"]] if h["target"] else [None]) + h["groups"][g]
        for col, z in enumerate(maps, start=1):
            if z is not None:
                fig.add_trace(go.Heatmap(z=z, coloraxis="coloraxis", showscale=False), row=row, col=col)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(showticklabels=False)
    fig.update_layout(title="prediction at each depth (the paper's surface figure)", coloraxis={"colorscale": "RdBu_r"},
                      height=height)
    return fig


def training_figure(r: CompareResult) -> go.Figure:
    fig = go.Figure()
    metric_key = next(iter(next(iter(r.training.values()))[-1]["test"]), None) if r.training else None
    key = r.metric if r.metric in ("mse", "ce") else ("acc" if r.kind != "regression" else "mse")
    for i, (path, records) in enumerate(r.training.items()):
        pts = [(rec["step"], rec["test"].get(key, rec["test"].get(metric_key))[-1]) for rec in records if rec.get("test")]
        if pts:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=_name(path), line={"color": _colour(i)}))
    fig.update_layout(title=f"training: test {key} at the final depth", xaxis_title="step", yaxis_title=key, height=360)
    return fig


def compare_page(r: CompareResult, title: str = "lpa compare") -> Page:
    page = Page(title)
    groups = ", ".join(f"{g} ({len(p)} run{'s' if len(p) > 1 else ''})" for g, p in r.groups.items())
    page.paragraph(f"Groups: {groups}. Metric: {r.metric} ({r.kind}). Generated by lpa; every number is also in the embedded JSON.", "note")
    page.heading("What differs")
    if r.diff:
        page.table(["setting"] + list(r.groups), [[d["key"]] + [", ".join(map(str, d["values"].get(g, []))) for g in r.groups] for d in r.diff])
    else:
        page.paragraph("The runs' configurations are identical.")
    page.heading("Final depth")
    for f in r.final:
        page.paragraph(f["statement"] + f" — {f['test']}.")
    page.heading("Per-depth error")
    page.figure(curves_figure(r))
    rows = []
    depths = sorted({k for c in r.curves.values() for k in c["depths"]})
    for k in depths:
        row = [k]
        for c in r.curves.values():
            j = c["depths"].index(k) if k in c["depths"] else None
            row.append("-" if j is None else f"{fmt(c['mean'][j])} [{fmt(c['low'][j])}, {fmt(c['high'][j])}]")
        rows.append(row)
    page.table(["depth"] + [f"{g} {r.metric} [CI]" for g in r.curves], rows)
    page.paragraph("; ".join(f"{g}: {c['band']}" for g, c in r.curves.items()), "note")
    if r.gaps:
        page.heading("Gap per depth")
        page.figure(gap_figure(r))
        page.table(["group", "vs", "depth", "mean gap", "95% CI"], [[x["group"], x["vs"], x["depth"], fmt(x["gap"]), f"[{fmt(x['low'])}, {fmt(x['high'])}]"] for x in r.gaps], left=2)
    page.heading("Monotonicity per run")
    page.table(["group", "run", "verdict", "strict", "deploy depth", "violations"],
               [[x["group"], x["path"], x["verdict"], "monotone" if x["monotone_strict"] else "not monotone", x["deploy_depth"],
                 ", ".join(f"{v['from']}→{v['to']}" for v in x["violations"]) or "none"] for x in r.runs], left=3,
               classes=[["", "", "good" if x["monotone"] else "bad"] for x in r.runs])
    if any(c.get("flops") for c in r.cost.values()):
        page.heading("Train once, use N models")
        page.figure(cost_figure(r, "flops", "FLOPs per sample"))
        if any(c.get("latency_ms") for c in r.cost.values()):
            page.figure(cost_figure(r, "latency_ms", "measured latency per sample (ms, this machine)"))
        rows = []
        for g, c in r.cost.items():
            for j, k in enumerate(c["depths"]):
                rows.append([g, k, fmt(c["flops"][j]) if c.get("flops") else "-", fmt(c["latency_ms"][j]) if c.get("latency_ms") else "-",
                             fmt(c["error"][j]), "yes" if k in c.get("pareto", []) else ""])
        page.table(["group", "depth", "FLOPs/sample", "ms/sample", r.metric, "Pareto"], rows)
    if r.early_exit:
        page.heading("Early exit")
        page.paragraph("Each sample (for language models: each token) exits at the first depth whose confidence passes the "
                       "threshold: largest softmax probability ≥ t (max_prob), entropy ≤ t (entropy), or the same prediction "
                       "for p consecutive depths (patience). The last depth is used otherwise.", "note")
        page.figure(exit_figure(r))
    if r.heatmaps:
        page.heading("Predictions by depth")
        page.figure(heatmap_figure(r))
    if r.training:
        page.heading("Training curves")
        page.figure(training_figure(r))
    page.heading("Shared settings")
    page.table(["setting", "value"], [[k, v] for k, v in sorted(r.shared.items())], left=2)
    for note in r.notes:
        page.paragraph(note, "note")
    page.raw_json("lpa-compare", r.to_dict())
    return page
