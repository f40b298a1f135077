"""`lpa data`: prepare data sets (`lpa data tokenize`: text files into a token file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lpa_cli.commands.boundary import guarded
from lpa_cli.commands.options import Force, Json, Quiet
from lpa_cli.commands.render import consoles, esc, print_json, progress_lines

data_app = typer.Typer(help="Prepare data sets: tokenise text into a token file that training reads through a memory map.",
                       no_args_is_help=True)


def tokenize_command(
    texts: Annotated[list[Path], typer.Argument(help="UTF-8 text files, or directories of .txt files.")],
    tokenizer: Annotated[str, typer.Option("--tokenizer", help="bytes, a tokenizer.json, or a Hugging Face model directory.")] = "bytes",
    output: Annotated[Path, typer.Option("--output", "-o", help="The token file (.bin); its sidecar is <output>.json.")] = Path("corpus.bin"),
    force: Force = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Tokenise text files into a flat token file (uint16 or uint32) with a JSON sidecar.

    Train on it with `lpa train --data corpus.bin`: windows are read through numpy.memmap, so the
    file may be far larger than memory.
    """
    from lpa_cli.data.tokens import tokenize_files

    out, err = consoles(quiet or json_)
    result = tokenize_files([str(t) for t in texts], tokenizer, output, force=force, progress=progress_lines(err, "tokenized", "files"))
    if json_:
        print_json(result)
        return
    out.print(f"wrote [bold]{esc(result['output'])}[/bold]: {result['tokens']:,} tokens from {result['documents']} document(s), "
              f"{result['dtype']}, vocabulary {result['vocab_size']:,} ({esc(result['tokenizer'])}); sidecar {esc(result['sidecar'])}")


data_app.command("tokenize")(guarded(tokenize_command))
