"""Tracing: run a residual model over a data set and stream per-depth results into an HDF5 trace.

The format itself lives in `analyzers.trace` (the contract); this module only computes arrays.
Large batches are written by a thread that overlaps with the next forward pass when a core is free
(see `lpa_cli.serving.trace_threads`); otherwise each batch is written as soon as it is computed.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lpa_core.atomic import check_writable, output_lock
from lpa_core.depths import parse_depths
from lpa_core.errors import UsageError
from analyzers.metrics import summarize
from analyzers.trace import TraceSpec, TraceWriter
from analyzers.trace.spec import TRAJECTORY
from lpa_cli import __version__
from lpa_cli.data.batch import Batch
from lpa_cli.config import TaskConfig
from lpa_cli.training.task_losses import ERROR_NAMES, per_sample_errors
from lpa_cli.models.protocol import ResidualModel, export_head
from lpa_cli.data.splits import Split, TensorSplit
from lpa_cli.serving import trace_threads
from lpa_cli.serving.trajectory import DepthReader, regression_alignment, regression_alignments
from analyzers.trace import open_trace
from lpa_cli.models.open import load_checkpoint
from lpa_cli.runtime import resolve_device
from lpa_cli.data.tasks import data_spec, load_task, spec_files

MAX_PREDICTION_BYTES = 4 << 30
DEFAULT_BATCH = {"regression": 4096, "classification": 512, "lm": 64}


@dataclass
class TraceResult:
    path: Path
    n: int
    depths: list[int]
    kind: str
    metrics: dict[str, list[float]]
    seconds: float
    samples_per_s: float
    bytes: int
    resumed_from: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "n_samples": self.n, "depths": self.depths, "kind": self.kind,
            "metrics": self.metrics, "seconds": round(self.seconds, 3), "samples_per_s": round(self.samples_per_s, 1),
            "bytes": self.bytes, "resumed_from": self.resumed_from,
        }


VECTORISE_BYTES = 16 << 20  # per-depth errors in one call when all depths' predictions fit in this


@torch.no_grad()
def _batch_arrays(model: ResidualModel, batch: Batch, kind: str, depths: list[int], keep_preds: bool, keep_states: bool, dtype: np.dtype) -> dict[str, np.ndarray]:
    """Everything one batch contributes to the trace, keyed by dataset name.

    The blocks run once, up to the final depth (the KL's reference; regression stops at the deepest
    traced depth). Small heads are read as the states go by (a state kept longer is memory the
    allocator cannot reuse: 16% of a small MLP's trace) and get the errors and measures of all depths
    in one vectorised call (D small calls cost more than the arithmetic); big ones (LM
    vocabularies) depth by depth in slices of rows (`SLICE_BYTES` per vocabulary-sized tensor), so the
    head's outputs alive at a time stay a few slices' worth whatever the batch size, and without
    --predictions none outlives its measures; their states are kept for that (the residual stream's width).
    """
    wanted = set(depths)
    x, y, mask = batch.x, batch.y, batch.mask
    upto = max(depths) if kind == "regression" else model.num_blocks
    held: dict[int, Tensor] = {}  # states kept: for --states, and for the sliced path (big heads)
    preds: dict[int, Tensor] = {}  # head outputs, on the vectorised path (states are let go as it goes)
    vectorise = None
    for k, h in enumerate(model.states(x, upto=upto, attention_mask=mask)):
        if k not in wanted and k != upto:
            continue
        if vectorise is None:
            p = model.read(h, mask)
            vectorise = p.numel() * p.element_size() * len(depths) <= VECTORISE_BYTES
            if vectorise:
                preds[k] = p
            del p
        elif vectorise:
            preds[k] = model.read(h, mask)
        if not vectorise or (keep_states and k in wanted):
            held[k] = h
    if vectorise:
        stacked = torch.stack([preds[k] for k in depths], dim=1)  # (B, D, *pred_shape)
        columns = _vectorised(stacked, y, preds.get(upto) if kind != "regression" else None, kind)
    else:
        stacked, columns = _sliced(model, held, mask, y, kind, depths, upto, keep_preds)
    out: dict[str, np.ndarray] = {"targets": y.cpu().numpy()}
    if keep_preds:
        out["predictions"] = stacked.float().cpu().numpy().astype(dtype, copy=False)
    if keep_states:
        out["states"] = torch.stack([held[k] for k in depths], dim=1).float().cpu().numpy().astype(dtype, copy=False)
    for name, values in columns.items():
        group = "confidence" if name in ("max_prob", "entropy") else "trajectory" if name in TRAJECTORY[kind] else "errors"
        out[f"{group}/{name}"] = values.cpu().numpy()
    return out


# Rows per slice: one vocabulary-sized float32 tensor of at most this (a few are alive at a time). On a CPU
# small slices stay in cache and reuse freed memory (at 64 MB the same work took 1.3-2x as long, measured
# at vocabulary 8,192); on a GPU each op on 16 MB is a few microseconds, the size of a kernel launch, so
# slices there are larger.
SLICE_BYTES = {"cpu": 16 << 20, "other": 256 << 20}


def _sliced(model: ResidualModel, held: dict[int, Tensor], mask: Tensor | None, y: Tensor, kind: str, depths: list[int], upto: int,
            keep_preds: bool) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Errors and measures depth by depth for slices of the batch's rows (classification, LMs)."""
    h = held[depths[0]]
    per_row = model.read(h[:1], None if mask is None else mask[:1]).numel() * 4  # one row's head output in float32
    step = max(1, SLICE_BYTES["cpu" if h.device.type == "cpu" else "other"] // per_row)
    parts: list[dict[str, Tensor]] = []
    preds: list[Tensor] = []
    for r in range(0, y.shape[0], step):
        rows = slice(r, r + step)
        m = None if mask is None else mask[rows]
        final = model.read(held[upto][rows], m)
        reader = DepthReader(final, y[rows], kind) if kind != "regression" else None
        cols, kept = [], []
        for k in depths:
            p = final if k == upto else model.read(held[k][rows], m)
            if reader is not None:
                cols.append(reader(p))
            else:
                cols.append(per_sample_errors(p, y[rows], kind, extras=True) | _regression_measures(p, kept[-1] if kept else None, y[rows]))
            if keep_preds or reader is None:
                kept.append(p)
        parts.append({name: torch.stack([c[name] for c in cols], dim=1) for name in cols[0]})
        if keep_preds:
            preds.append(torch.stack(kept, dim=1))
    columns = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    return (torch.cat(preds) if keep_preds else None), columns


def _regression_measures(pred: Tensor, prev: Tensor | None, target: Tensor) -> dict[str, Tensor]:
    return {"alignment": regression_alignment(pred, prev, target)}


def _regression_measures_stacked(stacked: Tensor, target: Tensor) -> dict[str, Tensor]:
    return {"alignment": regression_alignments(stacked, target)}


def _vectorised(stacked: Tensor, y: Tensor, final: Tensor | None, kind: str) -> dict[str, Tensor]:
    """Errors and measures of every depth in one call on (B, D, ...) predictions (``final``: the last depth's)."""
    B, D = stacked.shape[:2]
    rows = stacked.flatten(0, 1)
    targets = y.repeat_interleave(D, dim=0)
    if kind == "regression":
        out = {name: v.reshape(B, D) for name, v in per_sample_errors(rows, targets, kind, extras=True).items()}
        return out | _regression_measures_stacked(stacked, y)
    prev = torch.cat([stacked[:, :1], stacked[:, :-1]], dim=1).flatten(0, 1)  # the first depth's step is masked below
    values = DepthReader(final.repeat_interleave(D, dim=0), targets, kind)(rows, prev_logits=prev)
    out = {name: v.reshape(B, D, *v.shape[1:]) for name, v in values.items()}
    for name in ("alignment", "alignment_token"):
        if name in out:
            out[name][:, 0] = float("nan")  # no step into the first traced depth
    return out


def trace_split(
    model: ResidualModel,
    split: Split,
    kind: str,
    output: str | Path,
    *,
    depths: str | Sequence[int] | None = ":",
    states: bool = False,
    predictions: bool = True,
    dtype: str = "float32",
    compression: str = "none",
    batch_size: int = 0,
    limit: int = 0,
    resume: bool = False,
    force: bool = False,
    attrs: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TraceResult:
    """Trace ``model`` on the rows of ``split`` in order (``kind``: regression, classification, lm),
    streaming: memory does not grow with the number of samples."""
    if kind not in ERROR_NAMES:
        raise UsageError(f"unknown task kind {kind!r}")
    if dtype not in ("float32", "float16"):
        raise UsageError(f"--dtype must be float32 or float16, got {dtype!r}")
    if limit < 0 or batch_size < 0:
        raise UsageError("--limit and --batch-size must be >= 0")
    chosen = parse_depths(depths, model.num_depths) if isinstance(depths, (str, type(None))) else sorted(set(depths))
    if any(not 0 <= d < model.num_depths for d in chosen):
        raise UsageError(f"depths {chosen} outside 0..{model.num_blocks}")
    n = len(split) if not limit else min(limit, len(split))
    if n == 0:
        raise UsageError("nothing to trace: the data has no samples")
    model.eval()
    if states:
        split = split.padded()  # per-token states: one width for every batch
    spec = _spec(model, split, kind, n, chosen, states, predictions, dtype, compression, attrs)
    with output_lock(output):  # a second trace to the same output stops at once (and never removes this one's partial file)
        writer = TraceWriter(output, spec, force=force, resume=resume)
        start_at = writer.start
        totals = _Totals(kind, len(chosen))
        if kind == "regression":  # the targets' variance (R^2), including the rows a resumed trace already has
            for start in range(0, start_at, 1 << 16):
                totals.add_targets(writer.read("targets", slice(start, min(start_at, start + (1 << 16)))))
        began = time.perf_counter()
        _stream(model, split, writer, spec, totals, batch_size or DEFAULT_BATCH[kind], progress)
        final_attrs = {"target_var": totals.target_var(n)} if kind == "regression" else {}
        path = writer.finish(final_attrs)
        seconds = time.perf_counter() - began
        metrics = _metrics_from_trace(path) if start_at else summarize(
            {name: (totals.sums[name] / n)[None, :] for name in totals.sums}, kind, final_attrs.get("target_var")
        )
    return TraceResult(path, n, chosen, kind, metrics, seconds, (n - start_at) / max(seconds, 1e-9), path.stat().st_size, start_at)


class _Totals:
    """Running sums for the summary: per-depth error sums, and (regression) the targets' moments."""

    def __init__(self, kind: str, depths: int) -> None:
        self.sums = {name: np.zeros(depths, dtype=np.float64) for name in ERROR_NAMES[kind]}
        self.y_sum = self.y_sq = 0.0

    def add_targets(self, targets: np.ndarray) -> None:
        t = targets.astype(np.float64).reshape(len(targets), -1)
        self.y_sum, self.y_sq = self.y_sum + t.sum(axis=0), self.y_sq + (t * t).sum(axis=0)

    def target_var(self, n: int) -> float:
        mean = self.y_sum / n
        return float(np.maximum(self.y_sq / n - mean * mean, 0).mean())


def _spec(model: ResidualModel, split: Split, kind: str, n: int, chosen: list[int], states: bool, predictions: bool, dtype: str,
          compression: str, attrs: dict[str, Any] | None) -> TraceSpec:
    """The trace's layout, from the first row's shapes; refused when predictions would not fit."""
    device = next(model.parameters()).device
    first = split.rows(0, 1)
    with torch.no_grad():
        mask = None if first.mask is None else first.mask.to(device)
        h0 = model.embed(first.x.to(device))
        pred_shape = tuple(model.read(h0, mask).shape[1:])
        state_shape = tuple(h0.shape[1:])
        if states:
            shapes = {tuple(h.shape[1:]) for k, h in enumerate(model.states(first.x.to(device), upto=max(chosen), attention_mask=mask))
                      if k in chosen}
            if len(shapes) > 1:
                raise UsageError(f"--states: this model's depths have states of different shapes ({', '.join(map(str, sorted(shapes)))}), "
                                 "which one dataset cannot hold; trace without --states (or choose depths of one stage with --depths)")
    pred_bytes = n * len(chosen) * int(np.prod(pred_shape)) * np.dtype(dtype).itemsize
    if predictions and pred_bytes > MAX_PREDICTION_BYTES:
        raise UsageError(f"per-depth predictions would take {pred_bytes / 2**30:.1f} GiB; use --no-predictions (errors and confidences are kept) or --limit")
    meta = {
        "lpa_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "head_applies": getattr(model, "head_applies", ""),
        "n_blocks": model.num_blocks,
        "dtype": dtype,
        "has_predictions": bool(predictions),
        "has_states": bool(states),
    } | (attrs or {})
    return TraceSpec(
        n=n, depths=chosen, kind=kind, target_shape=tuple(first.y.shape[1:]), target_dtype=str(first.y.numpy().dtype),
        pred_shape=pred_shape if predictions else None, state_shape=state_shape if states else None,
        error_names=ERROR_NAMES[kind], token_len=int(first.y.shape[1]) if kind == "lm" else 0, confidence=kind != "regression",
        trajectory=True, dtype=dtype, compression=compression, attrs=meta,
    )


def _stream(model: ResidualModel, split: Split, writer: TraceWriter, spec: TraceSpec, totals: _Totals, batch_size: int,
            progress: Callable[[int, int], None] | None) -> None:
    """Write the rows from ``writer.start`` on, batch by batch (large batches from a background thread)."""
    device = next(model.parameters()).device
    n, kind, np_dtype = spec.n, spec.kind, np.dtype(spec.dtype)
    thread: trace_threads.SyncWriter | trace_threads.ThreadWriter | None = None
    ok = False
    try:
        exported = export_head(model.head)
        if exported is not None and not writer.has_head():
            head_spec, head_params = exported
            writer.write_head(head_spec, {k: v.float().cpu().numpy() for k, v in head_params.items()})
        per_sample = sum(math.prod(shape[1:]) * np.dtype(dt).itemsize for shape, dt in spec.datasets().values())
        thread = trace_threads.writer_for(writer, per_sample * min(batch_size, n))
        for start in range(writer.start, n, batch_size):
            stop = min(n, start + batch_size)
            arrays = _batch_arrays(model, split.rows(start, stop).to(device), kind, spec.depths, spec.pred_shape is not None,
                                   spec.state_shape is not None, np_dtype)
            for name in totals.sums:
                totals.sums[name] += arrays[f"errors/{name}"].sum(axis=0, dtype=np.float64)
            if kind == "regression":
                totals.add_targets(arrays["targets"])
            thread.put(arrays)
            if progress:
                progress(stop, n)
        thread.close()
        ok = True
    finally:
        if not ok:
            if thread is not None:
                thread.abort()
            writer.close()


def trace_model(model: ResidualModel, x: Tensor, y: Tensor, kind: str, output: str | Path, *, attention_mask: Tensor | None = None,
                **kwargs: Any) -> TraceResult:
    """Trace ``model`` on inputs ``x`` and targets ``y`` held in memory (``attention_mask``: (n, T),
    1 at real tokens, for padded token batches; it reaches every block and the head)."""
    return trace_split(model, TensorSplit(x, y, attention_mask), kind, output, **kwargs)


def _metrics_from_trace(path: Path) -> dict[str, list[float]]:
    """Summary metrics read back from a trace (after a resume, earlier samples are only on disk)."""
    with open_trace(path) as t:
        errors = {name: t.errors(name) for name in t.error_names}
        return summarize(errors, t.kind, t.attrs.get("target_var"))


def trace_modules(embed: nn.Module, blocks: Sequence[nn.Module], head: nn.Module, x: Tensor, y: Tensor, kind: str, output: str | Path,
                  **kwargs: Any) -> TraceResult:
    """Trace any model given as an embedding, a list of residual blocks and a head.

    For padded token batches pass ``attention_mask=`` ((n, T), 1 at real tokens): every block and
    the head are then called with it as the keyword ``attention_mask``."""
    return trace_model(ResidualModel(embed, blocks, head), x, y, kind, output, **kwargs)


def data_identity(task_cfg: TaskConfig, split: str, task_meta: dict[str, Any]) -> str:
    """What distinguishes the data traced (a resumed trace must continue on the same data)."""
    return json.dumps({"task": task_cfg.name, "options": task_cfg.options, "data_seed": task_cfg.data_seed, "n_test": task_cfg.n_test,
                       "n_train": task_cfg.n_train, "split": split, "source_size": task_meta.get("size")}, sort_keys=True, default=str)


def trace_checkpoint(
    checkpoint: str | Path,
    output: str | Path | None = None,
    *,
    split: str = "test",
    data: str | None = None,
    verify: bool = True,
    device: str = "cpu",
    factory: str = "",
    trust_factory: bool = False,
    **kwargs: Any,
) -> TraceResult:
    """Trace an lpa checkpoint on its own task's split (or on ``data``, a task spec or data file).
    ``factory``/``trust_factory``: as `load_checkpoint`."""
    if split not in ("train", "test"):
        raise UsageError(f"--split must be train or test, got {split!r}")
    ckpt = load_checkpoint(checkpoint, verify=verify, device=resolve_device(device), factory=factory, trust_factory=trust_factory)
    task_cfg = data_task_config(ckpt, data_spec(data)) if data else ckpt.task_config()
    task = load_task(task_cfg)
    task.check_token_ids(ckpt.model.input_vocab, str(checkpoint))
    if task.kind != ckpt.kind or tuple(task.in_shape) != tuple(ckpt.task["in_shape"]):
        raise UsageError(f"data {task.name} ({task.kind}, inputs {task.in_shape}) does not fit the checkpoint ({ckpt.kind}, inputs {tuple(ckpt.task['in_shape'])})")
    output = Path(output) if output else Path(checkpoint).with_suffix(f".{split}.h5")
    check_writable(output, True, inputs=[checkpoint, *spec_files(task_cfg.name)])  # inputs only: the writer checks the rest
    attrs = {
        "source": "lpa-checkpoint",
        "checkpoint_path": str(checkpoint),
        "checkpoint_sha256": ckpt.sha256,
        "config": json.dumps(ckpt.config.to_dict(), sort_keys=True),
        "task": json.dumps(ckpt.task | {"traced_on": task.name}, sort_keys=True),
        "objective": ckpt.config.objective.name,
        "split": split,
        "training": json.dumps(ckpt.training, sort_keys=True),
        "data_id": data_identity(task_cfg, split, task.meta),
    }
    return trace_split(ckpt.model, task.split(split), task.kind, output, attrs=attrs, **kwargs)


def data_task_config(ckpt, spec: str) -> TaskConfig:
    """The task config for other data than a checkpoint's own: what the model needs carries over
    (token context and tokenizer, input standardisation statistics, the data seed)."""
    own = ckpt.config.task
    kind = spec.partition(":")[0]
    options: dict[str, Any] = {}
    if kind in ("text", "tokens", "classify"):
        options["context"] = int(ckpt.task["in_shape"][0])
        if kind != "tokens" and "tokenizer" in ckpt.metadata:
            options["tokenizer"] = str(ckpt.path)
    if kind == "file" and isinstance(ckpt.task.get("meta"), dict) and "stats" in ckpt.task["meta"]:
        options["stats"] = ckpt.task["meta"]["stats"]
    if kind == own.name.partition(":")[0]:  # the same kind of data: its options (keys, columns) still apply
        options = dict(ckpt.task_config().options) | options
    return TaskConfig(name=spec, data_seed=own.data_seed, options=options)
