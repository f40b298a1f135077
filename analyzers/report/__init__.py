"""HTML reports: the only place in lpa that writes HTML.

A report is one self-contained file: plotly.js is embedded (no CDN, no network request), and every
string that comes from a user or a file is escaped before it reaches the page.
"""

from analyzers.report.page import Page

__all__ = ["Page"]
