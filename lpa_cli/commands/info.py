"""`lpa info`: what a checkpoint is, from its own metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from analyzers.trace import is_trace
from lpa_cli.commands.options import Json, Verify
from lpa_cli.commands.render import consoles, depth_table, distinct_names, esc, fmt, print_json


def _settings_table(d: dict) -> Table:
    table = Table(title=esc(d["path"]), title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    task = d["task"]
    model_opts = ", ".join(f"{k}={v}" for k, v in sorted(d["model"]["options"].items())) or "defaults"
    obj = d["objective"]
    objective = obj["name"]
    if obj["name"] != "e2e":
        objective += f" (weights={obj['weights']}" + (f", lambda={obj['lpa_lambda']}" if obj["lpa_lambda"] is not None else "")
        objective += f", depths={obj['depths']!r}" + (f", sample_depths={obj['sample_depths']}" if obj["sample_depths"] else "") \
            + (f", depth_schedule={obj['depth_schedule']}" if obj.get("depth_schedule", "all") != "all" else "")
        for key in ("sample_fraction", "loss_power"):
            objective += f", {key}={obj[key]:g}" if obj.get(key, 1.0) != 1.0 else ""
        objective += ")"
    t = d["train"]
    rows = [
        ("architecture", f"{d['architecture']}  ({model_opts}, zero_init={d['model']['zero_init']})"
                         + (f", factory {d['model']['factory']} (not imported)" if d["model"].get("factory") else "")
                         + (f", started from {d['model']['init']}" if d["model"].get("init") else "")),
        ("blocks / depths", f"{d['depth']} blocks, depths 0..{d['depth']}"),
        ("width", str(d["width"])),
        ("head applies", d["head_applies"] or "-"),
        ("parameters", f"{d['parameters']:,}"),
        ("task", f"{task.get('name')} [{task['kind']}]  {task.get('description', '')}"),
        ("data", f"in_shape={tuple(task['in_shape'])} out_dim={task['out_dim']} train={task.get('n_train')} test={task.get('n_test')}"),
        ("objective", objective),
        ("training", _training(t, d["training"])),
        ("final loss", fmt(d["training"].get("final_loss"))),
        ("lpa version", str(d["lpa_version"])),
        ("sha256 (tensors)", d["sha256_content"]),
        ("sha256 (file)", d["sha256_file"]),
    ]
    if d["parent"]:
        p = d["parent"]
        rows.append(("exported from", f"{p.get('path')} (depth {p.get('depth')} of {p.get('depths_of_parent')}, sha256 {str(p.get('sha256'))[:16]}…)"))
    if d["verified"]:
        rows.append(("verified", "tensors and metadata match their hashes" if d.get("metadata_verified")
                     else "tensors match their hash; the metadata is not covered (checkpoint format 1)"))
    for key, value in rows:
        table.add_row(key, esc(value))
    return table


def _side_by_side(descs: list[dict]) -> Table:
    """Per-depth main metric of several checkpoints in adjacent columns."""
    table = Table(title="side by side", title_justify="left")
    table.add_column("depth", justify="right")
    series = []
    for d, name in zip(descs, distinct_names([d["path"] for d in descs])):
        preferred = {"regression": "r2", "classification": "acc", "lm": "ppl"}.get(d["task"]["kind"])
        for metric in (preferred, "mse", "ce"):
            if metric in d["metrics"]:
                table.add_column(f"{esc(name)}\n{metric}", justify="right")
                series.append((metric, d["metrics"][metric]))
                break
    n = max((len(v) for _, v in series), default=0)
    for k in range(n):
        table.add_row(str(k), *[fmt(v[k], m) if k < len(v) else "" for m, v in series])
    return table


def _training(t: dict, training: dict) -> str:
    """The run's settings; for a model saved from the user's own loop, only those it recorded."""
    shown = {"steps": f"steps={t['steps']}", "batch_size": f"batch={t['batch_size']}", "lr": f"lr={t['lr']}",
             "optimizer": f"{t['optimizer']}/{t['schedule']}", "seed": f"seed={t['seed']}", "threads": f"threads={t['threads']}"}
    if "recorded" in training:
        given = [v for k, v in shown.items() if k in training["recorded"]]
        return f"{training.get('trained_by', 'outside lpa')}: " + (" ".join(given) if given else "settings not recorded")
    return " ".join(shown.values())


def _trace_table(d: dict) -> Table:
    table = Table(title=esc(d["path"]), title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("trace of", f"{d['checkpoint_path']} ({d['source']}, sha256 {str(d['checkpoint_sha256'])[:16]}…)"),
        ("task kind", f"{d['kind']}, objective {d['objective']}, split {d['split']}"),
        ("samples", f"{d['n_samples']:,}"),
        ("depths", ", ".join(map(str, d["depths"]))),
        ("head applies", str(d["head_applies"] or "-")),
        ("datasets", ", ".join(f"{k} {tuple(v[0])} {v[1]}" for k, v in sorted(d["datasets"].items()))),
        ("format", f"lpa-trace v{d['format_version']} (lpa {d['lpa_version']}, {d['created']}, compression {d['compression']})"),
    ]
    for key, value in rows:
        table.add_row(key, esc(value))
    return table


def info_command(
    files: Annotated[list[Path], typer.Argument(help="lpa checkpoints (.safetensors) and/or traces (.h5).")],
    verify: Verify = True,
    json_: Json = False,
) -> None:
    """Show what a checkpoint (or trace) is: architecture, task, objective, training, per-depth metrics, hashes.

    A checkpoint's config is checked against its tensors (from the file's header), and its content
    hash is re-computed unless --no-verify.
    """
    from lpa_cli.workflows.inspect import describe, describe_trace

    traces = [describe_trace(p) for p in files if is_trace(p)]
    descs = [describe(p, verify=verify) for p in files if not is_trace(p)]
    if json_:
        everything = descs + traces
        print_json(everything if len(everything) > 1 else everything[0])
        return
    out, _ = consoles()
    for d in traces:
        out.print(_trace_table(d))
        out.print(depth_table(d["metrics"], title="per-depth metrics from the trace", depths=d["depths"]))
    for d in descs:
        out.print(_settings_table(d))
        if d["metrics"]:
            out.print(depth_table(d["metrics"], title="per-depth test metrics recorded at save time"))
    if len(descs) > 1:
        out.print(_side_by_side(descs))
