"""Rich rendering shared by the commands (the only place besides commands that talks to the terminal)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from rich.console import Console
from rich.table import Table

from analyzers.metrics import HIGHER_IS_BETTER

BAR_WIDTH = 24


def consoles(quiet: bool = False) -> tuple[Console, Console]:
    """(stdout console for results, stderr console for progress and messages)."""
    out = Console(quiet=quiet, soft_wrap=False)
    err = Console(stderr=True, quiet=quiet)
    return out, err


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")
    sys.stdout.flush()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


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


def depth_table(metrics: dict[str, list[float]], title: str = "per-depth test metrics", bar_metric: str | None = None) -> Table:
    """One row per depth, one column per metric, plus a bar of the main error metric."""
    order = ["mse", "rmse", "r2", "ce", "ppl", "acc", "err"]
    names = sorted(metrics, key=lambda m: order.index(m) if m in order else len(order))
    n = max((len(v) for v in metrics.values()), default=0)
    bar_metric = bar_metric or next((m for m in names if m not in HIGHER_IS_BETTER), names[0] if names else None)
    table = Table(title=title, title_justify="left")
    table.add_column("depth", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    if bar_metric:
        table.add_column(f"{bar_metric} (log)" if _spans_decades(metrics[bar_metric]) else bar_metric, style="cyan")
    drawn = bars(metrics[bar_metric]) if bar_metric else [""] * n
    for k in range(n):
        row = [str(k)] + [fmt(metrics[m][k] if k < len(metrics[m]) else None, m) for m in names]
        table.add_row(*row, drawn[k])
    return table


def _spans_decades(values: list[float]) -> bool:
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return bool(finite) and max(finite) / min(finite) > 10
