"""Options shared by several commands, declared once with the same names everywhere.

Command modules import only typer, rich and torch-free parts of lpa at import time; the library
call each command makes is imported inside it, so `lpa --help`, `lpa --version` and the commands that
read traces never load torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Output = Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the result.", dir_okay=False)]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout instead of tables.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or tables (errors still go to stderr).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed (everything that samples is seeded).", envvar="LPA_SEED")]
Depths = Annotated[
    Optional[str],
    typer.Option("--depths", help='Depths to use, as a numpy-slice string over depths 0..N: ":", "1:8:2", "2,4,8".'),
]
Device = Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda[:i].", envvar="LPA_DEVICE")]
ExitZero = Annotated[bool, typer.Option("--exit-zero", help="Exit 0 even when a check fails.")]
# lpa imports no code a file names: a checkpoint whose model a factory builds needs one of these two.
Factory = Annotated[Optional[str], typer.Option("--model", help="The package.module:function that builds the checkpoint's model, "
                                                "when it names one (it must match; lpa imports no code a file names).")]
TrustFactory = Annotated[bool, typer.Option("--trust-factory", envvar="LPA_TRUST_FACTORY",
                                            help="Import and call the model factory a checkpoint names (only for files you trust).")]
PlotlyJs = Annotated[str, typer.Option("--plotlyjs", help="embed: plotly.js inside the report (one file); directory: one shared "
                                       "plotly.min.js beside the reports (smaller reports; both open offline).")]
Verify = Annotated[bool, typer.Option("--verify/--no-verify", help="Check each checkpoint's content hash (sha256 of its tensors) on load.")]
