"""Strings from files made inert before they reach a terminal, a log or an XML report.

A file name or a metadata string may hold control characters: ESC sequences that retitle a terminal
window, recolour or hide text, or make fake links (OSC 8); a carriage return or newline that forges a
line; bidirectional overrides that reorder what is shown; and characters XML 1.0 cannot hold at all.
`inert` writes each of them as a visible escape (``\\x1b``, ``\\u202e``) and leaves everything else
as it is.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline too: a field is one line), DEL, C1 controls, bidi embeddings, overrides
# and isolates, the line and paragraph separators, and lone surrogates (not encodable)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    c = ord(match.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def inert(text: object, lines: bool = False) -> str:
    """``str(text)`` with every control, bidi and unencodable character written as an escape; with
    ``lines``, newlines and tabs stay (text meant to span lines, such as a model's output)."""
    if lines:
        return "\n".join("\t".join(_UNSAFE.sub(_escape, cell) for cell in line.split("\t")) for line in str(text).split("\n"))
    return _UNSAFE.sub(_escape, str(text))


__all__ = ["inert"]
