"""Options shared by several commands, declared once with the same names everywhere.

Command modules import only typer, rich and torch-free parts of lpa at import time; the library
call each command makes is imported inside it, so `lpa --help`, `lpa --version` and the commands that
read traces never load torch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from lpa_cli.config import ObjectiveConfig, TrainConfig

_TYPES = {"int": int, "float": float, "float | None": float, "str": str, "bool": bool, "list[str]": list[str]}


def config_option(f) -> Any:
    """The typer option of a config field declared with `lpa_cli.config.flag` (None: not given)."""
    m = f.metadata
    return Annotated[Optional[_TYPES[f.type]], typer.Option(*m["flag"], help=m["help"], envvar=m["envvar"])]


def _option(cls: type, name: str) -> Any:
    return config_option(next(f for f in dataclasses.fields(cls) if f.name == name))


# Settings other commands share with `lpa train`: declared once, beside their config fields.
Seed = _option(TrainConfig, "seed")
Device = _option(TrainConfig, "device")
Precision = _option(TrainConfig, "precision")
Depths = _option(ObjectiveConfig, "depths")

# Data for commands that evaluate a checkpoint: its own task's data unless given (needed where it records none)
EvalData = Annotated[Optional[str], typer.Option("--data", help="Evaluate on this data instead of the checkpoint's own (needed when it "
                                                 "records none, as LPATrainer's and save_model's may): a task spec or a data file.")]
Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the result.", dir_okay=False)]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of tables.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables (errors still go to stderr).")]
ExitZero = Annotated[bool, typer.Option("--exit-zero", help="Exit 0 even when a check fails.")]
# lpa imports no code a file names: a checkpoint whose model a factory builds needs one of these two.
Factory = Annotated[Optional[str], typer.Option("--model", help="The package.module:function that builds the checkpoint's model, "
                                                "when it names one (it must match; lpa imports no code a file names).")]
TrustFactory = Annotated[bool, typer.Option("--trust-factory", envvar="LPA_TRUST_FACTORY",
                                            help="Import and call the model factory a checkpoint names (only for files you trust).")]
PLOTLYJS_DEFAULT = "none"  # analyzers.report.page.PLOTLYJS[0] (not imported here: it loads plotly); tests/test_reports checks
PlotlyJs = Annotated[str, typer.Option("--plotlyjs", help="none: figures drawn as SVG, no script (tens of KB); embed: interactive "
                                       "plotly, plotly.js inside the report (+4.8 MB); directory: interactive, one shared plotly.min.js "
                                       "beside the reports. All open offline.")]
Verify = Annotated[bool, typer.Option("--verify/--no-verify", help="Check each checkpoint's content hash (sha256 of its tensors) on load.")]
