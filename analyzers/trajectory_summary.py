"""A trace's trajectory, depth by depth, with paired bootstrap bands (issue 42; the definitions are in
`analyzers.trajectory` and docs/trajectory.md).

One streaming pass over row chunks accumulates, per bootstrap block (`analyzers.bootstrap`: the same
blocks as the error curve's), the sums every statistic is a ratio of: the error, the alignment and KL
per depth, and per depth and confidence bin the count, the correct count and the confidence. Each
bootstrap replicate re-weights the blocks, so every band is paired across depths and statistics, and
the calibration error's band is exact for the binned estimator (its sums resample, not its value).

Per depth:
- ``alignment``: the mean cosine of the step into the depth (from the previous traced depth) with the
  residual target at that depth (the negative loss gradient);
- ``removal``: the share of the previous traced depth's mean error the step removed, 1 - e_k / e_{k-1}
  (the error the monotonicity test uses; alone, squared error or cross-entropy);
- ``kl_to_final``: the mean KL(p_final || p_k) in nats (classification, LMs);
- ``calibration_error``: the expected calibration error (equal-width bins on the top probability);
- ``prediction_depth``: how many samples (LM tokens) settle on the deepest traced depth's arg-max at each depth.

LM sequences are the resampling unit (tokens of one sequence are not independent); alignment and KL
average each sequence's real tokens first, calibration and prediction depth count tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analyzers.bootstrap import add_block_sums, n_blocks, replicate_weights
from analyzers.metrics import finite
from analyzers.probes import per_sample_errors
from analyzers.trajectory import BINS, depth_measures, prediction_depth
from lpa_core.errors import UsageError

Chunk = dict[str, np.ndarray | None]


@dataclass
class TrajectoryResult:
    """Per-depth trajectory statistics; lists are indexed by position in ``depths`` (None: not defined
    there, e.g. no step into the first traced depth, or a measure the task or the trace lacks)."""

    kind: str
    n: int
    depths: list[int]
    alignment: list[float | None]
    alignment_band: list[list[float | None]]  # [low, high] per depth
    removal: list[float | None]
    removal_band: list[list[float | None]]
    kl_to_final: list[float] | None = None
    kl_to_final_band: list[list[float]] | None = None
    calibration_error: list[float] | None = None
    calibration_error_band: list[list[float]] | None = None
    prediction_depth: list[int] | None = None  # samples (LM tokens) settled from each depth on
    mean_prediction_depth: float | None = None
    unit: str = "sample"  # what calibration and prediction depth count: sample or token
    bins: int = BINS
    bootstrap: int = 0
    alpha: float = 0.05
    seed: int = 0
    notes: list[str] = field(default_factory=list)

    def at(self, depth: int, name: str) -> float | None:
        """One statistic at a recorded depth (None where undefined)."""
        values = getattr(self, name)
        if values is None or depth not in self.depths:
            return None
        return values[self.depths.index(depth)]

    def select(self, positions: list[int]) -> TrajectoryResult:
        """The same statistics at a subset of the depths (each still measured from the traced depth before it)."""
        def pick(values):
            return None if values is None else [values[p] for p in positions]

        out = TrajectoryResult(**{k: v for k, v in self.__dict__.items()})
        for name in ("depths", "alignment", "alignment_band", "removal", "removal_band", "kl_to_final", "kl_to_final_band", "calibration_error",
                     "calibration_error_band"):
            setattr(out, name, pick(getattr(self, name)))
        if self.prediction_depth is not None:  # those settled since the previous chosen depth (all earlier ones at the first)
            total = np.cumsum(self.prediction_depth)[positions]
            out.prediction_depth = np.diff(total, prepend=0).tolist()
        return out

    def to_dict(self) -> dict[str, Any]:
        return finite(dict(self.__dict__))


def pool_seeds(results: list[TrajectoryResult]) -> TrajectoryResult:
    """One group's trajectory from its seeds: each statistic's mean over the seeds, and as its band the
    envelope of the seeds' own bands (lowest low, highest high: between-seed spread and within-seed
    sampling both show); prediction-depth counts summed. A single seed is returned as it is."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    out = TrajectoryResult(**dict(first.__dict__))
    out.notes = [f"the mean of {len(results)} seeds; bands span the seeds' own 95% bands"] + sorted({n for r in results for n in r.notes})
    for name in ("alignment", "removal", "kl_to_final", "calibration_error"):
        band = f"{name}_band"
        if getattr(first, name) is None:
            continue
        columns = list(zip(*(getattr(r, name) for r in results)))
        setattr(out, name, [None if None in c else float(np.mean(c)) for c in columns])
        bands = list(zip(*(getattr(r, band) for r in results)))
        setattr(out, band, [[None, None] if any(b[0] is None for b in bs) else [min(b[0] for b in bs), max(b[1] for b in bs)] for bs in bands])
    if first.prediction_depth is not None:
        out.prediction_depth = np.sum([r.prediction_depth for r in results], axis=0).tolist()
        out.mean_prediction_depth = float(np.mean([r.mean_prediction_depth for r in results]))
    return out


def _bin_sums(conf: np.ndarray, right: np.ndarray, valid: np.ndarray, bins: int) -> np.ndarray:
    """(rows, D, 3, bins): per sample, depth and confidence bin, the count, correct count and confidence sum
    (LM rows sum their real tokens). ``conf``/``right``: (rows, D, T); ``valid``: (rows, T)."""
    rows, D, T = conf.shape
    out = np.zeros((rows, D, 3, bins))
    which = np.minimum((conf * bins).astype(np.int64), bins - 1) + bins * np.arange(rows)[:, None, None]
    w = np.broadcast_to(valid[:, None, :], conf.shape).astype(np.float64)
    for d in range(D):
        idx = which[:, d].ravel()
        for j, weight in enumerate((w[:, d], w[:, d] * right[:, d], w[:, d] * conf[:, d])):
            out[:, d, j] = np.bincount(idx, weights=weight.ravel(), minlength=rows * bins).reshape(rows, bins)
    return out


def summarize(chunks: Callable[[], Iterator[Chunk]], n: int, depths: list[int], kind: str, *, bootstrap: int = 1000, alpha: float = 0.05,
              seed: int = 0, bins: int = BINS, source: str = "", errors: tuple[np.ndarray, ...] | None = None) -> TrajectoryResult:
    """Per-depth trajectory statistics from row chunks, each a dict: ``rows``; ``error`` (rows, D); ``alignment``
    (rows, D; NaN in the first column); and where they exist ``kl`` (rows, D), ``max_prob`` and ``correct``
    (rows, D, T), ``valid`` (rows, T) and ``prediction`` (rows, D, T) (T = 1 for one answer a sample).
    ``errors``: the error's (blocks, D) block sums, (blocks,) counts and, optionally, the bootstrap's
    (replicates, blocks) weights from the monotonicity pass (the same blocks, `analyzers.error_pass`), when
    the chunks leave the error out: it is read once."""
    D = len(depths)
    blocks = n_blocks(n)
    sums, counts = None, np.zeros(blocks, dtype=np.int64)
    settled = np.zeros(D, dtype=np.int64)
    has: dict[str, bool] = {}
    seen = 0
    for c in chunks():
        rows = c["rows"]
        has = {name: c.get(name) is not None for name in ("alignment", "kl", "max_prob", "prediction")}
        parts = [] if errors is not None else [np.asarray(c["error"])]
        if has["alignment"]:
            parts.append(np.asarray(c["alignment"])[:, 1:])  # no step leads into the first depth: its NaN stays out
        if has["kl"]:
            parts.append(np.asarray(c["kl"]))
        if has["max_prob"]:
            parts.append(_bin_sums(c["max_prob"], c["correct"], c["valid"], bins).reshape(rows, -1))
        if parts:  # depth-major (V, rows) in one copy, float32 where the trace is (bincount sums in float64)
            values = np.concatenate([p.T for p in parts], axis=0)
            if not np.isfinite(values).all():
                raise UsageError(f"{source}: trajectory values contain NaN or infinite values")
            if sums is None:
                sums = np.zeros((blocks, values.shape[0]))
            add_block_sums(sums, counts, values, seen, n, seed)
        if has["prediction"]:
            p = np.moveaxis(np.asarray(c["prediction"]), 1, -1).reshape(-1, D)  # (rows * T, D)
            p = p[p[:, -1] >= 0]  # padding tokens hold -1
            settled += np.bincount(prediction_depth(p), minlength=D)
        seen += rows
    if seen != n:
        raise UsageError(f"{source}: expected {n} samples, read {seen}")
    weights = None
    if errors is not None:
        sums, counts = (errors[0] if sums is None else np.hstack([errors[0], sums])), errors[1]
        weights = errors[2] if len(errors) > 2 else None
    return _result(sums, counts, settled, has, depths, kind, n, bootstrap, alpha, seed, bins, weights)


def _stats(totals: np.ndarray, count: np.ndarray, D: int, has: dict[str, bool], bins: int) -> dict[str, np.ndarray]:
    """Every statistic from (R, V) sums and (R,) sample counts (R: 1 for the point estimate, or replicates)."""
    out, at = {}, D
    mean_e = totals[:, :D] / count[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["removal"] = np.concatenate([np.full((len(totals), 1), np.nan), 1 - mean_e[:, 1:] / mean_e[:, :-1]], axis=1)
    if has["alignment"]:
        out["alignment"] = np.concatenate([np.full((len(totals), 1), np.nan), totals[:, at : at + D - 1] / count[:, None]], axis=1)
        at += D - 1
    if has["kl"]:
        out["kl_to_final"] = totals[:, at : at + D] / count[:, None]
        at += D
    if has["max_prob"]:
        b = totals[:, at : at + D * 3 * bins].reshape(len(totals), D, 3, bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["calibration_error"] = np.abs(b[:, :, 1] - b[:, :, 2]).sum(-1) / b[:, :, 0].sum(-1)
    return out


def _nones(values: list[float]) -> list[float | None]:
    return [v if np.isfinite(v) else None for v in values]


def _band(values: np.ndarray, alpha: float) -> list[list[float]]:
    """[low, high] per column of (replicates, D) values; NaN where a replicate has none."""
    lo, hi = np.full(values.shape[1], np.nan), np.full(values.shape[1], np.nan)
    ok = np.isfinite(values).all(axis=0)
    if ok.any():
        lo[ok], hi[ok] = np.quantile(values[:, ok], [alpha / 2, 1 - alpha / 2], axis=0)
    return np.stack([lo, hi], axis=1).tolist()


def _result(sums, counts, settled, has, depths, kind, n, bootstrap, alpha, seed, bins, weights=None) -> TrajectoryResult:
    """The statistics and their bands; ``weights``: the error curve's own bootstrap replicates (the same
    draws, so the bands are paired with its bands too), else drawn here with the same seed."""
    D = len(depths)
    point = _stats(sums.sum(0, keepdims=True), np.array([float(n)]), D, has, bins)
    if bootstrap:
        w = weights if weights is not None and weights.shape == (bootstrap, len(counts)) else \
            replicate_weights(np.random.default_rng(seed), bootstrap, len(counts))
        boot = _stats(w @ sums, np.maximum(w @ counts.astype(np.float64), 1.0), D, has, bins)
        bands = {name: _band(values, alpha) for name, values in boot.items()}
    else:
        bands = {name: np.stack([v[0], v[0]], axis=1).tolist() for name, v in point.items()}

    def get(name):
        return _nones(point[name][0].tolist()) if name in point else None

    bands = {name: [_nones(b) for b in band] for name, band in bands.items()}

    notes = [] if has["alignment"] else ["trace format 1 holds no trajectory measures (alignment, KL to the final depth, prediction depth); "
                                          "trace it again with this lpa"]
    total = int(settled.sum())
    return TrajectoryResult(
        kind=kind, n=n, depths=list(depths), alignment=get("alignment") or [None] * D, alignment_band=bands.get("alignment") or [[None, None]] * D,
        removal=get("removal"), removal_band=bands["removal"], kl_to_final=get("kl_to_final"), kl_to_final_band=bands.get("kl_to_final"),
        calibration_error=get("calibration_error"), calibration_error_band=bands.get("calibration_error"),
        prediction_depth=settled.tolist() if has["prediction"] else None,
        mean_prediction_depth=float(np.dot(settled, depths) / total) if has["prediction"] and total else None,
        unit="token" if kind == "lm" else "sample", bins=bins, bootstrap=bootstrap, alpha=alpha, seed=seed, notes=notes,
    )


CHUNK_BYTES = 64 << 20  # the calibration bins' float64 sums of one chunk (LMs: per token) stay below this


def chunk_rows_for(trace) -> int:
    """Rows per chunk: many for per-sample data (fewer calls), fewer for an LM's per-token calibration bins."""
    per_row = len(trace.depths) * max(1, trace.token_len) * (3 * BINS * 8 + 32)
    return int(min(65536, max(64, CHUNK_BYTES // per_row)))


def trace_chunks(trace, lens=None, chunk_rows: int = 0, error: str | None = "") -> Callable[[], Iterator[Chunk]]:
    """Row chunks of a trace for `summarize`: its stored measures, or (``lens``, an `analyzers.probes.Lens`)
    the same measures of the lens's predictions from the stored states. ``error``: the per-sample error
    of the removal share (``se``, ``ce`` or ``err``; "": squared error or cross-entropy; None: left out)."""
    lm, regression = trace.kind == "lm", trace.kind == "regression"
    error = ("se" if regression else "ce") if error == "" else error
    chunk_rows = chunk_rows or chunk_rows_for(trace)

    def stored(rows: slice) -> Chunk:
        c: Chunk = {"rows": rows.stop - rows.start}
        if error is not None:
            c["error"] = 1.0 - trace.read("errors/correct", rows) if error == "err" else trace.read(f"errors/{error}", rows)
        if trace.has_trajectory:
            c["alignment"] = trace.read("trajectory/alignment", rows)
            if not regression:
                c["kl"] = trace.read("trajectory/kl_to_final", rows)
                c["prediction"] = trace.read("trajectory/prediction_token" if lm else "trajectory/prediction", rows)
        if not regression:
            targets = trace.read("targets", rows)
            right = trace.read("errors/correct_token" if lm else "errors/correct", rows)
            c |= _calibration_inputs(trace.read("confidence/max_prob", rows), right, targets, lm)
        return c

    def lensed(rows: slice) -> Chunk:
        states, targets = trace.read("states", rows), trace.read("targets", rows)
        preds = [lens.predict(d, states[:, p]) for p, d in enumerate(trace.depths)]
        final = None if regression else preds[-1]
        cols = [depth_measures(pred, preds[p - 1] if p else None, final, targets, trace.kind) for p, pred in enumerate(preds)]
        c: Chunk = {"rows": rows.stop - rows.start, "alignment": np.stack([m["alignment"] for m in cols], axis=1),
                    "error": np.stack([_error(pred, targets, trace.kind, error) for pred in preds], axis=1)}
        if not regression:
            c["kl"] = np.stack([m["kl_to_final"] for m in cols], axis=1)
            c["prediction"] = np.stack([m["prediction_token" if lm else "prediction"] for m in cols], axis=1)
            probs = [np.exp(z - z.max(-1, keepdims=True)) for z in (np.asarray(p, np.float64) for p in preds)]
            top = np.stack([(q.max(-1) / q.sum(-1)) for q in probs], axis=1)
            right = np.stack([np.argmax(p, -1) == targets for p in preds], axis=1).astype(np.float64)
            c |= _calibration_inputs(top, right, targets, lm)
        return c

    def chunks() -> Iterator[Chunk]:
        for start in range(0, trace.n, chunk_rows):
            rows = slice(start, min(trace.n, start + chunk_rows))
            yield lensed(rows) if lens is not None else stored(rows)

    return chunks


def _calibration_inputs(max_prob: np.ndarray, right: np.ndarray, targets: np.ndarray, lm: bool) -> Chunk:
    if lm:
        return {"max_prob": max_prob, "correct": right, "valid": np.asarray(targets) >= 0}
    return {"max_prob": max_prob[..., None], "correct": right[..., None], "valid": np.ones((len(max_prob), 1), dtype=bool)}


def _error(pred: np.ndarray, targets: np.ndarray, kind: str, error: str | None) -> np.ndarray:
    e = per_sample_errors(pred, targets, kind)
    return 1.0 - e["correct"] if error == "err" else e["se" if kind == "regression" else "ce"]


def from_trace(trace, lens=None, *, error: str = "", errors: tuple[np.ndarray, ...] | None = None, bootstrap: int = 1000,
               alpha: float = 0.05, seed: int = 0, bins: int = BINS, chunk_rows: int = 0) -> TrajectoryResult:
    """The trajectory statistics of an open trace at every traced depth (through ``lens`` when given).
    ``error``: the error whose share each step removes (``se``, ``ce``, ``err``; default squared error or
    cross-entropy); ``errors``: its block sums from `analyzers.monotonicity` (then not read again)."""
    if lens is not None and not trace.has("states"):
        raise UsageError(f"{trace.path}: reading depths through a lens needs block states; trace it with --states")
    reuse = errors if lens is None else None
    result = summarize(trace_chunks(trace, lens, chunk_rows, None if reuse is not None else error), trace.n, trace.depths, trace.kind,
                       bootstrap=bootstrap, alpha=alpha, seed=seed, bins=bins, source=str(trace.path), errors=reuse)
    if lens is not None:
        result.notes = [n for n in result.notes if not n.startswith("trace format 1")]  # the lens computes them
        result.notes.append(f"read through the {lens.kind} lens; KL is to the deepest traced depth's distribution through it")
    return result
