"""The `lpa` command line: one Typer app, one error boundary.

Exit codes: 0 success, 1 a check failed, 2 bad usage or input (one line on stderr, no traceback),
3 an internal error (a bug in lpa; one line too, LPA_DEBUG=1 shows the traceback), 130 interrupted.
Command modules are torch-free at import time (their library calls import torch when they run), so
`lpa --help`, `lpa --version` and the commands that only read traces never load it.
"""

from __future__ import annotations

import logging
import sys

import typer

from lpa_cli import __version__
from lpa_cli.commands.boundary import guarded
from lpa_core.text import inert

app = typer.Typer(
    name="lpa",
    help="Train and audit approximation trajectories of residual networks (Layer-wise Progressive Approximation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lpa {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log library messages to stderr."),
) -> None:
    """lpa: train once, use N models."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is now, so commands run in-process (tests, notebooks) one after
    another never log into a stream an earlier one closed; every line inert (a path in a message may
    carry terminal escapes)."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(inert(line) for line in super().format(record).split("\n"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


COMMANDS = {  # name -> module:function (each module is torch-free at import time)
    "train": "lpa_cli.commands.train:train_command",
    "info": "lpa_cli.commands.info:info_command",
    "trace": "lpa_cli.commands.trace:trace_command",
    "monotonicity": "lpa_cli.commands.monotonicity:monotonicity_command",
    "probe": "lpa_cli.commands.probe:probe_command",
    "compare": "lpa_cli.commands.compare:compare_command",
    "export": "lpa_cli.commands.export:export_command",
    "audit": "lpa_cli.commands.audit:audit_command",
    "reproduce": "lpa_cli.commands.reproduce:reproduce_command",
    "generate": "lpa_cli.commands.generate:generate_command",
    "predict": "lpa_cli.commands.predict:predict_command",
}


def _register() -> None:
    from importlib import import_module

    for name, target in COMMANDS.items():
        module, _, attr = target.partition(":")
        app.command(name)(guarded(getattr(import_module(module), attr)))
    from lpa_cli.commands.data import data_app

    app.add_typer(data_app, name="data")  # its commands are guarded where they are declared


_register()


def main() -> None:
    from lpa_cli.allocator import tune_allocator

    tune_allocator()
    try:
        code = app(prog_name="lpa", standalone_mode=False)
    except Exception as err:  # noqa: BLE001 - click's usage errors (Typer vendors its own click): one line, as every error
        if type(err).__name__ == "Abort":
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
            raise
        if not err.format_message().strip():  # `lpa` alone: the help was the answer
            sys.exit(err.exit_code)
        ctx = getattr(err, "ctx", None)
        where = f" (see lpa {ctx.command_path.removeprefix('lpa').strip()} --help)".replace("lpa  --help", "lpa --help") if ctx else ""
        print(f"error: {' '.join(err.format_message().split())}{where}", file=sys.stderr)
        sys.exit(err.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
