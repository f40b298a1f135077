"""The per-depth trajectory measures (`analyzers.trajectory`, toward issue 42) against independent
references: KL against scipy's, calibration error against a direct loop over bins, prediction depth
against a brute-force loop, and all three on a real trace of the digits sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy

from analyzers.trajectory import calibration_error, kl_to_final, prediction_depth


def test_kl_to_the_final_depth_is_scipys():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20, 5, 7)) * 3
    kl = kl_to_final(logits)
    p = softmax(logits, axis=-1)
    expected = np.array([[entropy(p[i, -1], p[i, k]) for k in range(5)] for i in range(20)])  # scipy: KL(pk || qk)
    np.testing.assert_allclose(kl, expected, rtol=1e-9, atol=1e-12)
    assert np.all(kl[:, -1] == 0) and np.all(kl >= 0)


def test_calibration_error_is_the_direct_binned_gap():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.1, 1.0, size=(500, 3))
    conf[:7, 0] = 1.0  # the top edge belongs to the last bin
    right = (rng.uniform(size=(500, 3)) < conf ** 2).astype(float)
    ece = calibration_error(conf, right, bins=10)
    for d in range(3):
        total = 0.0
        for b in range(10):
            lo, hi = b / 10, (b + 1) / 10
            member = (conf[:, d] >= lo) & ((conf[:, d] < hi) if b < 9 else (conf[:, d] <= hi))
            if member.any():
                total += member.mean() * abs(right[member, d].mean() - conf[member, d].mean())
        assert ece[d] == pytest.approx(total, abs=1e-12)
    perfect = calibration_error(np.full((4, 1), 1.0), np.ones((4, 1)))
    assert perfect[0] == 0


def test_prediction_depth_is_the_brute_force_loop():
    rng = np.random.default_rng(2)
    pred = rng.integers(0, 3, size=(300, 6))
    expected = []
    for row in pred:
        expected.append(next(k for k in range(6) if all(row[j] == row[-1] for j in range(k, 6))))
    np.testing.assert_array_equal(prediction_depth(pred), expected)
    assert prediction_depth(np.array([[1, 2, 1, 1]]))[0] == 2 and prediction_depth(np.array([[1, 1, 1]]))[0] == 0


def test_the_measures_on_a_real_trace(tmp_path):
    """The digits LPA sample: its shallow depths already agree with its last (the point of LPA), so KL to the
    final depth falls to 0 and most samples settle early; calibration is a fraction."""
    from analyzers.trace import open_trace
    from tests.cli_helpers import run_json

    trace = tmp_path / "d.h5"
    run_json("trace", Path(__file__).resolve().parents[1] / "sample_checkpoints" / "resnet-digits-lpa.safetensors", "--limit", "200",
             "-o", trace)
    with open_trace(trace) as t:
        logits, conf, right = t.read("predictions"), t.read("confidence/max_prob"), t.read("errors/correct")
    kl = kl_to_final(logits).mean(axis=0)
    assert kl[-1] == 0 and kl[0] > kl[-2]
    assert np.all((calibration_error(conf, right) >= 0) & (calibration_error(conf, right) < 0.5))
    depths = prediction_depth(logits.argmax(-1))
    assert depths.min() >= 0 and depths.max() <= logits.shape[1] - 1 and np.median(depths) <= 3
