"""Plotly figures drawn as static SVG: a report that opens offline with no script and weighs kilobytes.

The reports build plotly figures (`--plotlyjs embed|directory` shows them interactively); `figure_svg`
draws the subset they use: scatter (lines, markers, ``toself`` bands, error bars), grouped bars, heatmaps
on one colour axis (PNG images), subplot grids, linear and log axes, tick values and texts, reference
lines, annotations, a legend; hovering a point shows its values. An unknown trace type raises."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from analyzers.report.raster import heat_rgb, png_data_uri
from analyzers.report.svg_marks import DASHES, PLOTLY, _colour, _e, _marker, _plain, legend

WIDTH = 1000

def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _short(v: float) -> str:
    return "0" if v == 0 else f"{v:.4g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.2e}"


@dataclass
class Axis:
    """One axis: its data range (log10 units on a log axis), pixel span and ticks."""

    lo: float
    hi: float
    p0: float
    p1: float
    log: bool = False
    categories: list[str] | None = None

    def px(self, v: float) -> float | None:
        if self.log:
            if v is None or v <= 0:
                return None
            v = math.log10(v)
        if v is None:
            return None
        span = self.hi - self.lo or 1.0
        return self.p0 + (v - self.lo) / span * (self.p1 - self.p0)


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _values(trace: dict, key: str) -> list:
    v = trace.get(key)
    if v is None:
        return []
    return list(np.asarray(v, dtype=object).ravel()) if not isinstance(v, list) else v


def _axis_extent(figure: dict, traces: list[dict], key: str, log: bool) -> tuple[float, float, list[str] | None]:
    vals, cats = [], None
    for t in traces:
        data = _values(t, key)
        if t.get("type") == "bar" and key == "x" and any(isinstance(v, str) for v in data):
            cats = list(dict.fromkeys(str(v) for v in data)) if cats is None else list(dict.fromkeys(cats + [str(v) for v in data]))
            continue
        nums = [_num(v) for v in data]
        err = t.get("error_y") or {}
        if key == "y" and err.get("array") is not None:
            plus, minus = list(err["array"]), list(err.get("arrayminus") or err["array"])
            nums += [None if y is None else y + (_num(p) or 0) for y, p in zip(nums, plus)]
            nums += [None if y is None else y - (_num(m) or 0) for y, m in zip(nums[: len(minus)], minus)]
        if t.get("type") == "bar" and key == "y":
            nums.append(0.0)
        vals += [v for v in nums if v is not None and (not log or v > 0)]
    for shape in figure.get("layout", {}).get("shapes", []) or []:
        v = _num(shape.get("y0" if key == "y" else "x0"))
        if v is not None and shape.get(f"{key}ref", key) != "paper" and "domain" not in str(shape.get(f"{key}ref", "")):
            vals.append(v)
    if cats is not None:
        return -0.5, len(cats) - 0.5, cats
    if not vals:
        return 0.0, 1.0, None
    lo, hi = (math.log10(min(vals)), math.log10(max(vals))) if log else (min(vals), max(vals))
    pad = (hi - lo) * 0.05 or (abs(hi) * 0.1 or 0.5)
    return lo - pad, hi + pad, None


class _Canvas:
    """Collects SVG elements; plot areas are laid out once from the figure's axes."""

    def __init__(self, figure: dict) -> None:
        self.fig, self.layout = figure, figure.get("layout", {}) or {}
        self.traces = [dict(t) for t in figure.get("data", []) or []]
        self.height = int(self.layout.get("height") or 420)
        self.legend = [(i, t) for i, t in enumerate(self.traces) if t.get("showlegend", True) is not False and t.get("name")
                       and t.get("type") != "heatmap"]
        self.right = WIDTH - (250 if self.legend else 20)
        self.left, self.top, self.bottom = 72, 56, self.height - 48
        self.out: list[str] = []

    def area(self, xid: str, yid: str) -> tuple[float, float, float, float]:
        xd = (self.layout.get(_axis_key("x", xid)) or {}).get("domain") or [0, 1]
        yd = (self.layout.get(_axis_key("y", yid)) or {}).get("domain") or [0, 1]
        w, h = self.right - self.left, self.bottom - self.top
        return self.left + xd[0] * w, self.left + xd[1] * w, self.top + (1 - yd[1]) * h, self.top + (1 - yd[0]) * h

    def paper(self, x: float, y: float) -> tuple[float, float]:
        return self.left + x * (self.right - self.left), self.top + (1 - y) * (self.bottom - self.top)

    def text(self, x: float, y: float, text: str, anchor: str = "middle", size: int = 12, extra: str = "") -> None:
        self.out.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}" {extra}>{_e(text)}</text>')


def _axis_key(letter: str, ident: str) -> str:
    return f"{letter}axis{ident[1:]}"


def _axes(c: _Canvas, xid: str, yid: str, traces: list[dict]) -> tuple[Axis, Axis]:
    x0, x1, y0, y1 = c.area(xid, yid)
    xl, yl = c.layout.get(_axis_key("x", xid)) or {}, c.layout.get(_axis_key("y", yid)) or {}
    xlog, ylog = xl.get("type") == "log", yl.get("type") == "log"
    lo, hi, cats = _axis_extent(c.fig, traces, "x", xlog)
    ax = Axis(lo, hi, x0, x1, xlog, cats)
    lo, hi, _ = _axis_extent(c.fig, traces, "y", ylog)
    return ax, Axis(lo, hi, y1, y0, ylog)


def _ticks(axis: Axis, spec: dict) -> list[tuple[float, str]]:
    if spec.get("tickvals") is not None:
        texts = spec.get("ticktext") or [_short(v) for v in spec["tickvals"]]
        return [(float(v), str(t)) for v, t in zip(spec["tickvals"], texts) if axis.lo <= float(v) <= axis.hi]
    if axis.categories is not None:
        return [(float(i), name) for i, name in enumerate(axis.categories)]
    if axis.log:
        decades = range(math.ceil(axis.lo - 1e-9), math.floor(axis.hi + 1e-9) + 1)
        steps = (1, 2, 5) if len(decades) < 3 else (1,)
        vals = [m * 10.0**k for k in range(math.floor(axis.lo), math.ceil(axis.hi) + 1) for m in steps]
        return [(v, _short(v)) for v in vals if axis.lo <= math.log10(v) <= axis.hi]
    if spec.get("tickmode") == "linear" and spec.get("dtick"):
        d, t0 = float(spec["dtick"]), float(spec.get("tick0") or 0)
        first = math.ceil((axis.lo - t0) / d) * d + t0
        return [(first + i * d, _short(first + i * d)) for i in range(int((axis.hi - first) / d) + 1)]
    return [(v, _short(v)) for v in _nice_ticks(axis.lo, axis.hi)]


def _draw_axes(c: _Canvas, ax: Axis, ay: Axis, xid: str, yid: str) -> None:
    xs, ys = c.layout.get(_axis_key("x", xid)) or {}, c.layout.get(_axis_key("y", yid)) or {}
    c.out.append(f'<rect x="{ax.p0:.1f}" y="{ay.p1:.1f}" width="{ax.p1 - ax.p0:.1f}" height="{ay.p0 - ay.p1:.1f}" fill="#fafafa" stroke="#ccc"/>')
    widest = 0  # characters of the longest y tick label: the y title goes left of it
    for axis, spec, horizontal in ((ay, ys, True), (ax, xs, False)):
        for value, label in _ticks(axis, spec):
            widest = max(widest, len(label)) if horizontal else widest
            p = axis.px(value)
            if p is None:
                continue
            if horizontal:  # a y tick: a grid line across, the label left of the plot
                c.out.append(f'<line x1="{ax.p0:.1f}" x2="{ax.p1:.1f}" y1="{p:.1f}" y2="{p:.1f}" stroke="#e4e4e4"/>')
            else:
                c.out.append(f'<line x1="{p:.1f}" x2="{p:.1f}" y1="{ay.p0:.1f}" y2="{ay.p1:.1f}" stroke="#eeeeee"/>')
            if spec.get("showticklabels", True):
                c.text(*((ax.p0 - 6, p + 4, label, "end") if horizontal else (p, ay.p0 + 15, label, "middle")), 11)
    if xs.get("title"):
        c.text((ax.p0 + ax.p1) / 2, ay.p0 + 34, _plain(xs["title"]), "middle", 12)
    if ys.get("title"):
        mid = (ay.p0 + ay.p1) / 2
        x = max(12.0, ax.p0 - max(52.0, 6 + 6.5 * widest + 12))  # 11 px digits are about 6.5 px wide
        c.text(x, mid, _plain(ys["title"]), "middle", 12, f'transform="rotate(-90 {x:.1f} {mid:.1f})"')


def _point_title(t: dict, x: Any, y: Any, i: int) -> str:
    text = _values(t, "text") or _values(t, "hovertext")
    extra = f"\n{text[i]}" if i < len(text) and text[i] not in (None, "") else ""
    return f"<title>{_e(_plain(t.get('name', '')))}\nx: {_e(x)}\ny: {_e(_short(y) if isinstance(y, float) else y)}{_e(extra)}</title>"


def _errors(c: _Canvas, t: dict, pts: list[tuple[float, float, float]], ay: Axis, colour: str) -> None:
    err = t.get("error_y") or {}
    if err.get("array") is None:
        return
    plus, minus = list(err["array"]), list(err.get("arrayminus") if err.get("arrayminus") is not None else err["array"])
    for (px, _, y), p, m in zip(pts, plus, minus):
        hi, lo = ay.px(y + (_num(p) or 0)), ay.px(y - (_num(m) or 0))
        if hi is not None and lo is not None:
            c.out.append(f'<path d="M{px - 4:.1f},{hi:.1f}H{px + 4:.1f}M{px:.1f},{hi:.1f}V{lo:.1f}M{px - 4:.1f},{lo:.1f}H{px + 4:.1f}" '
                         f'stroke="{colour}" stroke-width="1.2" fill="none"/>')


def _scatter(c: _Canvas, t: dict, ax: Axis, ay: Axis, colour: str) -> None:
    xs, ys = _values(t, "x"), _values(t, "y")
    pts = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        fx, fy = _num(x), _num(y)
        px, py = (ax.px(fx) if fx is not None else None), (ay.px(fy) if fy is not None else None)
        pts.append(None if px is None or py is None else (px, py, fy, i))
    line, marker, opacity = t.get("line") or {}, t.get("marker") or {}, float(t.get("opacity", 1.0))
    if t.get("fill") == "toself":
        poly = " ".join(f"{p[0]:.1f},{p[1]:.1f}" for p in pts if p is not None)
        fill = t.get("fillcolor") or colour
        alpha = "" if t.get("fillcolor") else f' fill-opacity="{opacity}"'
        c.out.append(f'<polygon points="{poly}" fill="{fill}"{alpha} stroke="none"/>')
        return
    mode = t.get("mode") or ("lines+markers" if len(pts) <= 20 else "lines")
    if "lines" in mode and float(line.get("width", 2)) > 0:
        runs, cur = [], []
        for p in pts:
            if p is None:
                runs, cur = runs + [cur] if cur else runs, []
            else:
                cur.append(p)
        for run in runs + ([cur] if cur else []):
            d = " ".join(f"{p[0]:.1f},{p[1]:.1f}" for p in run)
            dash = f' stroke-dasharray="{DASHES[line["dash"]]}"' if line.get("dash") in DASHES else ""
            c.out.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="{float(line.get("width", 2)):g}"'
                         f'{dash} opacity="{opacity}"/>')
    _errors(c, t, [(p[0], p[1], p[2]) for p in pts if p is not None], ay, colour)
    if "markers" in mode:
        m_colour = marker.get("color") if isinstance(marker.get("color"), str) else colour
        m_opacity = float(marker.get("opacity", opacity))
        for p in pts:
            if p is not None:
                c.out.append(_marker(p[0], p[1], m_colour, marker, m_opacity, _point_title(t, xs[p[3]], p[2], p[3])))


def _bars(c: _Canvas, bars: list[tuple[int, dict]], ax: Axis, ay: Axis) -> None:
    numeric = sorted({v for _, t in bars for v in (_num(x) for x in _values(t, "x")) if v is not None})
    slot = min((b - a for a, b in zip(numeric, numeric[1:])), default=1.0) if ax.categories is None else 1.0
    width = 0.8 * slot / len(bars)
    base = ay.px(max(ay.lo, 0.0) if not ay.log else 10**ay.lo)
    for j, (index, t) in enumerate(bars):
        colours = (t.get("marker") or {}).get("color")
        pts = []
        for i, (x, y) in enumerate(zip(_values(t, "x"), _values(t, "y"))):
            pos = ax.categories.index(str(x)) if ax.categories is not None else _num(x)
            fy = _num(y)
            if pos is None or fy is None:
                continue
            centre = pos + (j - (len(bars) - 1) / 2) * width
            left, right, top = ax.px(centre - width / 2), ax.px(centre + width / 2), ay.px(fy)
            if None in (left, right, top, base):
                continue
            colour = colours[i] if isinstance(colours, (list, tuple)) else (colours or PLOTLY[index % len(PLOTLY)])
            c.out.append(f'<rect x="{left:.1f}" y="{min(top, base):.1f}" width="{max(right - left, 1):.1f}" height="{abs(base - top):.1f}" '
                         f'fill="{colour}">{_point_title(t, x, fy, i)}</rect>')
            pts.append((ax.px(centre), top, fy))
        _errors(c, t, pts, ay, "#333")


def _heatmap(c: _Canvas, t: dict, xid: str, yid: str, scale: tuple[float, float]) -> None:
    z = np.asarray(t.get("z"), dtype=np.float64)
    if z.ndim != 2 or not z.size:
        return
    lo, hi = scale
    rgb = heat_rgb(((z - lo) / ((hi - lo) or 1.0))[::-1])  # plotly draws row 0 at the bottom
    x0, x1, y0, y1 = c.area(xid, yid)
    c.out.append(f'<image x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" height="{y1 - y0:.1f}" preserveAspectRatio="none" '
                 f'style="image-rendering:pixelated" href="{png_data_uri(rgb)}"/>')


def _shapes(c: _Canvas, axes: dict[tuple[str, str], tuple[Axis, Axis]]) -> None:
    if not axes:
        return
    ax, ay = next(iter(axes.values()))
    for s in c.layout.get("shapes") or []:
        dash = f' stroke-dasharray="{DASHES.get((s.get("line") or {}).get("dash"), "")}"'
        if "domain" in str(s.get("xref", "")):  # a horizontal line across the plot
            py = ay.px(_num(s.get("y0")))
            if py is not None:
                c.out.append(f'<line x1="{ax.p0:.1f}" x2="{ax.p1:.1f}" y1="{py:.1f}" y2="{py:.1f}" stroke="#555"{dash}/>')
        elif "domain" in str(s.get("yref", "")):
            px = ax.px(_num(s.get("x0")))
            if px is not None:
                c.out.append(f'<line x1="{px:.1f}" x2="{px:.1f}" y1="{ay.p0:.1f}" y2="{ay.p1:.1f}" stroke="#555"{dash}/>')


def _annotations(c: _Canvas, axes: dict[tuple[str, str], tuple[Axis, Axis]]) -> None:
    first = next(iter(axes.values()), None)
    for a in c.layout.get("annotations") or []:
        text = _plain(a.get("text", ""))
        if not text:
            continue
        xref, yref = str(a.get("xref", "paper")), str(a.get("yref", "paper"))
        x, y = float(a.get("x", 0)), float(a.get("y", 0))
        if xref == "paper" and yref == "paper":
            px, py = c.paper(x, y)
            py -= 4
        elif first is not None:
            ax, ay = first
            px = ax.p0 + x * (ax.p1 - ax.p0) if "domain" in xref else (ax.px(x) or ax.p0)
            py = (ay.p0 + y * (ay.p1 - ay.p0) if "domain" in yref else (ay.px(y) or ay.p0)) - 4
        else:
            continue
        anchor = {"left": "start", "right": "end"}.get(str(a.get("xanchor")), "middle")
        c.text(px, py, text, anchor, 11)


def figure_svg(figure: Any) -> str:
    """``figure`` (a plotly Figure or its dict) as one inline ``<svg>`` element."""
    if hasattr(figure, "data") and hasattr(figure, "layout"):  # plotly's objects keep numpy arrays; to_dict() would encode them
        fig = {"data": [t.to_plotly_json() for t in figure.data], "layout": figure.layout.to_plotly_json()}
    else:
        fig = dict(figure)
    c = _Canvas(fig)
    known = {"scatter", "bar", "heatmap"}
    for t in c.traces:
        t.setdefault("type", "scatter")
        if t["type"] not in known:
            raise ValueError(f"figure_svg draws {', '.join(sorted(known))} traces, not {t['type']!r}")
    pairs: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for i, t in enumerate(c.traces):
        pairs.setdefault((t.get("xaxis") or "x", t.get("yaxis") or "y"), []).append((i, t))
    heat = [np.asarray(t["z"], dtype=np.float64) for t in c.traces if t["type"] == "heatmap" and t.get("z") is not None]
    ca = c.layout.get("coloraxis") or {}
    finite = [z[np.isfinite(z)] for z in heat if np.isfinite(z).any()]
    scale = (float(ca.get("cmin", min(float(z.min()) for z in finite))), float(ca.get("cmax", max(float(z.max()) for z in finite)))) if finite else (0.0, 1.0)
    axes: dict[tuple[str, str], tuple[Axis, Axis]] = {}
    for (xid, yid), items in pairs.items():
        if all(t["type"] == "heatmap" for _, t in items):
            for _, t in items:
                _heatmap(c, t, xid, yid, scale)
            continue
        ax, ay = axes[(xid, yid)] = _axes(c, xid, yid, [t for _, t in items])
        _draw_axes(c, ax, ay, xid, yid)
        bars = [(i, t) for i, t in items if t["type"] == "bar"]
        if bars:
            _bars(c, bars, ax, ay)
        for i, t in items:
            if t["type"] == "scatter":
                _scatter(c, t, ax, ay, _colour(t, i))
    _shapes(c, axes)
    _annotations(c, axes)
    if c.legend:
        legend(c)
    title = _plain(c.layout.get("title", ""))
    head = f'<text x="{WIDTH / 2:.0f}" y="24" text-anchor="middle" font-size="15">{_e(title)}</text>' if title else ""
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {c.height}" width="100%" role="img" '
            f'font-family="system-ui,sans-serif" aria-label="{_e(title)}">{head}{"".join(c.out)}</svg>')
