"""`lpa monotonicity` as a library call: trace a checkpoint if needed, then test it."""

from __future__ import annotations

from pathlib import Path

from lpa_core.errors import UsageError
from analyzers.monotonicity import MonotonicityResult, from_trace
from analyzers.trace import open_trace
from lpa_cli.workflows.inputs import as_trace


def analyze(path: str | Path, *, lens: str | None = None, verify: bool = True, factory: str = "", trust_factory: bool = False,
            data: str | None = None, **kwargs) -> MonotonicityResult:
    """Test whether error falls with depth on a trace, or on a checkpoint's own test split (traced into
    a temporary file first; ``factory``/``trust_factory`` as `load_checkpoint`). ``kwargs`` go to
    `analyzers.monotonicity.from_trace`."""
    from analyzers.probes import load_lens

    lens_obj = load_lens(lens) if lens else None
    with as_trace(path, verify=verify, states=lens_obj is not None, factory=factory, trust_factory=trust_factory, data=data) as trace_path, open_trace(trace_path) as trace:
        result = from_trace(trace, lens=lens_obj, **kwargs)
    result.source = str(path)
    return result


def write_report(results: list[MonotonicityResult], target: str | Path, inputs: list[Path], force: bool = False,
                 plotlyjs: str | None = None) -> Path:
    """The HTML report of ``results`` at ``target`` (never over one of the inputs; over another file
    only with ``force``); ``plotlyjs``: see `analyzers.report.page.Page.render` (None: its default)."""
    from analyzers.report.monotonicity import monotonicity_page

    target = Path(target)
    for p in inputs:
        if Path(p).exists() and target.exists() and target.resolve() == Path(p).resolve():
            raise UsageError(f"{target}: the report would overwrite one of the inputs; choose another --report-path")
    return monotonicity_page(results).save(target, force=force, plotlyjs=plotlyjs)
