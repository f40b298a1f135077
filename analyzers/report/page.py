"""A minimal self-contained HTML page of headings, paragraphs, tables and plotly figures."""

from __future__ import annotations

import datetime as _dt
import html
import json
import platform
import sys
from pathlib import Path
from typing import Any

import plotly
import plotly.io as pio

from lpa_core.files import readable
from lpa_core.atomic import write_text
from lpa_core.errors import OutputError, UsageError
from analyzers.report.svg import figure_svg

PLOTLYJS = ("none", "embed", "directory")  # none: figures drawn as SVG, no script; embed/directory: interactive plotly, its
# plotly.js inside the report or shared beside it
BUNDLE = "plotly.min.js"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:right}
th{background:#f5f5f5}td.l,th.l{text-align:left}.bad{color:#b00020;font-weight:600}.good{color:#0a7a2f;font-weight:600}
.note{color:#555;font-size:.9rem}code{background:#f3f3f3;padding:0 .2rem}figure.fig{margin:.5rem 0}
"""


COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]  # one a group, in every report


def colour(i: int) -> str:
    return COLOURS[i % len(COLOURS)]


def rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def label(text: str) -> str:
    """Plotly renders some HTML in trace names and titles: escape user strings before they get there."""
    return html.escape(str(text))


def log_axis(values: list[float]) -> bool:
    """Whether values are drawn on a log axis: positive ones spanning more than a decade, where a linear
    axis would flatten the small end (the deep depths' errors) onto zero. Every report uses this rule."""
    values = [v for v in values if v is not None and v == v and v > 0]
    return bool(values) and max(values) / min(values) > 10


def depth_axis() -> dict[str, Any]:
    """An x axis of depths: integer ticks only."""
    return {"title": "depth", "tickmode": "linear", "dtick": 1, "tick0": 0}


def provenance() -> list[list[str]]:
    """What made a report: the command line, the versions, the date."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy
    import scipy

    try:
        lpa = version("lpa")
    except PackageNotFoundError:
        lpa = "unknown"
    return [
        ["command", " ".join(sys.argv) or "(Python API)"],
        ["lpa", lpa],
        ["Python, numpy, scipy, plotly", f"{platform.python_version()}, {numpy.__version__}, {scipy.__version__}, {plotly.__version__}"],
        ["machine", f"{platform.machine()} {platform.system()}"],
        ["created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")],
    ]


def esc(value: Any) -> str:
    """Escape anything for HTML text and attributes (U+2028/2029 too, for embedded scripts)."""
    return html.escape(str(value), quote=True).replace("\u2028", "&#x2028;").replace("\u2029", "&#x2029;")


class Page:
    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{esc(text)}</h{level}>")

    def paragraph(self, text: str, css: str = "") -> None:
        cls = f' class="{esc(css)}"' if css else ""
        self.parts.append(f"<p{cls}>{esc(text)}</p>")

    def table(self, header: list[str], rows: list[list[Any]], left: int = 1, classes: list[list[str]] | None = None) -> None:
        """A table; the first ``left`` columns are left-aligned. ``classes`` marks cells (e.g. "bad")."""
        head = "".join(f'<th class="l">{esc(h)}</th>' if i < left else f"<th>{esc(h)}</th>" for i, h in enumerate(header))
        body = []
        for r, row in enumerate(rows):
            cells = []
            for i, cell in enumerate(row):
                css = ["l"] if i < left else []
                if classes and r < len(classes) and i < len(classes[r]) and classes[r][i]:
                    css.append(classes[r][i])
                attr = f' class="{" ".join(css)}"' if css else ""
                cells.append(f"<td{attr}>{esc(cell)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")

    def figure(self, fig) -> None:
        self.parts.append(fig)  # drawn when the page is rendered: as SVG, or as a plotly figure

    @staticmethod
    def _draw(part: Any, plotlyjs: str) -> str:
        if isinstance(part, str):
            return part
        if plotlyjs == "none":
            return f'<figure class="fig">{figure_svg(part)}</figure>'
        # plotly escapes <, > and / inside its JSON, so strings in figures cannot close the script tag.
        return pio.to_html(part, full_html=False, include_plotlyjs=False, config={"displaylogo": False})

    def raw_json(self, element_id: str, data: Any) -> None:
        """Machine-readable results embedded in the page (escaped for a script element)."""
        text = json.dumps(data, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
        text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        self.parts.append(f'<script type="application/json" id="{esc(element_id)}">{text}</script>')

    def render(self, plotlyjs: str | None = None) -> str:
        """The page. ``plotlyjs="none"`` draws every figure as inline SVG (no script; tens of KB), ``"embed"``
        puts plotly.js inside it for interactive figures (one file, 4.8 MB more), ``"directory"`` loads
        ``plotly.min.js`` from the report's own folder (`save` writes the bundle there). The page loads
        nothing from the network in any of them. None: the first of `PLOTLYJS` (none)."""
        plotlyjs = plotlyjs or PLOTLYJS[0]
        if plotlyjs not in PLOTLYJS:
            raise UsageError(f"--plotlyjs must be {' or '.join(PLOTLYJS)}, got {plotlyjs!r}")
        script = {"embed": f"<script type=\"text/javascript\">{plotly.offline.get_plotlyjs()}</script>",
                  "directory": f"<script src=\"{BUNDLE}\" charset=\"utf-8\"></script>", "none": ""}[plotlyjs]
        tail = Page("")
        tail.heading("Provenance")
        tail.table(["", ""], provenance(), left=2)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{esc(self.title)}</title><style>{CSS}</style>"
            f"{script}</head><body>"
            f"<h1>{esc(self.title)}</h1>" + "\n".join(self._draw(p, plotlyjs) for p in self.parts + tail.parts) + "</body></html>\n"
        )

    def save(self, path: str | Path, force: bool = False, plotlyjs: str | None = None) -> Path:
        """Write the page; with ``plotlyjs="directory"`` also the shared bundle beside it (once: reports
        in one folder share it; it is rewritten only when it is not this plotly's)."""
        page = self.render(plotlyjs)
        if plotlyjs == "directory":
            bundle = Path(path).with_name(BUNDLE)
            js = plotly.offline.get_plotlyjs()
            old = readable(bundle, "script", error=OutputError).read_bytes() if bundle.is_file() else None
            if old != js.encode("utf-8"):  # missing, or another plotly's: replaced; anything else only with force
                write_text(bundle, js, force=force or (old is not None and old.startswith(b"/**\n* plotly.js")))
        return write_text(path, page, force=force)
