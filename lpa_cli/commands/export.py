"""`lpa export`: cut a trained model after depth k into a smaller model: an lpa checkpoint, or a
Hugging Face directory for models that started from one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpa_cli.commands.options import EvalData, Factory, Force, Json, Quiet, TrustFactory, Verify
from lpa_cli.commands.render import consoles, depth_table, esc, print_json


def export_command(
    checkpoint: Annotated[Path, typer.Argument(help="An lpa checkpoint (.safetensors).")],
    at: Annotated[int, typer.Option("--at", help="Cut after this depth: keep the first AT blocks (and the shared head).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The smaller checkpoint (.safetensors), or a directory with --format hf.")],
    format_: Annotated[str, typer.Option("--format", help="lpa (a checkpoint) or hf (a Hugging Face model directory).")] = "lpa",
    assistant_exit: Annotated[bool, typer.Option("--assistant-exit/--no-assistant-exit", help="hf, a language model at full depth: "
                                                 "measure the best draft depth for self-speculative decoding and write it as "
                                                 "assistant_early_exit into generation_config.json.")] = True,
    verify: Verify = True,
    data: EvalData = None,
    factory: Factory = None,
    trust_factory: TrustFactory = False,
    force: Force = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Export the prefix of depth k: its predictions equal the original's depth-k predictions."""
    from lpa_cli.serving.export import export_prefix

    result = export_prefix(checkpoint, at, output, force=force, verify=verify, format=format_, factory=factory or "", trust_factory=trust_factory, data=data,
                           assistant_exit=assistant_exit)
    if json_:
        print_json(result)
        return
    out, _ = consoles(quiet)
    if result["metrics"]:
        out.print(depth_table(result["metrics"], title=f"{output}: depths 0..{at} (metrics recorded at training time)"))
    out.print(f"wrote [bold]{esc(output)}[/bold] ({format_}): {result['parameters']:,} of {result['parameters_of_parent']:,} parameters, cut at depth {at}")
    if "assistant_early_exit" in result and result["assistant_early_exit"]["assistant_early_exit"] is None:
        best = max(result["assistant_early_exit"]["expected_speedup"].values())
        out.print(f"no assistant_early_exit written: no draft depth is expected to beat plain decoding (best {best:.2f}x)")
    elif "assistant_early_exit" in result:
        r = result["assistant_early_exit"]
        k = r["assistant_early_exit"]
        out.print(f"assistant_early_exit = {k} in generation_config.json: drafting with {k} of {at} blocks, {r['acceptance_rate'][k]:.0%} of "
                  f"drafted tokens kept, expected {r['expected_speedup'][k]:.2f}x (transformers: model.generate(..., assistant_early_exit={k}))")
