"""Gathering runs for `lpa compare`: traces (checkpoints are traced first), costs, training logs."""

from __future__ import annotations

import glob
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

from analyzers.compare import compare
from analyzers.compare_types import CompareResult, Run
from lpa_core.errors import DataError, LpaError, UsageError
from lpa_core.files import readable
from analyzers.monotonicity import METRIC_BASE, check_metric, from_trace
from analyzers.trace import is_trace, open_trace
from lpa_cli.workflows.inputs import as_trace


def _split_run(spec: str) -> tuple[str, str, str]:
    """Split NAME=PATH at the first '=' whose right side names a file or a glob (names may hold '=')."""
    for i, ch in enumerate(spec):
        if ch == "=":
            right = spec[i + 1 :]
            if Path(right).exists() or (any(c in right for c in "*?[") and glob.glob(right)):
                return spec[:i], "=", right
    return spec.partition("=")


def parse_runs(specs: list[str]) -> "OrderedDict[str, list[Path]]":
    """``NAME=PATH`` items (repeat a name for more seeds; quoted globs are expanded here)."""
    groups: OrderedDict[str, list[Path]] = OrderedDict()
    for spec in specs:
        name, sep, pattern = _split_run(spec)
        if not sep or not name.strip() or not pattern.strip():
            raise UsageError(f"bad --run {spec!r}: expected NAME=PATH, e.g. LPA=runs/lpa.safetensors")
        if any(c in pattern for c in "*?[") and not Path(pattern).exists():  # a quoted glob: checkpoints and traces only
            paths = sorted(p for p in glob.glob(pattern) if Path(p).suffix in (".safetensors", ".h5", ".hdf5"))
        else:
            paths = [pattern]
        if not paths:
            raise UsageError(f"--run {spec!r}: the pattern matches no file")
        for p in paths:
            if not Path(p).exists():
                raise UsageError(f"--run {spec!r}: {p}: no such file")
            groups.setdefault(name.strip(), []).append(Path(p))
    if len(groups) < 2:
        raise UsageError("compare needs at least two groups (e.g. --run LPA=... --run E2E=...)")
    return groups


def _checkpoint_for(path: Path, trace, notes: list[str], trust: dict[str, Any]) -> Path | None:
    """The checkpoint a run's costs and log come from: the input itself, or the one a trace names,
    when it is still there, still the same model (its content hash) and its model may be built
    (a factory it names is allowed by ``trust``: `load_checkpoint`'s factory and trust_factory)."""
    if not is_trace(path):
        return path
    attrs = trace.attrs
    ckpt = attrs.get("checkpoint_path")
    if not ckpt or not Path(ckpt).is_file() or not str(ckpt).endswith(".safetensors"):
        return None
    from lpa_cli.formats.checkpoint import read_info
    from lpa_cli.models.factory import check_factory

    try:
        info = read_info(ckpt)
    except LpaError:
        info = None
    if info is None or info.sha256 != attrs.get("checkpoint_sha256"):
        notes.append(f"{path}: the checkpoint it names ({ckpt}) is not the model that was traced (its content hash differs); "
                     "its costs and training log are not shown")
        return None
    try:
        check_factory(info.config.model.factory, ckpt, **trust)
    except LpaError as err:
        notes.append(f"its costs and training log are not shown: {err}")
        return None
    return Path(ckpt)


def _costs(ckpt: Path | None, cache: dict[str, Any], trust: dict[str, Any]) -> dict[str, list[float]] | None:
    if ckpt is None:
        return None
    from lpa_cli.models.open import load_checkpoint
    from lpa_cli.serving.cost import depth_costs
    from lpa_cli.data.tasks import load_task

    c = load_checkpoint(ckpt, **trust)
    key = c.config.model.__repr__() + json.dumps(c.task, sort_keys=True)
    if key not in cache:
        try:
            test = load_task(c.task_config()).test
        except DataError:  # its data is not here (moved, or a checkpoint written by another loop): no cost column
            return None
        cache[key] = depth_costs(c.model, test.rows(0, min(len(test), 64 if c.kind == "lm" else 256)))
    return cache[key]


def _log(ckpt: Path | None, notes: list[str]) -> list[dict[str, Any]]:
    """The training log beside a checkpoint: its records that have the shape `lpa train` writes (a step,
    numbers where numbers belong); anything else is passed over, with a note saying how much."""
    log = None if ckpt is None else ckpt.with_suffix(".jsonl")
    if log is None or not log.exists():
        return []
    if not log.is_file():
        notes.append(f"{log.name}: not a regular file; no training curve shown")
        return []
    records, skipped = [], 0
    for line in readable(log, "text", error=DataError).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if _well_formed(record):
            records.append(record)
        else:
            skipped += line.strip() != ""
    if skipped:
        notes.append(f"{log.name}: {skipped} line(s) are not lpa training records and were passed over")
    return records


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _well_formed(record: Any) -> bool:
    """A record as `lpa_cli.training.trackers` writes it: an integer step; numbers (null for a
    non-finite one) in the scalar fields; tables by depth or metric of numbers or lists of numbers."""
    if not isinstance(record, dict) or not isinstance(record.get("step"), int) or isinstance(record["step"], bool):
        return False
    per_depth = record.get("train_loss_per_depth", {})
    if not isinstance(per_depth, dict) or not all(isinstance(k, str) and k.isdigit() for k in per_depth):
        return False  # its keys are depths
    for key, value in record.items():
        if isinstance(value, dict):
            for v in value.values():
                if not (_number(v) or (isinstance(v, list) and all(map(_number, v)))):
                    return False
        elif not (_number(value) or isinstance(value, str)):
            return False
    return True


def load_run(group: str, path: Path, metric: str | None, cost_cache: dict, notes: list[str], seed: int, bootstrap: int,
             kind: str | None = None, trust: dict[str, Any] | None = None) -> tuple[Run, dict, str, list[int] | None]:
    trust = trust or {}
    with as_trace(path, predictions="auto", **trust) as trace_path, open_trace(trace_path) as t:
        if kind is not None and t.kind != kind:
            raise UsageError(f"{path} is a {t.kind} run and the first run a {kind} run; they cannot be compared")
        m = check_metric(metric, t.kind)
        base, _ = METRIC_BASE[m]
        mono = from_trace(t, metric=m, seed=seed, bootstrap=bootstrap)
        mono.source = str(path)
        errs = 1.0 - t.errors("correct") if base == "err" else t.errors(base)
        correct = max_prob = entropy = argmax = preds = targets = None
        if t.kind == "lm":
            correct, max_prob, entropy = t.read("errors/correct_token"), t.read("confidence/max_prob"), t.read("confidence/entropy")
        elif t.kind == "classification":
            correct, max_prob, entropy = t.errors("correct"), t.read("confidence/max_prob"), t.read("confidence/entropy")
            if t.has("predictions"):
                argmax = t.read("predictions").argmax(axis=-1)
        elif t.has("predictions"):
            preds, targets = t.read("predictions"), t.read("targets")
        ckpt = _checkpoint_for(path, t, notes, trust)
        costs = _costs(ckpt, cost_cache, trust)
        task = t.task
        grid = task.get("meta", {}).get("grid") if isinstance(task.get("meta"), dict) else None
        run = Run(group=group, path=str(path), config=t.config, depths=t.depths, errors=errs, monotonicity=mono,
                  correct=correct, max_prob=max_prob, entropy=entropy, argmax=argmax, predictions=preds, targets=targets,
                  flops=costs["flops"] if costs else None, latency_ms=costs["latency_ms"] if costs else None, log=_log(ckpt, notes),
                  checkpoint=str(ckpt) if ckpt is not None else None)
        identity = t.fingerprint() | {"task": task.get("traced_on", task.get("name")), "kind": t.kind}
    return run, identity, m, grid


def measured_exits(run: Run, kind: str, trust: dict[str, Any] | None = None) -> list:
    """Exit settings run for real on a run's checkpoint (`lpa_cli.serving.generate`): confidence exits for a
    classifier; exit and self-speculative decoding for a language model, on prompts from its test split."""
    from lpa_cli.models.open import load_checkpoint
    from lpa_cli.serving.exits import classifier_tradeoffs, lm_prompts, lm_tradeoffs
    from lpa_cli.serving.generate import decodable

    ckpt = load_checkpoint(run.checkpoint, **(trust or {}))
    if kind == "classification":
        return classifier_tradeoffs(ckpt, flops=run.flops)
    if not decodable(ckpt.model):
        return []  # a language model that cannot decode token by token: nothing to measure
    prompts = lm_prompts(ckpt)
    room = int(ckpt.task["in_shape"][0]) - 20
    return lm_tradeoffs(ckpt, prompts, max_new_tokens=max(8, min(48, room)), flops=run.flops)


def compare_runs(specs: list[str], metric: str | None = None, force: bool = False, seed: int = 0, bootstrap: int = 1000,
                 measure: bool = True, *, factory: str = "", trust_factory: bool = False) -> CompareResult:
    """Compare groups of runs (see `analyzers.compare.compare`); with ``measure``, also run each
    group's first checkpoint with real early exit (classifiers, language models) and time it.
    ``factory``/``trust_factory``: as `lpa_cli.models.open.load_checkpoint`, for every checkpoint."""
    trust = {"factory": factory, "trust_factory": trust_factory}
    groups = parse_runs(specs)
    runs: OrderedDict[str, list[Run]] = OrderedDict()
    identities, notes, cache = [], [], {}
    chosen_metric, grid, kind = metric, None, None
    for group, paths in groups.items():
        for p in paths:
            run, identity, chosen_metric, grid = load_run(group, p, chosen_metric, cache, notes, seed, bootstrap, kind, trust)
            kind = identity["kind"]
            runs.setdefault(group, []).append(run)
            identities.append((p, identity))
    first_path, first = identities[0]
    for p, ident in identities[1:]:
        if ident["kind"] != first["kind"]:
            raise UsageError(f"{p} is a {ident['kind']} run and {first_path} a {first['kind']} run; they cannot be compared")
        same_data = (ident["task"], ident["n"], ident["targets_sha256"]) == (first["task"], first["n"], first["targets_sha256"])
        if not same_data and not force:
            raise UsageError(f"{p} was evaluated on different data than {first_path} (task {ident['task']} vs {first['task']}, "
                             f"{ident['n']} vs {first['n']} samples); use --force to compare anyway")
        if not same_data:
            notes.append(f"{p}: different test data than {first_path} (compared with --force; paired statistics are not meaningful)")
    if any(r.flops is None for m in runs.values() for r in m):
        notes.append("some inputs are traces whose checkpoint is not at hand: their cost is not shown")
    same = all((i["task"], i["n"], i["targets_sha256"]) == (first["task"], first["n"], first["targets_sha256"]) for _, i in identities)
    result = compare(runs, chosen_metric, first["kind"], grid=grid, paired=same, seed=seed)
    if measure and first["kind"] in ("classification", "lm"):
        for group, members in runs.items():
            if members[0].checkpoint:
                result.measured[group] = measured_exits(members[0], first["kind"], trust)
    result.notes.extend(notes)
    return result
