"""`lpa probe` as a library call: fit per-depth read-outs on one trace, evaluate on another."""

from __future__ import annotations

from pathlib import Path

from lpa_core.atomic import check_writable
from analyzers.probes import evaluate, fit
from analyzers.trace import open_trace


def probe(trace: Path, fit_on: Path, kind: str = "tuned", output: Path | None = None, depths: str | None = None,
          ridge: float = 1e-3, force: bool = False) -> dict:
    """Fit ``kind`` on ``fit_on``, evaluate it and the logit lens on ``trace``; save the probe."""
    target = output or trace.with_suffix(f".{kind}.safetensors")
    if kind != "logit":
        check_writable(target, force, inputs=[trace, fit_on])  # before the work: never over a trace it reads
    with open_trace(fit_on) as train, open_trace(trace) as test:
        lens = fit(train, kind, depths=depths, ridge=ridge)
        logit = evaluate(fit(train, "logit"), test)
        metrics = logit if kind == "logit" else evaluate(lens, test)
        depth_list = test.depths
    saved = None
    if kind != "logit":
        saved = lens.save(target, force=force)
    return {"kind": kind, "trace": str(trace), "fit_on": str(fit_on), "depths": depth_list, "logit": logit,
            "probe": metrics, "output": str(saved) if saved else None}
