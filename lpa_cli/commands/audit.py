"""`lpa audit`: check trained checkpoints (or traces) against rules, for CI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from analyzers.atomic import write_text
from analyzers.audit import Case, check, junit_xml, load_config, to_dict
from analyzers.monotonicity import from_trace
from analyzers.trace_io import open_trace
from lpa_cli.commands.options import ExitZero, Json, Quiet, Verify
from lpa_cli.inputs import as_trace
from lpa_cli.render import consoles, fmt, print_json


def _evaluate(path: Path, rules: dict, verify: bool):
    with as_trace(path, verify=verify) as trace_path, open_trace(trace_path) as t:
        result = from_trace(t, metric=rules.get("metric"), tolerance=rules.get("tolerance", 0.01), alpha=rules.get("alpha", 0.05),
                            within=rules.get("within", 0.05), bootstrap=rules.get("bootstrap", 1000), seed=rules.get("seed", 0))
        accuracy = t.errors("correct").mean(axis=0, dtype=np.float64).tolist() if t.kind != "regression" else None
    result.source = str(path)
    return result, accuracy


def _short(c: Case) -> str:
    """value vs limit for the table (the full message is in --json and --junit)."""
    if isinstance(c.value, str):
        return c.value
    return f"{fmt(float(c.value))} (limit {c.limit:g})"


def audit(inputs: list[Path], config: Path | None = None, verify: bool = True) -> list[Case]:
    """Every rule on every input (the Python API behind the command)."""
    cfg = load_config(config)
    references: dict[str, object] = {}
    cases: list[Case] = []
    for path in inputs:
        rules = cfg.for_input(str(path))
        result, accuracy = _evaluate(path, rules, verify)
        reference = None
        if "max_final_error_ratio" in rules and rules.get("reference"):
            ref = rules["reference"]
            if ref not in references:
                references[ref] = _evaluate(Path(ref), rules, verify)[0]
            reference = references[ref]
        cases.extend(check(str(path), rules, result, accuracy, reference))
    return cases


def audit_command(
    inputs: Annotated[list[Path], typer.Argument(help="Checkpoints (.safetensors) or traces (.h5) to check.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file with a \\[tool.lpa.audit] table (default: ./pyproject.toml).")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Also write JUnit XML here (one test case per rule x input).")] = None,
    verify: Verify = True,
    exit_zero: ExitZero = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Check trained models against rules (monotone, max error, min accuracy, final error vs a
    reference, deploy depth). Exit 0 all pass, 1 a rule fails, 2 bad config or input."""
    cases = audit(inputs, config, verify)
    if junit:
        write_text(junit, junit_xml(cases), force=True)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for c in cases:
            if not c.passed:  # a workflow annotation on the file that failed
                msg = c.message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
                print(f"::error file={c.input},title=lpa audit {c.rule}::{msg}", flush=True)
    if json_:
        print_json(to_dict(cases))
    else:
        out, _ = consoles(quiet)
        table = Table(title="lpa audit", title_justify="left")
        table.add_column("rule", no_wrap=True)
        names = list(dict.fromkeys(c.input for c in cases))
        for name in names:
            table.add_column(name, overflow="fold")
        for rule in dict.fromkeys(c.rule for c in cases):
            row = [rule]
            for name in names:
                c = next((c for c in cases if c.input == name and c.rule == rule), None)
                row.append("" if c is None else ("[green]pass[/green] " if c.passed else "[red]FAIL[/red] ") + _short(c))
            table.add_row(*row)
        out.print(table)
        failed = sum(not c.passed for c in cases)
        out.print(f"{len(cases) - failed} passed, {failed} failed")
    if not exit_zero and not all(c.passed for c in cases):
        raise typer.Exit(1)
