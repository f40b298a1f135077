"""`lpa audit` as a library call: every rule of an audit config on every input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analyzers.audit import Case, check, load_config
from analyzers.monotonicity import MonotonicityResult, from_trace
from analyzers.trace import open_trace
from lpa_cli.workflows.inputs import as_trace


def _evaluate(path: Path, rules: dict, verify: bool, trust: dict) -> tuple[MonotonicityResult, list[float] | None]:
    with as_trace(path, verify=verify, **trust) as trace_path, open_trace(trace_path) as t:
        result = from_trace(t, metric=rules.get("metric"), tolerance=rules.get("tolerance", 0.01), alpha=rules.get("alpha", 0.05),
                            within=rules.get("within", 0.05), bootstrap=rules.get("bootstrap", 1000), seed=rules.get("seed", 0))
        accuracy = t.errors("correct").mean(axis=0, dtype=np.float64).tolist() if t.kind != "regression" else None
    result.source = str(path)
    return result, accuracy


def audit(inputs: list[Path], config: Path | None = None, verify: bool = True, *, factory: str = "",
          trust_factory: bool = False) -> list[Case]:
    """Every rule on every input (the Python API behind the command); ``factory``/``trust_factory``:
    as `lpa_cli.models.open.load_checkpoint`."""
    cfg = load_config(config)
    trust = {"factory": factory, "trust_factory": trust_factory}
    references: dict[str, MonotonicityResult] = {}
    cases: list[Case] = []
    for path in inputs:
        rules = cfg.for_input(str(path))
        result, accuracy = _evaluate(Path(path), rules, verify, trust)
        reference = None
        if "max_final_error_ratio" in rules and rules.get("reference"):
            ref = rules["reference"]
            if ref not in references:
                references[ref] = _evaluate(Path(ref), rules, verify, trust)[0]
            reference = references[ref]
        cases.extend(check(str(path), rules, result, accuracy, reference))
    return cases
