"""`lpa audit`: check trained checkpoints (or traces) against rules, for CI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from lpa_cli.commands.options import EvalData, ExitZero, Factory, Force, Json, Quiet, TrustFactory, Verify
from lpa_cli.commands.render import consoles, esc, fmt, print_json


def _short(c) -> str:
    """value vs limit for the table (the full message is in --json and --junit)."""
    if isinstance(c.value, str):
        return esc(c.value)
    if isinstance(c.value, int) and not isinstance(c.value, bool):  # a depth is a whole number, never "7.0000"
        return f"{c.value} (limit {c.limit})"
    return f"{fmt(float(c.value))} (limit {c.limit:g})"


def annotation_property(text: str) -> str:
    """A GitHub Actions workflow-command property value: %, CR, LF, ':' and ',' escaped."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A").replace(":", "%3A").replace(",", "%2C")


def annotation_message(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def audit_command(
    inputs: Annotated[list[Path], typer.Argument(help="Checkpoints (.safetensors) or traces (.h5) to check.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="TOML file with a \\[tool.lpa.audit] table (default: ./pyproject.toml).")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="Also write JUnit XML here (one test case per rule x input).")] = None,
    verify: Verify = True,
    data: EvalData = None,
    factory: Factory = None,
    trust_factory: TrustFactory = False,
    force: Force = False,
    exit_zero: ExitZero = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Check trained models against rules (monotone, max error, min accuracy, final error vs a
    reference, deploy depth). Exit 0 all pass, 1 a rule fails, 2 bad config or input."""
    from lpa_core.atomic import check_writable, write_text
    from analyzers.audit import junit_xml, to_dict
    from lpa_core.errors import LpaError
    from lpa_cli.workflows.audit import audit

    if junit is not None:
        check_writable(junit, force, inputs=[*inputs, config or Path("pyproject.toml")])
    try:
        cases = audit(inputs, config, verify, factory=factory or "", trust_factory=trust_factory, data=data)
    except LpaError as err:  # exit 2 as ever, and the CI's upload step still finds a report saying why
        if junit:
            write_text(junit, junit_xml([], error=str(err)), force=force)
        raise
    if junit:
        write_text(junit, junit_xml(cases), force=force)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        for c in cases:
            if not c.passed:  # a workflow annotation on the file that failed
                print(f"::error file={annotation_property(c.input)},title={annotation_property(f'lpa audit {c.rule}')}::"
                      f"{annotation_message(c.message)}", flush=True)
    if json_:
        print_json(to_dict(cases))
    else:
        out, _ = consoles(quiet)
        table = Table(title="lpa audit", title_justify="left")
        table.add_column("rule", no_wrap=True)
        names = list(dict.fromkeys(c.input for c in cases))
        for name in names:
            table.add_column(esc(name), overflow="fold")
        for rule in dict.fromkeys(c.rule for c in cases):
            row = [esc(rule)]
            for name in names:
                c = next((c for c in cases if c.input == name and c.rule == rule), None)
                row.append("" if c is None else ("[green]pass[/green] " if c.passed else "[red]FAIL[/red] ") + _short(c))
            table.add_row(*row)
        out.print(table)
        failed = sum(not c.passed for c in cases)
        out.print(f"{len(cases) - failed} passed, {failed} failed")
    if not exit_zero and not all(c.passed for c in cases):
        raise typer.Exit(1)
