"""Rich rendering shared by the commands (the only place besides commands that talks to the terminal)."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.markup import escape

from lpa_core.text import inert
from rich.table import Table

from analyzers.metrics import HIGHER_IS_BETTER
from analyzers.metrics import finite

BAR_WIDTH = 24


LOG_WIDTH = 160  # columns when writing to a log or pipe: rich's 80 would wrap every wide table's rows


def _console(stderr: bool, quiet: bool, **kwargs: Any) -> Console:
    console = Console(stderr=stderr, quiet=quiet, **kwargs)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = LOG_WIDTH
    return console


def consoles(quiet: bool = False) -> tuple[Console, Console]:
    """(stdout console for results, stderr console for progress and messages); in a log or pipe they
    are `LOG_WIDTH` wide (``COLUMNS`` overrides), so tables keep one line per row."""
    return _console(False, quiet, soft_wrap=False), _console(True, quiet)


def print_json(data: Any) -> None:
    """Strict JSON on stdout: NaN and infinities become null (JSON has no such numbers). Objects are
    indented; a list of plain values stays on one line, so a per-depth curve reads as one row and
    the C encoder writes the long ones (a compare's heatmaps hold 10^5 numbers)."""
    sys.stdout.write(_dumps(finite(data), 0) + "\n")
    sys.stdout.flush()


def _dumps(value: Any, level: int) -> str:
    inner, outer = "  " * (level + 1), "  " * level
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(k)}: {_dumps(v, level + 1)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + outer + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _dumps(v, level + 1) for v in value) + "\n" + outer + "]"
    return json.dumps(value, allow_nan=False)


def esc(text: Any) -> str:
    """A user string (a path, a run name, a metadata field) made safe for rich markup and for the
    terminal: control and bidi characters are shown as escapes (`lpa_core.text.inert`)."""
    return escape(inert(text))


def bars(values: list[float]) -> list[str]:
    """Horizontal bars for a per-depth error curve; log scale when it spans more than a decade."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ["" for _ in values]
    lo, hi = min(finite), max(finite)
    use_log = lo > 0 and hi / lo > 10
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append("")
            continue
        if hi == lo:
            frac = 1.0
        elif use_log:
            frac = (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
            frac = 0.05 + 0.95 * frac
        else:
            frac = max(0.0, v) / hi if hi > 0 else 0.0
        out.append("█" * max(1, round(frac * BAR_WIDTH)))
    return out


def fmt(value: float | None, metric: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if metric in ("acc", "err", "r2"):
        return f"{value:.4f}"
    if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3):
        return f"{value:.3e}"
    return f"{value:.4f}"


def depth_table(metrics: dict[str, list[float]], title: str = "per-depth test metrics", bar_metric: str | None = None,
                depths: list[int] | None = None) -> Table:
    """One row per depth, one column per metric, plus a bar of the main error metric. ``depths`` labels
    the rows when the metrics cover a subset of depths (position j is depth ``depths[j]``)."""
    metrics = {k: [v if isinstance(v, (int, float)) or v is None else None for v in vals] for k, vals in metrics.items() if isinstance(vals, list)}
    order = ["mse", "rmse", "r2", "ce", "ppl", "acc", "err"]
    names = sorted(metrics, key=lambda m: order.index(m) if m in order else len(order))
    n = max((len(v) for v in metrics.values()), default=0)
    bar_metric = bar_metric or next((m for m in names if m not in HIGHER_IS_BETTER), names[0] if names else None)
    if bar_metric not in metrics:
        bar_metric = None
    table = Table(title=esc(title), title_justify="left")
    table.add_column("depth", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    if bar_metric:
        table.add_column(f"{bar_metric} (log)" if _spans_decades(metrics[bar_metric]) else bar_metric, style="cyan")
    drawn = bars(metrics[bar_metric]) if bar_metric else [""] * n
    labels = depths if depths is not None and len(depths) == n else list(range(n))
    for k in range(n):
        row = [str(labels[k])] + [fmt(metrics[m][k] if k < len(metrics[m]) else None, m) for m in names]
        table.add_row(*row, drawn[k])
    return table


def _spans_decades(values: list[float]) -> bool:
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return bool(finite) and max(finite) / min(finite) > 10


def duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class LogProgress:
    """Progress as plain lines, for a log rather than a terminal (nohup, CI, a notebook cell, `> log
    2>&1`), where a live bar shows nothing: one line every ``every`` units (a tenth of the total by
    default) and at least every ``seconds``, with the rate and the time left."""

    def __init__(self, console: Console, what: str, total: int, unit: str = "steps", every: int = 0, seconds: float = 30.0,
                 clock=None) -> None:
        import time

        self.console, self.what, self.total, self.unit = console, what, max(1, int(total)), unit
        self.every = every or max(1, self.total // 10)
        self.seconds = seconds
        self.clock = clock or time.monotonic
        self.began = self.last = self.clock()
        self.start = None
        self.shown = -1

    def due(self, done: int) -> bool:
        """Whether `update` would print a line now (so a caller builds its detail only then)."""
        if self.start is None or done == self.shown:
            return self.start is None
        return done >= self.total or (done - self.start) % self.every == 0 or self.clock() - self.last >= self.seconds

    def update(self, done: int, detail: str = "", rate_unit: str = "", per_unit: float = 1.0) -> None:
        """Report ``done`` of the total (``detail``: e.g. the loss per depth); ``per_unit`` converts the
        rate into ``rate_unit`` (samples per step, say)."""
        now = self.clock()
        if self.start is None:  # the first item starts the clock: a rate counts only what came after it
            self.start, self.began = done, now
            if done < self.total:
                return
            self.shown = done  # everything in one go: the line, without a rate it cannot know
            self.console.print(escape(f"{self.what} {done:,}/{self.total:,}" + (f"  {detail}" if detail else "")), soft_wrap=True,
                               highlight=False)
            return
        if not self.due(done):
            return
        self.last, self.shown = now, done
        elapsed = now - self.began
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.what} {done:,}/{self.total:,}"]
        if detail:
            parts.append(detail)
        if rate > 0:
            parts.append(f"{rate * per_unit:,.1f} {rate_unit or self.unit}/s")
            parts.append(f"ETA {duration((self.total - done) / rate)}" if done < self.total else f"took {duration(elapsed)}")
        self.console.print(escape("  ".join(parts)), soft_wrap=True, highlight=False)


def distinct_names(paths: list[str]) -> list[str]:
    """Paths shortened to what tells them apart: the folder and the suffix they all share are dropped
    (runs/gpt-lpa.safetensors, runs/gpt-e2e.safetensors -> gpt-lpa, gpt-e2e), so a narrow table
    column never cuts two inputs to the same ``runs/gp…``."""
    import os

    if len(paths) < 2:
        return [str(p) for p in paths]
    parts = [str(p) for p in paths]
    folder = os.path.commonpath([os.path.dirname(p) or "." for p in parts]) if all(os.path.dirname(p) for p in parts) else ""
    names = [os.path.relpath(p, folder) if folder else p for p in parts]
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    suffix = suffix[suffix.find("."):] if "." in suffix else ""
    out = [n[: len(n) - len(suffix)] if suffix and len(n) > len(suffix) else n for n in names]
    return out if len(set(out)) == len(out) else parts


def progress_lines(console: Console, what: str, unit: str) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback printing `LogProgress` lines (made on the first call, when
    the total is known); the commands hand it to the library where stderr is a log."""
    lines: list[LogProgress] = []

    def report(done: int, total: int) -> None:
        if not lines:  # the clock starts at the first item reported: rates count what came after it
            lines.append(LogProgress(console, what, total, unit))
        lines[0].update(done)

    return report
