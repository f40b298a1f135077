"""The marks an SVG figure draws (`analyzers.report.svg`): escaping, trace colours, markers, the legend."""

from __future__ import annotations

import html
from typing import Any

PLOTLY = ["#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A", "#19d3f3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52"]
DASHES = {"dash": "8 5", "dot": "2 4", "dashdot": "8 4 2 4", "longdash": "12 6"}


def _e(text: Any) -> str:  # as the page's own escaping: U+2028/2029 too
    return html.escape(str(text), quote=True).replace("\u2028", "&#x2028;").replace("\u2029", "&#x2029;")

def _plain(text: Any) -> str:
    """Plotly titles may hold HTML the figure code escaped for plotly; SVG text wants the plain string."""
    return html.unescape(str(text.get("text", "") if isinstance(text, dict) else text or ""))


def _colour(trace: dict, index: int) -> str:
    for value in ((trace.get("line") or {}).get("color"), (trace.get("marker") or {}).get("color"), trace.get("fillcolor")):
        if isinstance(value, str):
            return value
    return PLOTLY[index % len(PLOTLY)]


def _marker(px: float, py: float, colour: str, marker: dict, opacity: float, title: str) -> str:
    r = float(marker.get("size") or 6) / 2
    symbol = str(marker.get("symbol") or "circle")
    if symbol.startswith("x"):
        return (f'<g stroke="{colour}" stroke-width="2" opacity="{opacity}"><line x1="{px - r:.1f}" y1="{py - r:.1f}" x2="{px + r:.1f}" '
                f'y2="{py + r:.1f}"/><line x1="{px - r:.1f}" y1="{py + r:.1f}" x2="{px + r:.1f}" y2="{py - r:.1f}"/>{title}</g>')
    if symbol.startswith("diamond"):
        fill = "none" if symbol.endswith("open") else colour
        pts = f"{px:.1f},{py - r:.1f} {px + r:.1f},{py:.1f} {px:.1f},{py + r:.1f} {px - r:.1f},{py:.1f}"
        return f'<polygon points="{pts}" fill="{fill}" stroke="{colour}" stroke-width="1.5" opacity="{opacity}">{title}</polygon>'
    return f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{r:.1f}" fill="{colour}" opacity="{opacity}">{title}</circle>'


LEGEND_CHARS = 34  # characters a legend line holds in the right margin; a longer name wraps onto a second line


def _legend_lines(name: str) -> list[str]:
    """A legend name in at most two lines, cut at a space (a name longer than two lines ends in "…")."""
    if len(name) <= LEGEND_CHARS:
        return [name]
    cut = name.rfind(" ", 0, LEGEND_CHARS + 1)
    cut = cut if cut > 0 else LEGEND_CHARS
    rest = name[cut:].strip()
    return [name[:cut], rest if len(rest) <= LEGEND_CHARS else rest[: LEGEND_CHARS - 1] + "…"]


def legend(c: Any) -> None:
    """The legend of canvas ``c`` (`analyzers.report.svg`) in its right margin."""
    y, bottom = c.top + 4, c.height - 4
    for index, t in c.legend:
        colour, name = _colour(t, index), _plain(t.get("name", ""))
        lines = _legend_lines(name)
        if y + 14 * (len(lines) - 1) > bottom:
            break
        x = c.right + 16
        mode = t.get("mode") or "lines"
        if t.get("fill") == "toself":
            swatch = f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="22" height="10" fill="{t.get("fillcolor") or colour}" stroke="{colour}"/>'
        elif t.get("type") == "bar":
            swatch = f'<rect x="{x + 5:.1f}" y="{y - 10:.1f}" width="12" height="12" fill="{colour if isinstance(colour, str) else PLOTLY[0]}"/>'
        elif "lines" in mode:  # the line as drawn: its dash, and its marker where it has one, so rules of one colour differ
            line = t.get("line") or {}
            dash = f' stroke-dasharray="{DASHES[line["dash"]]}"' if line.get("dash") in DASHES else ""
            swatch = f'<line x1="{x:.1f}" x2="{x + 22:.1f}" y1="{y - 4:.1f}" y2="{y - 4:.1f}" stroke="{colour}" stroke-width="2"{dash}/>'
            if "markers" in mode:
                swatch += _marker(x + 11, y - 4, colour, t.get("marker") or {}, 1.0, "")
        else:
            swatch = _marker(x + 11, y - 4, colour, t.get("marker") or {}, 1.0, "")
        text = "".join(f'<tspan x="{x + 28:.1f}" dy="{0 if i == 0 else 13}">{_e(line)}</tspan>' for i, line in enumerate(lines))
        c.out.append(f"<g>{swatch}<text x=\"{x + 28:.1f}\" y=\"{y:.1f}\" font-size=\"11\">{text}<title>{_e(name)}</title></text></g>")
        y += 18 + 13 * (len(lines) - 1)
