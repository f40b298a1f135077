"""`lpa predict`: classify or regress with real early exit, measured against the full model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lpa_cli.commands.options import Device, Factory, Force, Json, Output, Quiet, TrustFactory, Verify
from lpa_cli.commands.render import consoles, esc, print_json


def predict_command(
    checkpoint: Annotated[Path, typer.Argument(help="An lpa checkpoint of a classifier or regressor.")],
    exit_: Annotated[str, typer.Option("--exit", help="confidence:P, entropy:H, patience:K (classifiers) or depth:k.")],
    data: Annotated[Optional[str], typer.Option("--data", help="Other data than the checkpoint's own task: a task spec or a data file.")] = None,
    split: Annotated[str, typer.Option("--split", help="train or test split of the data.")] = "test",
    output: Output = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per batch.")] = 256,
    limit: Annotated[int, typer.Option("--limit", help="Only the first N samples (0: all).")] = 0,
    baseline: Annotated[bool, typer.Option("--baseline/--no-baseline", help="Also time every sample through all depths.")] = True,
    device: Device = None,
    verify: Verify = True,
    factory: Factory = None,
    trust_factory: TrustFactory = False,
    force: Force = False,
    json_: Json = False,
    quiet: Quiet = False,
) -> None:
    """Each sample leaves the batch at the first depth whose exit rule fires; writes one CSV row per
    sample (-o) and reports accuracy (or MSE), average exit depth and measured speed-up."""
    from lpa_cli.serving.predict import predict_checkpoint

    r = predict_checkpoint(checkpoint, exit_, data=data, split=split, output=output, baseline=baseline, batch_size=batch_size,
                           limit=limit, verify=verify, force=force, device=device or "cpu",
                           factory=factory or "", trust_factory=trust_factory)
    if json_:
        print_json(r)
        return
    out, _ = consoles(quiet)
    quality = f"accuracy {r.accuracy:.4f}" if r.accuracy is not None else f"MSE {r.mse:.4g}"
    full = ""
    if r.speedup is not None:
        base = f"accuracy {r.full_accuracy:.4f}" if r.full_accuracy is not None else f"MSE {r.full_mse:.4g}"
        full = f"; all depths: {base}, {r.full_samples_per_s:,.0f} samples/s; measured speed-up {r.speedup:.2f}x"
    out.print(f"{r.n} samples, --exit {esc(r.rule)}: {quality}, average exit depth {r.mean_exit_depth:.2f}, "
              f"{r.samples_per_s:,.0f} samples/s ({r.ms_per_sample:.3f} ms/sample){full}")
    out.print("samples leaving at each depth: " + ", ".join(f"{k}: {c}" for k, c in enumerate(r.exit_histogram)))
    if r.output:
        out.print(f"wrote [bold]{esc(r.output)}[/bold]")
