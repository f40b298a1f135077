"""The monotonicity statistics, checked against independent references and synthetic truths."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sklearn.isotonic import IsotonicRegression

from lpa_core.errors import UsageError
from analyzers.monotonicity import from_arrays, holm
from tests.cli_helpers import assert_clean_error, assert_self_contained, run

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


def _curve(values, n=1500, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return np.asarray(values) + noise * rng.standard_normal((n, len(values)))


def test_means_steps_and_t_tests_match_scipy():
    e = _curve([1.0, 0.6, 0.65, 0.3, 0.29], noise=0.3)
    r = from_arrays(e, tolerance=0.05, bootstrap=500)
    np.testing.assert_allclose(r.curve, e.mean(axis=0), rtol=1e-12)
    d = np.diff(e, axis=1)
    for j, step in enumerate(r.steps):
        assert step.delta == pytest.approx(d[:, j].mean(), rel=1e-10)
        ref = stats.ttest_1samp(d[:, j], popmean=r.tolerance, alternative="greater")
        assert step.t == pytest.approx(ref.statistic, rel=1e-8)
        assert step.p == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-300)
    assert r.tolerance == pytest.approx(0.05 * (e.mean(0)[0] - e.mean(0).min()))


def test_bootstrap_cis_match_scipy_bootstrap():
    e = _curve([1.0, 0.5, 0.4], n=1000, noise=0.5, seed=1)
    r = from_arrays(e, bootstrap=4000, seed=3)
    for k in range(3):
        ref = stats.bootstrap((e[:, k],), np.mean, n_resamples=4000, method="percentile", random_state=np.random.default_rng(7))
        width = ref.confidence_interval.high - ref.confidence_interval.low
        assert abs(r.ci_low[k] - ref.confidence_interval.low) < 0.1 * width
        assert abs(r.ci_high[k] - ref.confidence_interval.high) < 0.1 * width
    # paired: the CI of a step is far narrower than the CIs of its two depths combined
    d = np.diff(e, axis=1)[:, 0]
    ref = stats.bootstrap((d,), np.mean, n_resamples=4000, method="percentile", random_state=np.random.default_rng(7))
    assert abs(r.steps[0].ci_low - ref.confidence_interval.low) < 0.1 * (ref.confidence_interval.high - ref.confidence_interval.low)


def test_block_bootstrap_above_max_blocks_matches_the_normal_interval():
    """Above MAX_BLOCKS samples, blocks are resampled; at n = 60,000 the percentile interval of the mean
    must agree with the textbook normal interval mean +- z * sd / sqrt(n) (an independent reference)."""
    from analyzers.bootstrap import MAX_BLOCKS

    n = 60_000
    assert n > 10 * MAX_BLOCKS
    e = _curve([1.0, 0.6, 0.5], n=n, noise=0.8, seed=4)
    r = from_arrays(e, bootstrap=2000, seed=1)
    z = stats.norm.ppf(0.975)
    for k in range(3):
        half = z * e[:, k].std(ddof=1) / np.sqrt(n)
        assert r.ci_low[k] == pytest.approx(e[:, k].mean() - half, abs=0.1 * half)
        assert r.ci_high[k] == pytest.approx(e[:, k].mean() + half, abs=0.1 * half)
    d = e[:, 1] - e[:, 0]
    half = z * d.std(ddof=1) / np.sqrt(n)
    assert r.steps[0].ci_low == pytest.approx(d.mean() - half, abs=0.1 * half)


@pytest.mark.parametrize("n", [4096, 60_000])
def test_intervals_on_an_ordered_test_set_match_the_normal_interval(n):
    """Test sets are often ordered (a surface's 64 x 64 grid, row by row), so neighbours have nearly
    equal errors. Resampling contiguous blocks of neighbours made intervals up to sqrt(2) too wide;
    the interval must match the textbook normal one within 10% whatever the order."""
    rng = np.random.default_rng(3)
    smooth = np.sort(rng.gamma(2.0, 1.0, size=n))  # errors that change slowly along the index
    e = np.stack([smooth * 2, smooth + 0.05 * rng.normal(size=n), smooth * 0.9], axis=1)
    r = from_arrays(e, bootstrap=2000, seed=1)
    z = stats.norm.ppf(0.975)
    for k in range(3):
        normal = 2 * z * e[:, k].std(ddof=1) / np.sqrt(n)
        assert (r.ci_high[k] - r.ci_low[k]) / normal == pytest.approx(1.0, abs=0.1), k


def test_bootstrap_is_seeded():
    e = _curve([1.0, 0.5, 0.4])
    assert from_arrays(e, seed=5).ci_low == from_arrays(e, seed=5).ci_low
    assert from_arrays(e, seed=5).ci_low != from_arrays(e, seed=6).ci_low


def test_holm_matches_textbook_definition():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.uniform(0, 0.2, size=rng.integers(1, 9))
        m = len(p)
        order = np.argsort(p)
        expected = np.empty(m)
        for i, idx in enumerate(order):
            expected[idx] = min(1.0, max((m - j) * p[order[j]] for j in range(i + 1)))
        np.testing.assert_allclose(holm(p), expected)


def test_trend_and_isotonic_match_references():
    e = _curve([1.0, 0.4, 0.5, 0.2, 0.25, 0.1], noise=0.1)
    r = from_arrays(e)
    means = e.mean(axis=0)
    depths = np.arange(6)
    assert r.kendall_tau == pytest.approx(stats.kendalltau(depths, means).statistic)
    assert r.sen_slope == pytest.approx(stats.theilslopes(means, depths).slope)
    iso = IsotonicRegression(increasing=False).fit_transform(depths, means)
    assert r.isotonic_rmse == pytest.approx(np.sqrt(np.mean((means - iso) ** 2)), rel=1e-9)


def test_decreasing_curves_pass():
    for seed in range(5):
        r = from_arrays(_curve([1.0, 0.5, 0.25, 0.12, 0.06, 0.05], seed=seed))
        assert r.monotone and r.monotone_strict and not r.violations


def test_one_real_rise_is_flagged_at_its_step_with_its_sign():
    r = from_arrays(_curve([1.0, 0.5, 0.6, 0.2, 0.1]))
    assert [s.significant for s in r.steps] == [False, True, False, False]
    assert r.steps[1].delta == pytest.approx(0.1, abs=0.01) and r.steps[1].delta > 0
    assert not r.monotone


def test_plateau_wiggle_is_tolerated_but_strict_verdict_sees_it():
    # a converged curve: 1e-1 down to 1e-5, then +1e-6 on the plateau (1e-5 of the descent)
    curve = [1e-1, 1e-2, 1e-3, 1e-4, 1.7e-5, 1.8e-5, 1.7e-5]
    r = from_arrays(_curve(curve, n=4000, noise=1e-7))
    assert r.monotone and not r.monotone_strict


def test_false_positive_rate_on_flat_noise_is_at_most_alpha():
    alpha, trials = 0.05, 300
    flagged = sum(not from_arrays(_curve([1.0] * 5, n=200, noise=1.0, seed=s), tolerance=0.0, bootstrap=0, alpha=alpha).monotone for s in range(trials))
    rate = flagged / trials
    assert rate <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / trials), rate


def test_per_sample_summaries():
    n = 100
    e = np.tile([1.0, 0.5, 0.2, 0.2], (n, 1))
    e[:10] = [1.0, 0.2, 0.6, 0.2]  # 10 samples rise in the middle
    r = from_arrays(e, bootstrap=0)
    assert r.sample_monotone_share == pytest.approx(0.9)
    assert r.first_within == [0, 10, 90, 0]
    assert r.deploy_depth == 3  # depth 2 averages 0.24: 20% above the final 0.2
    assert from_arrays(e, bootstrap=0, within=0.25).deploy_depth == 2
    correct = np.tile([0, 1, 1, 1], (n, 1)).astype(np.float32)
    correct[:20, 3] = 0  # right early, wrong at N: destructive overthinking
    c = from_arrays(1 - correct, kind="classification", correct=correct, metric="err", bootstrap=0)
    assert c.overthinking_share == pytest.approx(0.2) and c.wasteful_share == pytest.approx(0.8)
    assert c.first_correct == [0, 100, 0, 0]


def test_bad_arguments():
    e = _curve([1.0, 0.5])
    with pytest.raises(UsageError):
        from_arrays(e[:, :1])
    with pytest.raises(UsageError):
        from_arrays(e, alpha=1.5)
    with pytest.raises(UsageError):
        from_arrays(e, metric="r2")
    bad = e.copy()
    bad[3, 1] = np.nan
    with pytest.raises(UsageError, match="NaN"):
        from_arrays(bad)


# --- the command -------------------------------------------------------------------------------


def test_sample_checkpoints_reproduce_the_papers_contrast():
    lpa = run("monotonicity", SAMPLES / "mlp-stripe-lpa.safetensors", "--quiet")
    e2e = run("monotonicity", SAMPLES / "mlp-stripe-e2e.safetensors", "--quiet")
    assert lpa.exit_code == 0 and e2e.exit_code == 1
    assert run("monotonicity", SAMPLES / "mlp-stripe-e2e.safetensors", "--quiet", "--exit-zero").exit_code == 0


def test_json_many_inputs_and_report(tmp_path):
    report = tmp_path / "m.html"
    result = run("monotonicity", SAMPLES / "mlp-stripe-lpa.safetensors", SAMPLES / "resnet-digits-lpa.safetensors",
                 "--json", "--report-path", report, "--bootstrap", "200")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["metric"] for r in data["results"]] == ["mse", "err"]
    assert all(r["verdict"] == "monotone" for r in data["results"])
    assert len(data["results"][0]["curve"]) == 9 and len(data["results"][0]["steps"]) == 8
    assert_self_contained(report.read_text())
    table = run("monotonicity", SAMPLES / "mlp-stripe-lpa.safetensors", SAMPLES / "mlp-stripe-e2e.safetensors")
    assert table.exit_code == 1 and "not monotone" in table.stdout and table.stdout.count("monotone") >= 2


def test_report_flag_writes_next_to_the_input(tmp_path):
    trace = tmp_path / "t.h5"
    assert run("trace", SAMPLES / "vit-digits-lpa.safetensors", "-o", trace, "--quiet").exit_code == 0
    result = run("monotonicity", trace, "--report", "--metric", "ce")
    assert result.exit_code in (0, 1) and (tmp_path / "t.monotonicity.html").exists()


def test_bad_inputs_exit_2(tmp_path):
    trace = tmp_path / "t.h5"
    run("trace", SAMPLES / "mlp-stripe-lpa.safetensors", "-o", trace, "--quiet", "--limit", "100")
    assert_clean_error(run("monotonicity", trace, "--depths", "3"), "fewer than two")
    assert_clean_error(run("monotonicity", trace, "--depths", "20"), "outside")
    assert_clean_error(run("monotonicity", trace, "--metric", "acc"), "does not apply")
    assert_clean_error(run("monotonicity", trace, "--alpha", "2"), "--alpha")
    (tmp_path / "bad.h5").write_bytes(b"nope")
    assert_clean_error(run("monotonicity", tmp_path / "bad.h5"), "not an HDF5")
    part = tmp_path / "x.h5.partial"
    part.write_bytes(trace.read_bytes())
    assert_clean_error(run("monotonicity", part), "incomplete")
    assert_clean_error(run("monotonicity", tmp_path / "missing.safetensors"), "no such file")


def test_depths_that_never_left_chance_are_named():
    """Issue 33: a model that learned, whose shallow depths stayed at the constant predictor's error,
    says which depths (a note, not a verdict: still monotone)."""
    import numpy as np

    from analyzers.monotonicity import from_arrays
    from lpa_core.depths import spans

    assert spans([0, 1, 2, 3]) == "depths 0-3" and spans([4]) == "depth 4" and spans([0, 1, 3, 5, 6]) == "depths 0-1, 3 and 5-6"
    rng = np.random.default_rng(0)
    n = 400
    base = rng.uniform(0.9, 1.1, size=n)
    errors = np.stack([base, base, base * 0.5, base * 0.2], axis=1)  # depths 0-1 at the baseline's 1.0
    result = from_arrays(errors, kind="regression", metric="mse", baseline=1.0, bootstrap=200)
    assert result.never_learned == [0, 1] and not result.no_descent and result.monotone
    assert any("depths 0-1 never left chance" in note for note in result.notes)
