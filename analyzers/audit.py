"""CI gates on trained models: rules from a ``[tool.lpa.audit]`` table checked against traces.

Rules (each optional):

- ``monotone = true`` — the monotonicity test passes (with the table's ``alpha`` and ``tolerance``);
- ``max_error = {DEPTH = LIMIT, ...}`` — the metric at a depth (negative depths count from the end)
  is at most LIMIT;
- ``min_accuracy = {DEPTH = LIMIT, ...}`` — classification / language models: accuracy at least LIMIT;
- ``max_final_error_ratio = R`` with ``reference = "PATH"`` — the final error is at most R times the
  reference checkpoint's (or trace's) final error;
- ``max_deploy_depth = K`` — the shallowest depth within ``within`` of the final error is at most K;
- ``max_calibration_error``, ``max_kl_to_final`` (classification, LMs), ``min_alignment`` (every kind) =
  ``{DEPTH = LIMIT, ...}`` — the trajectory's statistics (`analyzers.trajectory_summary`) at a depth.

Depth tables take ``"deploy"`` for the deploy depth (``max_calibration_error = { deploy = 0.05 }``: can the
confidence at the depth you would ship be trusted).

Settings: ``metric``, ``alpha`` (0.05), ``tolerance`` (0.01), ``within`` (0.05), ``bootstrap``
(1000), ``seed`` (0), ``reference``. ``[tool.lpa.audit.overrides."GLOB"]`` tables change rules and
settings for inputs whose file name matches GLOB (``"mlp-*-lpa.safetensors"``; a GLOB with ``/`` matches
the path's last components, as `pathlib.PurePath.match` does: ``*`` never crosses a ``/``, and a pattern
never matches a mere substring of a path). Unknown names are an error, never ignored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path, PurePath
from typing import Any

from lpa_core.files import readable
from lpa_core.errors import ConfigError, UsageError
from lpa_core.text import inert
from lpa_core.tomlfile import TOMLDecodeError, toml_loads
from analyzers.metrics import error_ratio, format_p
from analyzers.monotonicity import MonotonicityResult, check_settings
from lpa_core.depths import spans

# depth-table rules on the trajectory: rule -> (TrajectoryResult field, at most (True) or at least, what it is)
TRAJECTORY_RULES = {"max_calibration_error": ("calibration_error", True, "calibration error"),
                    "max_kl_to_final": ("kl_to_final", True, "KL to the final depth"),
                    "min_alignment": ("alignment", False, "alignment")}
DEPTH_TABLES = ("max_error", "min_accuracy", *TRAJECTORY_RULES)
RULES = ("monotone", "max_error", "min_accuracy", "max_final_error_ratio", "max_deploy_depth", *TRAJECTORY_RULES)
SETTINGS = ("metric", "alpha", "tolerance", "within", "bootstrap", "seed", "reference")


@dataclass
class Case:
    """One rule checked on one input: a JUnit test case."""

    input: str
    rule: str
    passed: bool
    value: Any
    limit: Any
    message: str


@dataclass
class AuditConfig:
    source: str
    base: dict[str, Any]
    overrides: dict[str, dict[str, Any]]

    def for_input(self, path: str) -> dict[str, Any]:
        merged = dict(self.base)
        for pattern, table in self.overrides.items():
            if PurePath(path).match(pattern):
                merged.update(table)
        return merged


def _check_table(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - set(RULES) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"{where}: unknown audit rule or setting {', '.join(unknown)} (known: {', '.join(RULES + SETTINGS)})")
    for key in DEPTH_TABLES:
        if key in table:
            if not isinstance(table[key], dict) or not table[key]:
                raise ConfigError(f"{where}.{key} must be a table of depth = limit, e.g. {{ \"3\" = 0.01 }}")
            for depth, limit in table[key].items():
                try:
                    int(depth) if depth != "deploy" else None
                except ValueError:
                    raise ConfigError(f"{where}.{key}: {depth!r} is not a depth (an integer, or \"deploy\")") from None
                if isinstance(limit, bool) or not isinstance(limit, (int, float)):
                    raise ConfigError(f"{where}.{key}.{depth}: limit must be a number")
    if "monotone" in table and not isinstance(table["monotone"], bool):
        raise ConfigError(f"{where}.monotone must be true or false")
    for key in ("max_final_error_ratio", "alpha", "tolerance", "within"):
        if key in table and (isinstance(table[key], bool) or not isinstance(table[key], (int, float)) or not math.isfinite(table[key])
                             or table[key] < 0):
            raise ConfigError(f"{where}.{key} must be a finite number >= 0")
    for key in ("max_deploy_depth", "bootstrap", "seed"):
        if key in table and (isinstance(table[key], bool) or not isinstance(table[key], int) or table[key] < 0):
            raise ConfigError(f"{where}.{key} must be an integer >= 0")
    for key in DEPTH_TABLES:
        for depth, limit in (table.get(key) or {}).items():
            if not math.isfinite(limit):
                raise ConfigError(f"{where}.{key}.{depth}: limit must be finite")
    if "reference" in table and not isinstance(table["reference"], str):
        raise ConfigError(f"{where}.reference must be a path (a string)")
    if "metric" in table and not isinstance(table["metric"], str):
        raise ConfigError(f"{where}.metric must be a string")
    try:
        check_settings(**{k: table[k] for k in ("tolerance", "alpha", "within", "bootstrap", "seed") if k in table})
    except UsageError as err:
        raise ConfigError(f"{where}: {err}") from None
    return table


def load_config(path: str | Path | None) -> AuditConfig:
    """The ``[tool.lpa.audit]`` table of ``path`` (default: ./pyproject.toml)."""
    path = readable(Path(path) if path else Path("pyproject.toml"), "config", error=ConfigError)
    try:
        data = toml_loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (give rules with --config FILE or a [tool.lpa.audit] table in ./pyproject.toml)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read ({err})") from None
    except TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({err})") from None
    table = data.get("tool", {}).get("lpa", {}).get("audit") if isinstance(data.get("tool"), dict) else None
    if table is None:
        raise ConfigError(f"{path}: no [tool.lpa.audit] table")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [tool.lpa.audit] must be a table")
    table = dict(table)
    overrides = table.pop("overrides", {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"{path}: [tool.lpa.audit.overrides] must be a table of tables")
    base = _check_table(table, "[tool.lpa.audit]")
    checked = {pattern: _check_table(t, f"[tool.lpa.audit.overrides.{pattern!r}]") for pattern, t in overrides.items()}
    if not any(k in RULES for k in base) and not any(any(k in RULES for k in t) for t in checked.values()):
        raise ConfigError(f"{path}: [tool.lpa.audit] defines no rule (one of {', '.join(RULES)})")
    if "reference" in base:
        base["reference"] = str((path.parent / base["reference"]).resolve()) if not Path(base["reference"]).is_absolute() else base["reference"]
    for t in checked.values():
        if "reference" in t and not Path(t["reference"]).is_absolute():
            t["reference"] = str((path.parent / t["reference"]).resolve())
    return AuditConfig(str(path), base, checked)


def _at(values: list[float], depths: list[int], key: str, name: str, deploy: int | None = None) -> tuple[int, float]:
    k = deploy if key == "deploy" and deploy is not None else int(key)
    index = k if k < 0 else (depths.index(k) if k in depths else None)
    if index is None or not -len(values) <= index < len(values):
        raise ConfigError(f"{name}: depth {key} is not among the recorded depths {depths}")
    return depths[index], values[index]


def check(path: str, rules: dict[str, Any], result: MonotonicityResult, accuracy: list[float] | None,
          reference: MonotonicityResult | None) -> list[Case]:
    """All rules of ``rules`` on one input's monotonicity result."""
    cases: list[Case] = []
    if "monotone" in rules:
        want = rules["monotone"]
        worst = ", ".join(f"{s.frm}→{s.to} rises {s.delta:.3g} ({format_p(s.p_holm)})" for s in result.violations) or "no significant rise"
        ok = result.monotone or not want
        never = f"; warning: {spans(result.never_learned)} never left chance" if result.never_learned and not result.no_descent else ""
        cases.append(Case(path, "monotone", ok, result.verdict, "monotone" if want else "any",
                          f"{result.verdict} at alpha {result.alpha:g}, tolerance {result.tolerance_rel:g} of the descent: {worst}{never}"))
    for key, limit in (rules.get("max_error") or {}).items():
        depth, value = _at(result.curve, result.depths, key, "max_error", result.deploy_depth)
        if result.metric == "acc":
            raise ConfigError("max_error needs an error metric; this audit uses metric = \"acc\" (use min_accuracy)")
        cases.append(Case(path, f"max_error[{depth}]", value <= limit, value, limit, f"{result.metric} at depth {depth} is {value:.4g} (limit {limit:g})"))
    for key, limit in (rules.get("min_accuracy") or {}).items():
        if accuracy is None:
            raise ConfigError(f"min_accuracy does not apply to {path}: it is a {result.kind} run")
        depth, value = _at(accuracy, result.depths, key, "min_accuracy", result.deploy_depth)
        cases.append(Case(path, f"min_accuracy[{depth}]", value >= limit, value, limit, f"accuracy at depth {depth} is {value:.4g} (minimum {limit:g})"))
    cases += _trajectory_cases(path, rules, result)
    if "max_final_error_ratio" in rules:
        if reference is None:
            raise ConfigError("max_final_error_ratio needs reference = \"PATH\" in the audit table")
        ratio = error_ratio(result.error_curve[-1], reference.error_curve[-1])
        limit = rules["max_final_error_ratio"]
        cases.append(Case(path, "max_final_error_ratio", ratio <= limit, ratio, limit,
                          f"final {result.metric} {result.curve[-1]:.4g} is {ratio:.3g}x the reference's {reference.curve[-1]:.4g} (limit {limit:g}x)"))
    if "max_deploy_depth" in rules:
        limit = rules["max_deploy_depth"]
        if result.no_descent:
            cases.append(Case(path, "max_deploy_depth", False, "no descent", limit,
                              "no deploy depth: the model never learned (its final depth is no better than a constant predictor)"))
        else:
            cases.append(Case(path, "max_deploy_depth", result.deploy_depth <= limit, result.deploy_depth, limit,
                              f"shallowest depth within {result.within:.0%} of the final error is {result.deploy_depth} (limit {limit})"))
    return cases


def _trajectory_cases(path: str, rules: dict[str, Any], result: MonotonicityResult) -> list[Case]:
    """The trajectory rules; a statistic the input does not hold (a format-1 trace, the first depth's
    alignment) fails its case: a gate never passes what it could not check."""
    cases: list[Case] = []
    if not any(rule in rules for rule in TRAJECTORY_RULES):
        return cases
    t = result.trajectory
    for rule, (name, at_most, what) in TRAJECTORY_RULES.items():
        for key, limit in (rules.get(rule) or {}).items():
            if name != "alignment" and result.kind == "regression":
                raise ConfigError(f"{rule} does not apply to {path}: it is a regression run")
            values = getattr(t, name) if t is not None else None
            depth, value = _at(values or [None] * len(result.depths), result.depths, key, rule, result.deploy_depth)
            label = f"{rule}[{depth}]"
            if value is None:
                measured = values is not None and any(v is not None for v in values)
                why = "no step leads into the first traced depth" if measured else (t.notes[0] if t is not None and t.notes else "not in the trace")
                cases.append(Case(path, label, False, "not measured", limit, f"{what} at depth {depth} cannot be checked: {why}"))
                continue
            ok = value <= limit if at_most else value >= limit
            cases.append(Case(path, label, ok, value, limit, f"{what} at depth {depth} is {value:.4g} ({'limit' if at_most else 'minimum'} {limit:g})"))
    return cases


def junit_xml(cases: list[Case], error: str | None = None) -> str:
    """JUnit XML: one testsuite, one testcase per rule x input; ``error`` (a config that could not be
    read, an input that could not be evaluated): one errored testcase, so a CI upload step still finds
    the file and shows why. Every string is made inert (control characters are not XML 1.0)."""
    import xml.etree.ElementTree as ET

    failures = sum(not c.passed for c in cases)
    errors = int(error is not None)
    suites = ET.Element("testsuites", name="lpa audit", tests=str(len(cases) + errors), failures=str(failures), errors=str(errors))
    suite = ET.SubElement(suites, "testsuite", name="lpa audit", tests=str(len(cases) + errors), failures=str(failures),
                          errors=str(errors), skipped="0")
    for c in cases:
        case = ET.SubElement(suite, "testcase", classname=inert(c.input), name=inert(c.rule), time="0")
        if not c.passed:
            failure = ET.SubElement(case, "failure", message=inert(c.message), type="AuditFailure")
            failure.text = inert(c.message)
        else:
            out = ET.SubElement(case, "system-out")
            out.text = inert(c.message)
    if error is not None:
        case = ET.SubElement(suite, "testcase", classname="lpa audit", name="configuration and inputs", time="0")
        failure = ET.SubElement(case, "error", message=inert(error), type="AuditError")
        failure.text = inert(error)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def to_dict(cases: list[Case]) -> dict[str, Any]:
    return {"passed": all(c.passed for c in cases), "failures": sum(not c.passed for c in cases), "cases": [asdict(c) for c in cases]}
