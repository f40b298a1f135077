"""LPA vs E2E (or any groups of runs), diffed: the numbers behind `lpa compare` and its report.

Inputs are per-run arrays read from traces (per-sample errors on the same test set), plus per-depth
costs measured on the torch side. Groups hold seeds: their curves are averaged across seeds, and
group differences are paired over the shared test samples.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from analyzers.monotonicity import METRIC_BASE, MonotonicityResult, finite


@dataclass
class Run:
    """One input (a seed of a group), as read from its trace."""

    group: str
    path: str
    config: dict[str, Any]
    depths: list[int]
    errors: np.ndarray  # (n, D) per-sample error the metric is based on
    monotonicity: MonotonicityResult
    correct: np.ndarray | None = None  # (n, D) or (n, D, T) for LMs: per-sample/token correctness
    max_prob: np.ndarray | None = None  # same shape as correct
    entropy: np.ndarray | None = None
    argmax: np.ndarray | None = None  # (n, D) classification predictions (for the patience rule)
    predictions: np.ndarray | None = None  # (n, D, out) regression predictions (for heatmaps)
    targets: np.ndarray | None = None  # (n, out) regression targets (for heatmaps)
    flops: list[float] | None = None  # per depth, per sample
    latency_ms: list[float] | None = None  # per depth, per sample
    log: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CompareResult:
    metric: str
    kind: str
    groups: dict[str, list[str]]  # group -> run paths
    diff: list[dict[str, Any]]  # config keys that differ: {"key", "values": {group: [values]}}
    shared: dict[str, Any]
    curves: dict[str, dict[str, Any]]  # group -> {"depths", "mean", "low", "high", "seeds"}
    gaps: list[dict[str, Any]]  # vs the first group, per common depth
    final: list[dict[str, Any]]  # the final-depth comparisons, stated plainly
    runs: list[dict[str, Any]]  # per run: path, group, monotonicity verdict and curve
    cost: dict[str, dict[str, Any]]  # group -> {"flops", "latency_ms", "error", "pareto"}
    early_exit: dict[str, dict[str, Any]]  # group -> rule -> sweep
    heatmaps: dict[str, Any] | None
    training: dict[str, list[dict[str, Any]]]  # run path -> log records
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return finite(asdict(self))


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_diff(runs: list[Run]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Keys whose values differ between groups (seeds within a group may differ in train.seed only)."""
    flat = [(r.group, flatten(r.config)) for r in runs]
    keys = sorted(set().union(*(f.keys() for _, f in flat)))
    diff, shared = [], {}
    for key in keys:
        values = {}
        for group, f in flat:
            values.setdefault(group, [])
            v = f.get(key, "—")
            if v not in values[group]:
                values[group].append(v)
        distinct = {repr(v) for vs in values.values() for v in vs}
        if len(distinct) == 1:
            shared[key] = next(iter(values.values()))[0]
        else:
            diff.append({"key": key, "values": values})
    return diff, shared


def _t_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean and t-interval of a 1-D sample (NaN bounds for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    m = float(values.mean())
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(1 - alpha / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return m, m - half, m + half


def group_curves(runs: list[Run], groups: dict[str, list[Run]], alpha: float) -> dict[str, dict[str, Any]]:
    out = {}
    for g, members in groups.items():
        curves = np.array([r.monotonicity.curve for r in members])  # (seeds, D)
        if len(members) >= 2:
            rows = [_t_interval(curves[:, j], alpha) for j in range(curves.shape[1])]
            mean, low, high = ([r[i] for r in rows] for i in range(3))
            band = "t-interval across seeds"
        else:
            r = members[0].monotonicity
            mean, low, high, band = r.curve, r.ci_low, r.ci_high, "bootstrap over test samples (one seed)"
        out[g] = {"depths": members[0].depths, "mean": list(mean), "low": list(low), "high": list(high),
                  "seeds": len(members), "band": band, "per_seed": curves.tolist()}
    return out


def _welch(a: np.ndarray, b: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Difference of means b - a with a Welch t-interval (unpaired samples)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1.0
    m = float(b.mean() - a.mean())
    half = float(stats.t.ppf(1 - alpha / 2, df) * se)
    return m, m - half, m + half


def paired_gaps(groups: dict[str, list[Run]], metric: str, alpha: float, paired: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per common depth, group minus the first group on seed-averaged per-sample errors.

    Paired over the shared test samples; unpaired (Welch) when the runs saw different data.
    """
    names = list(groups)
    base = names[0]
    _, transform = METRIC_BASE[metric]
    avg = {g: np.mean([r.errors for r in members], axis=0) if paired else np.concatenate([r.errors for r in members])
           for g, members in groups.items()}  # (n, D)
    depths = {g: members[0].depths for g, members in groups.items()}
    gaps, finals = [], []
    for g in names[1:]:
        common = sorted(set(depths[g]) & set(depths[base]))
        for k in common:
            a_k, b_k = avg[base][:, depths[base].index(k)], avg[g][:, depths[g].index(k)]
            m, lo, hi = _t_interval(b_k - a_k, alpha) if paired else _welch(a_k, b_k, alpha)
            gaps.append({"group": g, "vs": base, "depth": k, "gap": m, "low": lo, "high": hi})
        a, b = avg[base][:, -1], avg[g][:, -1]
        test = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
        test_name = (f"paired t-test over {len(a)} shared test samples (per-sample errors averaged over seeds)" if paired
                     else f"Welch's t-test ({len(a)} vs {len(b)} samples; the runs saw different data)")
        fa, fb = float(transform(np.array([a.mean()]))[0]), float(transform(np.array([b.mean()]))[0])
        ratio = float(a.mean() / b.mean()) if b.mean() else float("inf")
        if test.pvalue < alpha:
            verdict = f"{base} is {'worse' if a.mean() > b.mean() else 'better'} than {g} at the final depth"
        else:
            verdict = f"no significant difference between {base} and {g} at the final depth"
        finals.append({
            "group": base, "vs": g, "depth": depths[base][-1], "vs_depth": depths[g][-1], "metric": metric,
            "value": fa, "vs_value": fb, "error_ratio": ratio, "p": float(test.pvalue), "t": float(test.statistic),
            "test": test_name,
            "statement": f"{verdict}: {metric} {fa:.4g} vs {fb:.4g} (error ratio {ratio:.3g}, p = {test.pvalue:.3g})",
        })
    return gaps, finals


def pareto(cost: list[float], error: list[float]) -> list[int]:
    """Indices of the points no other point beats on both cost and error (lower is better)."""
    front = []
    for i, (c, e) in enumerate(zip(cost, error)):
        if not any((c2 <= c and e2 <= e) and (c2 < c or e2 < e) for c2, e2 in zip(cost, error)):
            front.append(i)
    return front


def early_exit(run: Run, thresholds: int = 21) -> dict[str, Any]:
    """Accuracy (mean correctness) vs average exit depth when each sample (or token) exits at the first
    depth whose confidence passes a threshold; the last depth otherwise."""
    if run.correct is None or run.max_prob is None:
        return {}
    correct = np.moveaxis(run.correct, 1, -1).reshape(-1, run.correct.shape[1])  # (samples[*tokens], D)
    prob = np.moveaxis(run.max_prob, 1, -1).reshape(correct.shape)
    ent = np.moveaxis(run.entropy, 1, -1).reshape(correct.shape)
    D = correct.shape[1]
    depths = np.asarray(run.depths)
    cum = np.asarray(run.flops) if run.flops else None

    def sweep(fire: np.ndarray) -> tuple[float, float, float | None]:
        fire = fire.copy()
        fire[:, -1] = True
        exit_at = fire.argmax(axis=1)
        acc = float(correct[np.arange(len(exit_at)), exit_at].mean())
        return acc, float(depths[exit_at].mean()), float(cum[exit_at].mean()) if cum is not None else None

    out: dict[str, Any] = {}
    for rule, values, passes in (
        ("max_prob", np.linspace(0.0, 1.0, thresholds), lambda t: prob >= t),
        ("entropy", np.linspace(0.0, float(ent.max()) + 1e-9, thresholds), lambda t: ent <= t),
    ):
        points = [sweep(passes(t)) for t in values]
        out[rule] = {"threshold": values.tolist(), "accuracy": [p[0] for p in points], "depth": [p[1] for p in points], "flops": [p[2] for p in points]}
    if run.argmax is not None and D > 1:
        same = np.zeros_like(run.argmax, dtype=np.int64)  # consecutive depths with an unchanged prediction
        for k in range(1, D):
            same[:, k] = np.where(run.argmax[:, k] == run.argmax[:, k - 1], same[:, k - 1] + 1, 0)
        points = [sweep(same >= p) for p in range(1, D)]
        out["patience"] = {"threshold": list(range(1, D)), "accuracy": [p[0] for p in points], "depth": [p[1] for p in points], "flops": [p[2] for p in points]}
    return out


def compare(groups: dict[str, list[Run]], metric: str, kind: str, alpha: float = 0.05, grid: list[int] | None = None,
            paired: bool = True) -> CompareResult:
    runs = [r for members in groups.values() for r in members]
    if len({r.errors.shape[0] for r in runs}) > 1:
        paired = False
    diff, shared = config_diff(runs)
    curves = group_curves(runs, groups, alpha)
    gaps, finals = paired_gaps(groups, metric, alpha, paired)
    cost = {}
    for g, members in groups.items():
        flops = members[0].flops
        lat = np.mean([r.latency_ms for r in members if r.latency_ms], axis=0).tolist() if any(r.latency_ms for r in members) else None
        err = curves[g]["mean"]
        entry: dict[str, Any] = {"depths": curves[g]["depths"], "error": err, "flops": flops, "latency_ms": lat}
        if flops:
            entry["pareto"] = [curves[g]["depths"][i] for i in pareto(flops, err if metric != "acc" else [-v for v in err])]
        cost[g] = entry
    exits = {}
    if kind in ("classification", "lm"):
        for g, members in groups.items():
            sweeps = [early_exit(r) for r in members]
            if sweeps and sweeps[0]:
                exits[g] = {rule: {key: (np.mean([s[rule][key] for s in sweeps], axis=0).tolist() if None not in sweeps[0][rule][key] else sweeps[0][rule][key])
                                   for key in sweeps[0][rule]} for rule in sweeps[0]}
    heatmaps = None
    if grid and kind == "regression" and all(m[0].predictions is not None for m in groups.values()):
        side_y, side_x = grid
        target = groups[next(iter(groups))][0].targets
        heatmaps = {"grid": grid, "target": target[:, 0].reshape(side_y, side_x).tolist() if target is not None else None, "groups": {g: [m[0].predictions[:, j, 0].reshape(side_y, side_x).tolist() for j in range(len(m[0].depths))]
                                             for g, m in groups.items()}, "depths": {g: m[0].depths for g, m in groups.items()}}
    per_run = [{"group": r.group, "path": r.path, "verdict": r.monotonicity.verdict, "monotone": r.monotonicity.monotone,
                "monotone_strict": r.monotonicity.monotone_strict, "curve": r.monotonicity.curve, "deploy_depth": r.monotonicity.deploy_depth,
                "violations": [{"from": s.frm, "to": s.to, "delta": s.delta, "p_holm": s.p_holm} for s in r.monotonicity.violations]}
               for r in runs]
    training = {r.path: r.log for r in runs if r.log}
    return CompareResult(metric, kind, {g: [r.path for r in m] for g, m in groups.items()}, diff, shared, curves, gaps, finals,
                         per_run, cost, exits, heatmaps, training)
