"""`lpa export`: cut a trained model after depth k into a smaller, normal checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpa_cli.commands.options import Force, Json, Quiet, Verify
from lpa_cli.export import export_prefix
from lpa_cli.render import consoles, depth_table, print_json


def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="An lpa checkpoint (.safetensors).")],
    depth: Annotated[int, typer.Option("--depth", help="Keep the first DEPTH blocks (and the shared head).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the smaller checkpoint.", dir_okay=False)],
    verify: Verify = True,
    force: Force = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Export the prefix of depth k: its predictions equal the original's depth-k predictions."""
    result = export_prefix(checkpoint, depth, output, force=force, verify=verify)
    if json_:
        print_json(result)
        return
    out, _ = consoles(quiet)
    if result["metrics"]:
        out.print(depth_table(result["metrics"], title=f"{output}: depths 0..{depth} (metrics recorded at training time)"))
    out.print(f"wrote [bold]{output}[/bold]: {result['parameters']:,} of {result['parameters_of_parent']:,} parameters, cut at depth {depth}")
