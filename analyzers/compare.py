"""LPA vs E2E (or any groups of runs), diffed: the numbers behind `lpa compare` and its report.

Inputs are per-run arrays read from traces (per-sample errors on the same test set), plus per-depth
costs measured on the torch side. Groups hold seeds: their curves are averaged across seeds, and
group differences are paired over the shared test samples.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from analyzers.bootstrap import add_block_sums, n_blocks, replicate_weights
from analyzers.metrics import error_ratio, format_p
from lpa_core.depths import spans
from analyzers.monotonicity import METRIC_BASE
from analyzers.trajectory_summary import pool_seeds
from analyzers.compare_types import CompareResult, Cost, Difference, ExitSweep, FinalComparison, Gap, GroupCurve, Heatmaps, Run, RunVerdict, Violation


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_diff(runs: list[Run]) -> tuple[list[Difference], dict[str, Any]]:
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
            diff.append(Difference(key, values))
    return diff, shared


def _t_interval(values: np.ndarray, alpha: float = 0.05) -> tuple[float, float, float]:
    """Mean and t-interval of a 1-D sample (NaN bounds for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    m = float(values.mean())
    if len(values) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(1 - alpha / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))
    return m, m - half, m + half


def seed_sample_band(members: list[Run], metric: str, alpha: float, replicates: int = 1000, seed: int = 0, paired: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per depth of the group mean, by a bootstrap over seeds and test samples.

    Each replicate draws the seeds with replacement and the test samples with replacement (the same
    samples for every seed when they share a test set), and takes the group's mean curve of the
    reported metric. Percentiles of resampled means of errors stay where errors live: a positive
    error never gets a negative bound, as a t-interval across two seeds does.
    """
    _, transform = METRIC_BASE[metric]
    rng = np.random.default_rng(seed)
    S = len(members)
    picks = rng.integers(0, S, size=(replicates, S))  # seeds drawn by each replicate
    means = np.empty((replicates, S, members[0].errors.shape[1]))
    shared = None
    for s, run in enumerate(members):
        n = run.errors.shape[0]
        blocks = n_blocks(n)
        sums, counts = np.zeros((blocks, run.errors.shape[1])), np.zeros(blocks, dtype=np.int64)
        add_block_sums(sums, counts, np.ascontiguousarray(run.errors.T, dtype=np.float64), 0, n, seed)
        if paired and shared is not None and shared.shape[1] == blocks:
            weights = shared
        else:
            weights = replicate_weights(rng, replicates, blocks)
            shared = weights
        means[:, s] = (weights @ sums) / np.maximum(weights @ counts, 1.0)[:, None]
    reported = transform(means)  # (B, S, D): each seed's reported metric
    group = np.take_along_axis(reported, picks[:, :, None], axis=1).mean(axis=1)  # (B, D)
    low, high = np.quantile(group, [alpha / 2, 1 - alpha / 2], axis=0)
    if metric == "acc":
        low, high = np.minimum(low, high), np.maximum(low, high)
    return low, high


def group_curves(groups: dict[str, list[Run]], metric: str, alpha: float, paired: bool = True, seed: int = 0) -> dict[str, GroupCurve]:
    out = {}
    for g, members in groups.items():
        curves = np.array([r.monotonicity.curve for r in members])  # (seeds, D)
        if len(members) >= 2:
            low, high = seed_sample_band(members, metric, alpha, seed=seed, paired=paired)
            band = "95% bootstrap over seeds and test samples"
            mean = curves.mean(axis=0)
        else:
            r = members[0].monotonicity
            mean, low, high, band = np.asarray(r.curve), np.asarray(r.ci_low), np.asarray(r.ci_high), "95% bootstrap over test samples (one seed)"
        out[g] = GroupCurve(list(members[0].depths), [float(v) for v in mean], [float(v) for v in low], [float(v) for v in high],
                            len(members), band, curves.tolist())
    return out


def _welch(a: np.ndarray, b: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """Difference of means b - a with a Welch t-interval (unpaired samples)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se > 0 else 1.0
    m = float(b.mean() - a.mean())
    half = float(stats.t.ppf(1 - alpha / 2, df) * se)
    return m, m - half, m + half


def paired_gaps(groups: dict[str, list[Run]], metric: str, alpha: float, paired: bool = True) -> tuple[list[Gap], list[FinalComparison]]:
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
            gaps.append(Gap(g, base, k, m, lo, hi))
        a, b = avg[base][:, -1], avg[g][:, -1]
        test = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
        test_name = (f"paired t-test over {len(a)} shared test samples (per-sample errors averaged over seeds)" if paired
                     else f"Welch's t-test ({len(a)} vs {len(b)} samples; the runs saw different data)")
        fa, fb = float(transform(np.array([a.mean()]))[0]), float(transform(np.array([b.mean()]))[0])
        ratio = error_ratio(float(a.mean()), float(b.mean()))
        if not (a.any() or b.any()):  # no error anywhere: the test has no variance to work with
            verdict, detail = f"{base} and {g} are both perfect at the final depth", "zero error on every test sample"
        else:
            if test.pvalue < alpha:
                verdict = f"{base} is {'worse' if a.mean() > b.mean() else 'better'} than {g} at the final depth"
            else:
                verdict = f"no significant difference between {base} and {g} at the final depth"
            detail = f"error ratio {ratio:.3g}, {format_p(float(test.pvalue))}"
        finals.append(FinalComparison(
            base, g, depths[base][-1], depths[g][-1], metric, fa, fb, ratio, float(test.pvalue), float(test.statistic), test_name,
            f"{verdict}: {metric} {fa:.4g} vs {fb:.4g} ({detail})",
        ))
    return gaps, finals


def pareto(cost: list[float], error: list[float]) -> list[int]:
    """Indices of the points no other point beats on both cost and error (lower is better)."""
    front = []
    for i, (c, e) in enumerate(zip(cost, error)):
        if not any((c2 <= c and e2 <= e) and (c2 < c or e2 < e) for c2, e2 in zip(cost, error)):
            front.append(i)
    return front


def early_exit(run: Run, thresholds: int = 21) -> dict[str, ExitSweep]:
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
        out[rule] = ExitSweep(values.tolist(), [p[0] for p in points], [p[1] for p in points], None if cum is None else [p[2] for p in points])
    if run.argmax is not None and D > 1:
        same = np.zeros_like(run.argmax, dtype=np.int64)  # consecutive depths with an unchanged prediction
        for k in range(1, D):
            same[:, k] = np.where(run.argmax[:, k] == run.argmax[:, k - 1], same[:, k - 1] + 1, 0)
        points = [sweep(same >= p) for p in range(1, D)]
        out["patience"] = ExitSweep([float(p) for p in range(1, D)], [p[0] for p in points], [p[1] for p in points],
                                    None if cum is None else [p[2] for p in points])
    return out


def _mean_sweep(sweeps: list[ExitSweep]) -> ExitSweep:
    """Seeds' sweeps of one rule, averaged point by point (the thresholds are the same)."""
    avg = lambda key: np.mean([getattr(sw, key) for sw in sweeps], axis=0).tolist()  # noqa: E731
    return ExitSweep(sweeps[0].threshold, avg("accuracy"), avg("depth"), avg("flops") if all(sw.flops for sw in sweeps) else None)


def compare(groups: dict[str, list[Run]], metric: str, kind: str, alpha: float = 0.05, grid: list[int] | None = None,
            paired: bool = True, seed: int = 0) -> CompareResult:
    runs = [r for members in groups.values() for r in members]
    if len({r.errors.shape[0] for r in runs}) > 1:
        paired = False
    diff, shared = config_diff(runs)
    curves = group_curves(groups, metric, alpha, paired, seed)
    gaps, finals = paired_gaps(groups, metric, alpha, paired)
    never = [g for g, members in groups.items() if all(r.monotonicity.no_descent for r in members)]
    for f in finals:  # no winner is declared against a model that learned nothing
        dead = [g for g in (f.vs, f.group) if g in never]
        if dead:
            f.statement = (f"{' and '.join(dead)} never learned (no descent: its final depth is no better than a constant predictor), "
                           f"so no winner is declared: {metric} {f.vs_value:.4g} ({f.vs}) vs {f.value:.4g} ({f.group})")
    cost = {}
    for g, members in groups.items():
        flops = members[0].flops
        lat = np.mean([r.latency_ms for r in members if r.latency_ms], axis=0).tolist() if any(r.latency_ms for r in members) else None
        err = curves[g].mean
        entry = Cost(curves[g].depths, err, flops, lat)
        if flops:
            entry.pareto = [curves[g].depths[i] for i in pareto(flops, err if metric != "acc" else [-v for v in err])]
        cost[g] = entry
    exits: dict[str, dict[str, ExitSweep]] = {}
    if kind in ("classification", "lm"):
        for g, members in groups.items():
            sweeps = [early_exit(r) for r in members]
            if sweeps and sweeps[0]:
                exits[g] = {rule: _mean_sweep([sw[rule] for sw in sweeps]) for rule in sweeps[0]}
    heatmaps = None
    cells = int(np.prod(grid)) if grid else 0
    if grid and paired and kind == "regression" and all(m[0].predictions is not None and m[0].predictions.shape[0] == cells for m in groups.values()):
        side_y, side_x = grid
        target = groups[next(iter(groups))][0].targets
        heatmaps = Heatmaps(list(grid), target[:, 0].reshape(side_y, side_x).tolist() if target is not None else None,
                            {g: [m[0].predictions[:, j, 0].reshape(side_y, side_x).tolist() for j in range(len(m[0].depths))] for g, m in groups.items()},
                            {g: list(m[0].depths) for g, m in groups.items()})
    per_run = [RunVerdict(r.group, r.path, r.monotonicity.verdict, r.monotonicity.monotone, r.monotonicity.monotone_strict, r.monotonicity.curve,
                          r.monotonicity.deploy_depth, [Violation(s.frm, s.to, s.delta, s.p_holm) for s in r.monotonicity.violations])
               for r in runs]
    first_correct = {}
    if kind == "classification":
        for g, members in groups.items():
            counts = [r.monotonicity.first_correct for r in members if r.monotonicity.first_correct is not None]
            if counts:
                total = np.mean([np.asarray(c) / members[0].monotonicity.n for c in counts], axis=0)
                first_correct[g] = total.tolist()
    training = {r.path: r.log for r in runs if r.log}
    result = CompareResult(metric, kind, {g: [r.path for r in m] for g, m in groups.items()}, diff, shared, curves, gaps, finals,
                           per_run, cost, exits, heatmaps, training, first_correct, never_learned=never,
                           trajectory={g: pool_seeds([r.monotonicity.trajectory for r in m]) for g, m in groups.items()
                                       if all(r.monotonicity.trajectory is not None for r in m)})
    result.notes.extend(f"{r.path}: {spans(r.monotonicity.never_learned)} never left chance (no better than a constant predictor)"
                        for r in runs if r.monotonicity.never_learned and not r.monotonicity.no_descent)
    return result
