"""The command line's one error boundary (exit codes in `lpa_cli.app`): every command, in the main app
or a sub-app such as `lpa data`, is wrapped in `guarded`."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import typer
from typer.exceptions import TyperException

from lpa_core.errors import LpaError
from lpa_core.text import inert

INTERNAL_ERROR = 3


def _one_line(text: str) -> str:
    """One line, with what a file name or metadata may carry (ESC sequences, bidi overrides) inert."""
    return inert(" ".join(text.split()))


def guarded(fn: Callable) -> Callable:
    """Turn an `LpaError` into ``error: <message>`` on stderr and its exit code (2); Ctrl-C into 130;
    any other exception (a bug) into one line and exit code 3."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LpaError as err:
            typer.echo(f"error: {_one_line(str(err))}", err=True)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, TyperException):
            raise
        except Exception as err:  # a bug in lpa, not the user's input: say so in one line
            if os.environ.get("LPA_DEBUG"):
                raise
            typer.echo(f"error: internal error ({type(err).__name__}: {_one_line(str(err))[:300]}); this is a bug in lpa, "
                       "please report it (LPA_DEBUG=1 shows the traceback)", err=True)
            raise typer.Exit(INTERNAL_ERROR) from None

    return wrapper
