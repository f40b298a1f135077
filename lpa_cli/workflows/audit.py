"""`lpa audit` as a library call: every rule of an audit config on every input."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dataclasses import dataclass

from lpa_core.errors import ConfigError
from lpa_core.text import inert
from analyzers.audit import Case, check, load_config
from analyzers.monotonicity import MonotonicityResult, from_trace
from analyzers.trace import is_trace, open_trace
from lpa_cli.workflows.inputs import as_trace


@dataclass
class Evaluated:
    result: MonotonicityResult
    accuracy: list[float] | None
    data_id: str  # what it was evaluated on (the trace's `data_id`)
    covered: bool | None  # a checkpoint's metadata under its hash (None: a trace, False: format 1)


def _evaluate(path: Path, rules: dict, verify: bool, trust: dict, data: str | None = None) -> Evaluated:
    covered = None
    if not is_trace(path) and verify and path.is_file():
        from lpa_cli.formats.checkpoint import read_metadata
        from lpa_cli.formats.hashes import check_metadata_hash

        covered = check_metadata_hash(path, read_metadata(path))
    with as_trace(path, verify=verify, data=data, **trust) as trace_path, open_trace(trace_path) as t:
        result = from_trace(t, metric=rules.get("metric"), tolerance=rules.get("tolerance", 0.01), alpha=rules.get("alpha", 0.05),
                            within=rules.get("within", 0.05), bootstrap=rules.get("bootstrap", 1000), seed=rules.get("seed", 0))
        accuracy = t.errors("correct").mean(axis=0, dtype=np.float64).tolist() if t.kind != "regression" else None
        data_id = str(t.attrs.get("data_id", ""))
    result.source = str(path)
    return Evaluated(result, accuracy, data_id, covered)


def audit(inputs: list[Path], config: Path | None = None, verify: bool = True, *, factory: str = "",
          trust_factory: bool = False, data: str | None = None) -> list[Case]:
    """Every rule on every input (the Python API behind the command); ``factory``/``trust_factory``:
    as `lpa_cli.models.open.load_checkpoint`. An input no rule applies to is a failing case (a gate
    that checks nothing must not pass); a reference evaluated on another kind of task or another data
    set is a `ConfigError`. ``data``: evaluate the inputs (not a reference) on it instead of their own."""
    cfg = load_config(config)
    trust = {"factory": factory, "trust_factory": trust_factory}
    references: dict[str, Evaluated] = {}
    cases: list[Case] = []
    for path in inputs:
        rules = cfg.for_input(str(path))
        ev = _evaluate(Path(path), rules, verify, trust, data)
        reference = None
        if "max_final_error_ratio" in rules and rules.get("reference"):
            ref = rules["reference"]
            if ref not in references:
                references[ref] = _evaluate(Path(ref), rules, verify, trust)
            reference = references[ref]
            if (reference.result.kind, reference.data_id) != (ev.result.kind, ev.data_id):
                raise ConfigError(f"reference {inert(ref)} was evaluated on {inert(reference.data_id or reference.result.kind)}, "
                                  f"{inert(path)} on {inert(ev.data_id or ev.result.kind)}: a final-error ratio compares one data set")
        checked = check(str(path), rules, ev.result, ev.accuracy, None if reference is None else reference.result)
        if not checked:
            checked = [Case(str(path), "no rule applies", False, None, None,
                            f"no audit rule applies to this input (config {cfg.source}); add a rule or an override for it")]
        if ev.covered is False:
            checked.append(Case(str(path), "metadata hash", True, "format 1", "format 2",
                                "warning: its metadata (task, data) is not covered by a hash (checkpoint format 1), so the evaluation "
                                "set it names could have been edited; re-save it with lpa export CKPT --at N to cover it"))
        cases.extend(checked)
    return cases
