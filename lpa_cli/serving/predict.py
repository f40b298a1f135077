"""Early-exit prediction for classifiers and regressors, batch by batch: after each block the shared
head reads the rows still running, and rows whose exit rule fires leave the batch (so later blocks run
on fewer rows). Rules: ``confidence:P`` (largest probability >= P), ``entropy:H`` (entropy <= H nats),
``patience:K`` (the same class K depths in a row), ``depth:k`` (a fixed prefix; regression too)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from lpa_core.errors import UsageError
from lpa_cli.models.protocol import ResidualModel
from lpa_core.atomic import check_writable, write_text
from lpa_cli.models.open import load_checkpoint
from lpa_cli.runtime import resolve_device
from lpa_cli.data.tasks import data_spec, load_task, spec_files
from lpa_cli.serving.trace import data_task_config


RULES = ("confidence", "entropy", "patience", "depth")


@dataclass(frozen=True)
class ExitRule:
    kind: str  # confidence | entropy | patience | depth
    value: float

    @classmethod
    def parse(cls, text: str, num_blocks: int, task_kind: str) -> ExitRule:
        kind, sep, raw = text.partition(":")
        if kind not in RULES or not sep:
            raise UsageError(f"--exit {text!r}: expected confidence:P, entropy:H, patience:K or depth:k")
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"--exit {text!r}: {raw!r} is not a number") from None
        if not math.isfinite(value):
            raise UsageError(f"--exit {text!r}: the threshold must be finite")
        if kind == "confidence" and not 0 < value <= 1:
            raise UsageError(f"--exit {text!r}: a confidence threshold is in (0, 1]")
        if kind == "entropy" and value < 0:
            raise UsageError(f"--exit {text!r}: an entropy threshold is >= 0")
        if kind in ("patience", "depth") and (value != int(value) or not (1 <= value <= num_blocks if kind == "patience" else 0 <= value <= num_blocks)):
            raise UsageError(f"--exit {text!r}: {kind} is a whole number of depths between {1 if kind == 'patience' else 0} and {num_blocks}")
        if task_kind == "regression" and kind != "depth":
            raise UsageError(f"--exit {kind}: regression has no confidence; use depth:k")
        if task_kind == "lm":
            raise UsageError("lpa predict is for classifiers and regressors; language models: lpa generate --strategy exit")
        return cls(kind, value)


@dataclass
class Prediction:
    """Per row: the prediction, the depth it left at; and how long the whole run took."""

    outputs: Tensor  # (n,) classes or (n, out) values
    exit_depth: Tensor  # (n,)
    seconds: float
    confidence: Tensor | None = None  # (n,) largest probability at exit (classification)


@torch.no_grad()
def predict(model: ResidualModel, split, rule: ExitRule, kind: str, batch_size: int = 256, limit: int = 0) -> Prediction:
    """Run ``split`` (its first ``limit`` rows) through ``model`` with real early exit."""
    model.eval()
    device = next(model.parameters()).device
    outputs, depths, confidences = [], [], []
    N = model.num_blocks
    began = time.perf_counter()
    for _, batch in split.iter_batches(batch_size, limit):
        batch = batch.to(device)
        out, depth, conf = _exit_batch(model, batch.x, batch.mask, rule, kind, N)
        outputs.append(out.cpu())
        depths.append(depth.cpu())
        if conf is not None:
            confidences.append(conf.cpu())
    seconds = time.perf_counter() - began
    return Prediction(torch.cat(outputs), torch.cat(depths), seconds, torch.cat(confidences) if confidences else None)


def _exit_batch(model: ResidualModel, x: Tensor, mask: Tensor | None, rule: ExitRule, kind: str, N: int):
    """One batch with real early exit: rows whose rule fires leave, later blocks run on the rest."""
    B = x.shape[0]
    rows = torch.arange(B, device=x.device)  # the rows still running
    h = model.embed(x)
    out: Tensor | None = None
    depth = torch.full((B,), N, dtype=torch.long, device=x.device)
    conf = torch.zeros(B, device=x.device) if kind == "classification" else None
    same = torch.zeros(B, dtype=torch.long, device=x.device)  # patience: depths in a row with an unchanged class
    last: Tensor | None = None
    for k in range(N + 1):
        if k > 0:
            h = model.blocks[k - 1](h) if mask is None else model.blocks[k - 1](h, attention_mask=mask)
        if rule.kind == "depth" and k < rule.value:
            continue
        pred = model.read(h, mask)
        if out is None:
            out = torch.empty((B, *pred.shape[1:]), dtype=pred.dtype, device=x.device)
        prob = pred.float().softmax(-1) if kind == "classification" else None
        if k == N or rule.kind == "depth":
            fire = torch.ones(len(rows), dtype=torch.bool, device=x.device)
        elif rule.kind == "confidence":
            fire = prob.max(-1).values >= rule.value
        elif rule.kind == "entropy":
            fire = -(prob * prob.clamp_min(1e-30).log()).sum(-1) <= rule.value
        else:
            labels = prob.argmax(-1)
            same = torch.where(labels == last, same + 1, torch.zeros_like(same)) if last is not None else same
            last = labels
            fire = same >= rule.value
        if fire.any():
            leaving = rows[fire]
            out[leaving] = pred[fire]
            depth[leaving] = k
            if conf is not None:
                conf[leaving] = prob[fire].max(-1).values
            keep = ~fire
            rows, h, same = rows[keep], h[keep], same[keep]
            mask = None if mask is None else mask[keep]
            last = None if last is None else last[keep]
            if not len(rows):
                break
    if kind == "classification":
        return out.argmax(-1), depth, conf
    return out, depth, None


@dataclass
class PredictReport:
    """`predict` on a checkpoint: the exit run's answers and measured speed, and the full model's."""

    rule: str
    n: int
    accuracy: float | None  # classification
    mse: float | None  # regression
    mean_exit_depth: float
    exit_histogram: list[int]  # rows that left at each depth 0..N
    samples_per_s: float
    ms_per_sample: float
    full_accuracy: float | None = None
    full_mse: float | None = None
    full_samples_per_s: float | None = None
    speedup: float | None = None
    output: str | None = None


def predict_checkpoint(checkpoint, rule: str, *, data: str | None = None, split: str = "test", output=None, baseline: bool = True,
                       batch_size: int = 256, limit: int = 0, verify: bool = True, force: bool = False, device: str = "cpu",
                       repeats: int = 3, factory: str = "", trust_factory: bool = False) -> PredictReport:
    """Run a checkpoint's classifier or regressor with real early exit on its test split (or ``data``),
    write one CSV row per sample to ``output``, and measure the speed against all depths
    (``baseline``; the faster of ``repeats`` runs each). ``factory``/``trust_factory``: as `load_checkpoint`."""
    if batch_size < 1 or limit < 0:
        raise UsageError(f"--batch-size must be >= 1 (got {batch_size})" if batch_size < 1 else f"--limit must be >= 0 (0: all), got {limit}")
    if output is not None:
        check_writable(output, force, inputs=[checkpoint, *(spec_files(data_spec(data)) if data else [])])
    ckpt = load_checkpoint(checkpoint, verify=verify, device=resolve_device(device), factory=factory, trust_factory=trust_factory)
    kind = ckpt.kind
    exit_rule = ExitRule.parse(rule, ckpt.model.num_blocks, kind)
    task = load_task(data_task_config(ckpt, data_spec(data)) if data else ckpt.task_config())
    task.check_token_ids(ckpt.model.input_vocab, str(checkpoint))
    rows = task.split(split)
    runs = [predict(ckpt.model, rows, exit_rule, kind, batch_size, limit) for _ in range(repeats)]
    best = min(runs, key=lambda r: r.seconds)
    n = len(best.outputs)
    targets = torch.cat([b.y for _, b in rows.iter_batches(batch_size, limit)])
    full = min((predict(ckpt.model, rows, ExitRule("depth", ckpt.model.num_blocks), kind, batch_size, limit) for _ in range(repeats)),
               key=lambda r: r.seconds) if baseline else None

    def quality(p: Prediction) -> tuple[float | None, float | None]:
        if kind == "classification":
            return float((p.outputs == targets).float().mean()), None
        return None, float((p.outputs.float() - targets.float()).pow(2).mean())

    acc, mse = quality(best)
    hist = torch.bincount(best.exit_depth, minlength=ckpt.model.num_depths).tolist()
    report = PredictReport(rule, n, acc, mse, float(best.exit_depth.float().mean()), hist, n / best.seconds, 1000 * best.seconds / n)
    if full is not None:
        report.full_accuracy, report.full_mse = quality(full)
        report.full_samples_per_s = n / full.seconds
        report.speedup = full.seconds / best.seconds
    if output is not None:
        write_text(output, _csv(best, targets, kind, task.meta.get("classes")), force=force)
        report.output = str(output)
    return report


def _csv(p: Prediction, targets: Tensor, kind: str, classes: list | None) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    if kind == "classification":
        w.writerow(["row", "prediction", "label", "exit_depth", "confidence", "target", "correct"])
        for i, (c, d, conf, t) in enumerate(zip(p.outputs.tolist(), p.exit_depth.tolist(), p.confidence.tolist(), targets.tolist())):
            w.writerow([i, c, classes[c] if classes and c < len(classes) else c, d, f"{conf:.6g}", t, int(c == t)])
    else:
        out, tgt = p.outputs.reshape(len(p.outputs), -1), targets.reshape(len(targets), -1)
        w.writerow(["row", *[f"prediction_{j}" for j in range(out.shape[1])], "exit_depth", *[f"target_{j}" for j in range(tgt.shape[1])], "se"])
        for i in range(len(out)):
            se = float((out[i] - tgt[i]).pow(2).mean())
            w.writerow([i, *[f"{v:.8g}" for v in out[i].tolist()], int(p.exit_depth[i]), *[f"{v:.8g}" for v in tgt[i].tolist()], f"{se:.8g}"])
    return buf.getvalue()
