"""Does error fall with depth? A statistical test of the paper's monotonicity claim.

Everything is computed from per-sample errors ``e[i, k]`` (sample i, recorded depth k), streamed in
row chunks so memory does not grow with the number of samples. The method, in plain words and with
formulas, is in docs/monotonicity.md. In short:

- the curve: the mean error per depth, with a paired bootstrap CI (the same resampled samples for
  every depth, so the CIs of differences are paired too);
- every step k -> k+1: the mean paired change ``d_i = e[i, k+1] - e[i, k]``, its bootstrap CI, and a
  one-sided paired t-test of H1 "the error rises by more than the tolerance", Holm-corrected;
- the whole curve: Kendall's tau and Sen's slope against depth, and the distance to the best
  non-increasing (isotonic) curve;
- per sample, each judged against its own descent: how many trajectories never rise beyond the
  tolerance, when each sample first gets within the tolerance of its final error, and for classification "destructive overthinking"
  (right at some depth < N, wrong at N) and "wasteful" depth (right already before N);
- the shallowest depth whose error is within ``within`` (5%) of the final error;
- "no descent": a curve whose final depth is no better than the constant predictor (the class prior, the targets' mean, the unigram distribution: `constant_baseline`)
  within its bootstrap interval, is its own verdict. It is not monotone descent, and a model that
  learned nothing has no deploy depth worth the name.

The tolerance is relative to the curve's total descent (curve[first] - min(curve)), so a noise-level
wiggle on a converged plateau is not a violation while a rise that undoes part of the descent is.
The strict verdict (tolerance 0) is reported too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import optimize, stats

from analyzers.bootstrap import replicate_weights
from analyzers.baseline import constant_baseline
from analyzers.error_pass import ErrorSums, stream_errors
from analyzers.trajectory_summary import TrajectoryResult, from_trace as trajectory_from_trace
from lpa_core.depths import spans
from lpa_core.errors import UsageError
from analyzers.metrics import finite

# metric -> (per-sample error it is tested on, function from mean error to the reported value)
METRIC_BASE: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]] = {
    "mse": ("se", lambda m: m),
    "rmse": ("se", np.sqrt),
    "ce": ("ce", lambda m: m),
    "ppl": ("ce", lambda m: np.exp(np.minimum(m, 700.0))),
    "err": ("err", lambda m: m),
    "acc": ("err", lambda m: 1.0 - m),  # tested as error rate; reported as accuracy
}
METRICS_FOR_KIND = {
    "regression": ("mse", "rmse"),
    "classification": ("err", "ce", "acc"),
    "lm": ("ce", "ppl", "err", "acc"),
}
DEFAULT_METRIC = {"regression": "mse", "classification": "err", "lm": "ce"}


MAX_BOOTSTRAP = 100_000


def check_settings(tolerance: float = 0.01, alpha: float = 0.05, within: float = 0.05, bootstrap: int = 1000, seed: int = 0) -> None:
    """The test's settings, checked: NaN or an infinite tolerance would pass any curve (a gate bypass)."""
    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    if not (number(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance must be a finite number >= 0, got {tolerance!r}")
    if not (number(alpha) and 0 < alpha < 1):
        raise UsageError(f"--alpha must be between 0 and 1, got {alpha!r}")
    if not (number(within) and within >= 0):
        raise UsageError(f"--within must be a finite number >= 0, got {within!r}")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise UsageError(f"--bootstrap must be an integer between 0 and {MAX_BOOTSTRAP}, got {bootstrap!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be an integer between 0 and 2**32 - 1, got {seed!r}")


def check_metric(metric: str | None, kind: str) -> str:
    metric = metric or DEFAULT_METRIC[kind]
    if metric not in METRICS_FOR_KIND[kind]:
        raise UsageError(f"metric {metric!r} does not apply to {kind}; use one of {', '.join(METRICS_FOR_KIND[kind])}")
    return metric


@dataclass
class Step:
    """The change from depth ``frm`` to depth ``to`` (errors; positive = worse)."""

    frm: int
    to: int
    delta: float  # mean paired change of the per-sample error
    ci_low: float
    ci_high: float
    t: float
    p: float  # one-sided: H1 "delta > tolerance"
    p_holm: float
    significant: bool  # p_holm < alpha: a rise beyond the tolerance
    significant_strict: bool  # the same test with tolerance 0 (Holm-corrected too)

    @property
    def direction(self) -> str:
        """What the error did over the step: falls, rises or flat (the test asks only whether it rose)."""
        return "falls" if self.delta < 0 else "rises" if self.delta > 0 else "flat"


@dataclass
class MonotonicityResult:
    """Result of `assess_monotonicity`. Arrays are indexed by position in ``depths``."""

    source: str
    metric: str
    kind: str
    n: int
    depths: list[int]
    curve: list[float]  # (D,) reported metric per depth
    ci_low: list[float]  # (D,) bootstrap CI of the reported metric
    ci_high: list[float]
    error_curve: list[float]  # (D,) mean of the per-sample error that is tested
    steps: list[Step]
    tolerance: float  # absolute tolerance on the per-sample error's mean change
    tolerance_rel: float
    descent: float
    alpha: float
    monotone: bool
    monotone_strict: bool
    kendall_tau: float
    kendall_p: float  # one-sided, H1: decreasing trend
    sen_slope: float  # per depth, in units of the tested error
    isotonic_rmse: float  # RMS distance of the error curve to its best non-increasing fit
    isotonic_rel: float  # ... relative to the descent
    sample_monotone_share: float
    first_within: list[int]  # (D,) samples first within (tolerance x own descent) of their final error, per depth
    mean_first_within: float
    deploy_depth: int
    within: float
    overthinking_share: float | None = None  # classification: right at some k < N, wrong at N
    wasteful_share: float | None = None  # classification: right at N and already right before N
    first_correct: list[int] | None = None  # classification: samples first correct at each depth
    bootstrap: int = 0
    seed: int = 0
    notes: list[str] = field(default_factory=list)
    baseline: float | None = None  # the constant predictor's error (tested error's units), when known
    no_descent: bool = False  # the final depth is no better than the constant predictor
    never_learned: list[int] = field(default_factory=list)  # depths no better than the constant predictor
    trajectory: TrajectoryResult | None = None  # alignment, KL to final, calibration, prediction depth (traces)

    def __post_init__(self) -> None:
        D = len(self.depths)
        for name in ("curve", "ci_low", "ci_high", "error_curve", "first_within"):
            if len(getattr(self, name)) != D:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {D} depths")
        if len(self.steps) != max(0, D - 1):
            raise ValueError("one step per pair of adjacent depths")

    @property
    def violations(self) -> list[Step]:
        return [s for s in self.steps if s.significant]

    @property
    def verdict(self) -> str:
        return "no descent" if self.no_descent else "monotone" if self.monotone else "not monotone"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["verdict"] = self.verdict
        out["violations"] = [{"from": s.frm, "to": s.to, "delta": s.delta, "p_holm": s.p_holm} for s in self.violations]
        return finite(out)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        adjusted[idx] = running
    return adjusted.tolist()


def _t_test_greater(mean: float, var: float, n: int, mu: float) -> tuple[float, float]:
    """One-sided one-sample t-test of H1 mean > mu from summary statistics."""
    if n < 2:
        return float("nan"), 1.0
    se = math.sqrt(max(var, 0.0) / n)
    if se == 0.0:
        return (math.inf, 0.0) if mean > mu else (-math.inf, 1.0)
    t = (mean - mu) / se
    return t, float(stats.t.sf(t, df=n - 1))


ChunkSource = Callable[[], Iterator[tuple[np.ndarray, np.ndarray | None]]]


def assess_monotonicity(
    chunks: ChunkSource,
    n: int,
    depths: Sequence[int],
    kind: str,
    metric: str | None = None,
    *,
    tolerance: float = 0.01,
    alpha: float = 0.05,
    within: float = 0.05,
    bootstrap: int = 1000,
    seed: int = 0,
    source: str = "",
    baseline: float | None = None,
) -> MonotonicityResult:
    """Test "error falls with depth" from per-sample errors.

    ``chunks()`` yields ``(errors, correct)`` row blocks: ``errors`` of shape (rows, D) holds the
    per-sample error the metric is based on (``se``, ``ce`` or ``1 - correct``); ``correct`` (or None)
    the per-sample correctness for classification. One streaming pass (`analyzers.error_pass`).
    ``tolerance`` is relative to the curve's total descent. ``baseline``: the constant predictor's mean
    error (`constant_baseline`); a final depth no better than it is "no descent".
    """
    metric = check_metric(metric, kind)
    depths = list(depths)
    D = len(depths)
    if D < 2:
        raise UsageError("monotonicity needs at least two depths")
    if n < 2:
        raise UsageError("monotonicity needs at least two samples")
    check_settings(tolerance=tolerance, alpha=alpha, within=within, bootstrap=bootstrap, seed=seed)
    _, transform = METRIC_BASE[metric]
    s = stream_errors(chunks, n, D, tolerance, seed, kind == "classification", source)
    mean = s.sums / n
    d_mean = np.diff(s.sums) / n
    d_var = np.maximum(0.0, (s.d_sq - n * d_mean**2) / max(1, n - 1))
    descent = float(mean[0] - mean.min())
    notes = []
    if descent <= 0:
        descent = float(mean.max() - mean.min())
        notes.append("the curve never falls below its first depth; the tolerance is relative to its range")
    lo, hi, s_lo, s_hi, weights = _bootstrap(s, mean, d_mean, alpha, bootstrap, seed)
    reported = transform(mean)
    r_lo, r_hi = transform(lo), transform(hi)
    if metric == "acc":
        r_lo, r_hi = r_hi, r_lo
    steps = _steps(depths, d_mean, d_var, s_lo, s_hi, n, tolerance * descent, alpha)
    x = np.asarray(depths, dtype=np.float64)  # whole-curve trend and isotonic fit
    tau = stats.kendalltau(x, mean, alternative="less")
    slope = stats.theilslopes(mean, x)
    iso_rmse = float(np.sqrt(np.mean((mean - optimize.isotonic_regression(mean, increasing=False).x) ** 2)))
    no_descent = baseline is not None and float(hi[-1]) >= baseline * (1 - 1e-9)  # the interval's upper end reaches it
    never = [d for d, h in zip(depths, hi) if baseline is not None and float(h) >= baseline * (1 - 1e-9)]
    if never and not no_descent:  # a warning, not a verdict: the model learned, some depths did not
        notes.append(f"{spans(never)} never left chance: no better than a constant predictor's error ({baseline:.4g})")
    if no_descent:
        notes.append(f"the final depth's error ({mean[-1]:.4g}) is no better than a constant predictor's ({baseline:.4g}): the model learned nothing")
    classification = kind == "classification"
    result = MonotonicityResult(
        source=source, metric=metric, kind=kind, n=n, depths=depths,
        curve=reported.tolist(), ci_low=np.asarray(r_lo).tolist(), ci_high=np.asarray(r_hi).tolist(), error_curve=mean.tolist(),
        steps=steps, tolerance=tolerance * descent, tolerance_rel=tolerance, descent=descent, alpha=alpha,
        monotone=not no_descent and not any(st.significant for st in steps),
        monotone_strict=not no_descent and not any(st.significant_strict for st in steps),
        kendall_tau=float(tau.statistic), kendall_p=float(tau.pvalue), sen_slope=float(slope.slope),
        isotonic_rmse=iso_rmse, isotonic_rel=iso_rmse / descent if descent > 0 else 0.0,
        sample_monotone_share=s.monotone_samples / n, first_within=s.first_within.tolist(),
        mean_first_within=float(np.dot(s.first_within, depths) / n), deploy_depth=depths[_deploy_index(mean, metric, within)],
        within=within,
        overthinking_share=s.overthinking / n if classification else None,
        wasteful_share=s.wasteful / n if classification else None,
        first_correct=s.first_correct[:D].tolist() if classification else None,
        bootstrap=bootstrap, seed=seed, notes=notes, baseline=baseline, no_descent=no_descent, never_learned=never,
    )
    result.error_blocks = (s.block_sums, s.block_counts, weights)  # not a field: the trajectory reuses them (paired bands)
    return result


def _bootstrap(s: ErrorSums, mean: np.ndarray, d_mean: np.ndarray, alpha: float, bootstrap: int, seed: int):
    """Paired bootstrap over blocks (the same resampled blocks for every depth): the curve's and the
    steps' intervals, and the replicates' block weights (the trajectory's bands reuse them)."""
    if not bootstrap:
        return mean, mean, d_mean, d_mean, None
    rng = np.random.default_rng(seed)
    weights = replicate_weights(rng, bootstrap, len(s.block_counts))  # weights[b, j]: how often replicate b drew block j
    counts = s.block_counts.astype(np.float64)
    boot = (weights @ s.block_sums) / np.maximum(weights @ counts, 1.0)[:, None]  # (B, D) resampled means
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2], axis=0)
    s_lo, s_hi = np.quantile(np.diff(boot, axis=1), [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi, s_lo, s_hi, weights


def _steps(depths: list[int], d_mean, d_var, s_lo, s_hi, n: int, tol_abs: float, alpha: float) -> list[Step]:
    """Each step's one-sided paired t-tests (beyond the tolerance, and strict), Holm-corrected."""
    D = len(depths)
    tests = [_t_test_greater(d_mean[j], d_var[j], n, tol_abs) for j in range(D - 1)]
    strict = [_t_test_greater(d_mean[j], d_var[j], n, 0.0) for j in range(D - 1)]
    p_holm = holm([p for _, p in tests])
    p_holm_strict = holm([p for _, p in strict])
    return [Step(depths[j], depths[j + 1], float(d_mean[j]), float(s_lo[j]), float(s_hi[j]), float(tests[j][0]),
                 float(tests[j][1]), float(p_holm[j]), p_holm[j] < alpha, p_holm_strict[j] < alpha) for j in range(D - 1)]


def _deploy_index(mean: np.ndarray, metric: str, within: float) -> int:
    """The shallowest depth within ``within`` of the final error (of the final accuracy, for acc)."""
    final = mean[-1]
    if metric == "acc":
        target = (1 - final) * (1 - within)
        return next(k for k in range(len(mean)) if 1 - mean[k] >= target - 1e-12)
    return next(k for k in range(len(mean)) if mean[k] <= final * (1 + within) + 1e-12 * max(1.0, abs(final)))


def from_arrays(errors: np.ndarray, depths: Sequence[int] | None = None, kind: str = "regression", correct: np.ndarray | None = None, chunk_rows: int = 65536, **kwargs: Any) -> MonotonicityResult:
    """Run `assess_monotonicity` on in-memory per-sample errors ``(n, D)``."""
    errors = np.asarray(errors)
    if errors.ndim != 2:
        raise UsageError(f"errors must be (n_samples, n_depths), got shape {errors.shape}")
    depths = list(range(errors.shape[1])) if depths is None else list(depths)

    def chunks():
        for s in range(0, errors.shape[0], chunk_rows):
            yield errors[s : s + chunk_rows], None if correct is None else correct[s : s + chunk_rows]

    return assess_monotonicity(chunks, errors.shape[0], depths, kind, **kwargs)


def from_trace(trace, metric: str | None = None, depths: str | None = None, chunk_rows: int = 65536, lens=None, **kwargs: Any) -> MonotonicityResult:
    """Run `assess_monotonicity` on an open `analyzers.trace.Trace`, reading it in row chunks.

    ``lens`` (an `analyzers.probes.Lens`) replaces the trace's own per-depth errors with those of
    the lens applied to the stored states.
    """
    from lpa_core.depths import select_recorded

    metric = check_metric(metric, trace.kind)
    base, _ = METRIC_BASE[metric]
    positions = select_recorded(depths, trace.depths, trace.n_blocks + 1)
    chosen = [trace.depths[p] for p in positions]
    if len(chosen) < 2:
        raise UsageError(f"depth selection {depths!r} leaves fewer than two depths")
    classification = trace.kind == "classification"
    cols = slice(None) if positions == list(range(len(trace.depths))) else positions  # a slice avoids a copy
    if lens is not None:
        lens.check_eval(trace)
        if not trace.has("states"):
            raise UsageError(f"{trace.path}: reading depths through a lens needs block states; trace it with --states")

    def chunks():
        for start in range(0, trace.n, chunk_rows):
            rows = slice(start, min(trace.n, start + chunk_rows))
            if lens is not None:
                errs = lens.errors(trace, rows, positions)
            else:
                errs = {}
                if base == "se":
                    errs["se"] = trace.read("errors/se", rows)[:, cols]
                if base == "ce":
                    errs["ce"] = trace.read("errors/ce", rows)[:, cols]
                if base == "err" or classification:
                    errs["correct"] = trace.read("errors/correct", rows)[:, cols]
            e = 1.0 - errs["correct"] if base == "err" else errs[base]
            yield e, errs.get("correct") if classification else None

    baseline = constant_baseline(trace, base) if lens is None else None
    result = assess_monotonicity(chunks, trace.n, chosen, trace.kind, metric, source=str(trace.path), baseline=baseline, **kwargs)
    reuse = result.error_blocks if isinstance(cols, slice) and lens is None else None  # every traced depth: the same blocks
    result.trajectory = trajectory_from_trace(trace, lens, error=base, errors=reuse, bootstrap=result.bootstrap, alpha=result.alpha,
                                              seed=result.seed).select(positions)
    return result
