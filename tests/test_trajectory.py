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


# -- the measures the tracer streams (lpa_cli.serving.trajectory) against the numpy twin ----------


def _twin(kind: str, pred, prev, final, target):
    import torch

    from analyzers.trajectory import depth_measures as np_measures
    from lpa_cli.serving.trajectory import depth_measures

    t = depth_measures(torch.as_tensor(pred), None if prev is None else torch.as_tensor(prev), None if final is None else torch.log_softmax(
        torch.as_tensor(final), -1), torch.as_tensor(target), kind)
    n = np_measures(pred.astype(np.float64), None if prev is None else prev.astype(np.float64), final, target, kind)
    assert set(t) == set(n)
    return {k: v.numpy() for k, v in t.items()}, n


@pytest.mark.parametrize("kind", ["regression", "classification", "lm"])
def test_streamed_measures_equal_the_numpy_twin(kind):
    """The torch measures (no one-hot, logits centred by their mean) equal the numpy twin's explicit one-hot
    formulas; LM padding (target -100) counts nowhere."""
    rng = np.random.default_rng(3)
    shape = {"regression": (16, 3), "classification": (16, 7), "lm": (4, 6, 11)}[kind]
    pred, prev, final = (rng.normal(size=shape).astype(np.float32) * 2 for _ in range(3))
    if kind == "regression":
        target = rng.normal(size=shape).astype(np.float32)
    else:
        target = rng.integers(0, shape[-1], size=shape[:-1])
        if kind == "lm":
            target[:, -2:] = -100
    t, n = _twin(kind, pred, prev, None if kind == "regression" else final, target)
    for name in n:
        np.testing.assert_allclose(t[name], n[name], rtol=1e-4, atol=1e-5, err_msg=name)
    first, _ = _twin(kind, pred, None, None if kind == "regression" else final, target)
    assert np.isnan(first["alignment"]).all()
    if kind == "lm":
        assert (t["prediction_token"][:, -2:] == -1).all() and (t["kl_to_final_token"][:, -2:] == 0).all()


def test_alignment_on_cases_whose_answer_is_known():
    """A block that moves exactly along the residual target has cosine 1; against it, -1; a step orthogonal
    to it 0; a shift of every logit (which changes no probability) 0; a block that does not move 0."""
    import torch

    from lpa_cli.serving.trajectory import depth_measures

    y = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
    prev = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    residual = y - prev
    orth = torch.stack([-residual[:, 1], residual[:, 0]], dim=1)
    for step, cos in ((0.3 * residual, 1.0), (-2 * residual, -1.0), (orth, 0.0), (torch.zeros_like(y), 0.0)):
        np.testing.assert_allclose(depth_measures(prev + step, prev, None, y, "regression")["alignment"].numpy(), cos, atol=1e-6)
    z = torch.tensor([[0.2, -1.0, 0.5, 0.0]])
    target = torch.tensor([2])
    grad = torch.nn.functional.one_hot(target, 4).float() - z.softmax(-1)  # = -d CE / d z
    logp = torch.log_softmax(z, -1)
    for step, cos in ((0.7 * grad + 3.0, 1.0), (-grad, -1.0), (torch.full_like(z, 5.0), 0.0)):
        np.testing.assert_allclose(depth_measures(z + step, z, logp, target, "classification")["alignment"].numpy(), cos, atol=1e-6)


def _trace(tmp_path, sample: str, *args: str) -> Path:
    from tests.cli_helpers import run_json

    out = tmp_path / f"{sample}-{len(list(tmp_path.iterdir()))}.h5"
    run_json("trace", Path(__file__).resolve().parents[1] / "sample_checkpoints" / f"{sample}.safetensors", "-o", out, *args)
    return out


@pytest.mark.parametrize("sample,limit", [("resnet-digits-lpa", "64"), ("gpt-text-lpa", "6"), ("mlp-stripe-e2e", "200")])
def test_traced_measures_equal_the_twin_on_the_stored_predictions(tmp_path, monkeypatch, sample, limit):
    """Both tracing paths (all depths in one call; one depth at a time, as for big vocabularies) store what the
    numpy twin computes from the trace's own predictions, with KL to the final depth."""
    from analyzers.trace import open_trace
    from analyzers.trajectory import depth_measures as np_measures
    from lpa_cli.serving import trace as tracer

    paths = [_trace(tmp_path, sample, "--limit", limit)]
    monkeypatch.setattr(tracer, "VECTORISE_BYTES", 0)
    paths.append(_trace(tmp_path, sample, "--limit", limit))
    for path in paths:
        with open_trace(path) as t:
            assert t.version == 2 and t.has_trajectory
            preds, targets = t.read("predictions").astype(np.float64), t.read("targets")
            stored = {k.split("/")[1]: t.read(k) for k in t.datasets() if k.startswith("trajectory/")}
            final = None if t.kind == "regression" else preds[:, -1]
            for p in range(len(t.depths)):
                ref = np_measures(preds[:, p], preds[:, p - 1] if p else None, final, targets, t.kind)
                for name, values in ref.items():  # float32 sums over an 8,192-token vocabulary: cosines agree to 1e-4
                    np.testing.assert_allclose(stored[name][:, p], values, rtol=2e-4, atol=2e-4 if t.kind == "lm" else 2e-5,
                                               err_msg=f"{path.name} {name} depth {p}")


def test_kl_is_to_the_models_final_depth_when_fewer_depths_are_traced(tmp_path):
    from analyzers.trace import open_trace

    full, part = _trace(tmp_path, "vit-digits-e2e", "--limit", "50"), _trace(tmp_path, "vit-digits-e2e", "--limit", "50", "--depths", "0:4")
    with open_trace(full) as f, open_trace(part) as p:
        assert p.depths == [0, 1, 2, 3]
        np.testing.assert_allclose(p.read("trajectory/kl_to_final"), f.read("trajectory/kl_to_final")[:, :4], rtol=1e-5, atol=1e-6)
        assert f.read("trajectory/kl_to_final")[:, -1].max() == 0 and p.read("trajectory/kl_to_final")[:, -1].min() > 0


# -- the per-depth summary (analyzers.trajectory_summary) against direct computations --------------


def _summary(path, **kw):
    from analyzers.trace import open_trace
    from analyzers.trajectory_summary import from_trace

    with open_trace(path) as t:
        return from_trace(t, **kw)


def test_summary_equals_direct_computations_on_a_classification_trace(tmp_path):
    from analyzers.trace import open_trace

    path = _trace(tmp_path, "resnet-digits-e2e", "--limit", "300")
    r = _summary(path, bootstrap=200)
    with open_trace(path) as t:
        align, kl, ce = t.read("trajectory/alignment"), t.read("trajectory/kl_to_final"), t.read("errors/ce")
        conf, right, logits = t.read("confidence/max_prob"), t.read("errors/correct"), t.read("predictions")
    assert r.alignment[0] is None and r.removal[0] is None
    np.testing.assert_allclose(r.alignment[1:], align[:, 1:].mean(0), rtol=1e-6)
    np.testing.assert_allclose(r.kl_to_final, kl.mean(0), rtol=1e-6, atol=1e-9)
    m = ce.mean(0, dtype=np.float64)
    np.testing.assert_allclose(r.removal[1:], 1 - m[1:] / m[:-1], rtol=1e-9)
    np.testing.assert_allclose(r.calibration_error, calibration_error(conf, right), rtol=1e-6, atol=1e-9)
    assert r.prediction_depth == np.bincount(prediction_depth(logits.argmax(-1)), minlength=len(r.depths)).tolist()
    for value, (lo, hi) in zip(r.alignment[1:] + r.kl_to_final + r.calibration_error, r.alignment_band[1:] + r.kl_to_final_band + r.calibration_error_band):
        assert lo <= value + 1e-12 and value <= hi + 1e-12


def test_the_calibration_band_is_the_bootstrap_of_resampled_samples(tmp_path):
    """Each replicate's calibration error from resampled bin sums equals the calibration error of the samples
    that replicate drew (up to 2,000 samples, each sample is its own block)."""
    from analyzers.bootstrap import replicate_weights
    from analyzers.trace import open_trace

    path = _trace(tmp_path, "vit-digits-lpa", "--limit", "150")
    r = _summary(path, bootstrap=300, seed=5)
    with open_trace(path) as t:
        conf, right = t.read("confidence/max_prob"), t.read("errors/correct")
    w = replicate_weights(np.random.default_rng(5), 300, len(conf)).astype(int)
    brute = np.array([calibration_error(np.repeat(conf, row, axis=0), np.repeat(right, row, axis=0)) for row in w])
    np.testing.assert_allclose(r.calibration_error_band, np.quantile(brute, [0.025, 0.975], axis=0).T, rtol=1e-9, atol=1e-12)


def test_lm_summary_counts_real_tokens(tmp_path):
    """Calibration and prediction depth of an LM count its real tokens; alignment and KL average each sequence's."""
    from analyzers.trace import open_trace

    path = _trace(tmp_path, "gpt-text-e2e", "--limit", "12")
    r = _summary(path, bootstrap=0)
    with open_trace(path) as t:
        conf, right, targets = t.read("confidence/max_prob"), t.read("errors/correct_token"), t.read("targets")
        pred_tok, kl = t.read("trajectory/prediction_token"), t.read("trajectory/kl_to_final")
    valid = targets >= 0
    flat = lambda a: np.moveaxis(a, 1, -1)[valid]  # noqa: E731 - (tokens, D)
    assert r.unit == "token"
    np.testing.assert_allclose(r.calibration_error, calibration_error(flat(conf), flat(right)), rtol=1e-6, atol=1e-9)
    assert r.prediction_depth == np.bincount(prediction_depth(flat(pred_tok)), minlength=len(r.depths)).tolist()
    assert sum(r.prediction_depth) == valid.sum()
    np.testing.assert_allclose(r.kl_to_final, kl.mean(0), rtol=1e-6)


def test_format_1_traces_still_read_and_a_damaged_format_2_is_refused(tmp_path):
    """A trace another (older) program wrote, without the trajectory group, still gives calibration and the
    removal share, and says what it lacks; a format-2 trace without its group is damaged."""
    import h5py

    from analyzers.trace import open_trace
    from lpa_core.errors import TraceError

    path = _trace(tmp_path, "resnet-digits-lpa", "--limit", "80")
    full = _summary(path, bootstrap=0)
    with h5py.File(path, "r+") as f:
        del f["trajectory"]
    with pytest.raises(TraceError, match="trajectory/kl_to_final is missing"):
        open_trace(path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 1
    old = _summary(path, bootstrap=0)
    assert old.alignment == [None] * len(old.depths) and old.kl_to_final is None and old.prediction_depth is None
    assert old.calibration_error == full.calibration_error and old.removal[1:] == full.removal[1:]
    assert "trace format 1" in old.notes[0]


def test_the_logit_lens_gives_the_stored_measures(tmp_path):
    """Through the logit lens (the model's own head on the stored states) the analysis side computes what the
    tracer stored; the same path serves tuned lenses."""
    from analyzers.probes import fit
    from analyzers.trace import open_trace

    path = _trace(tmp_path, "vit-digits-e2e", "--limit", "60", "--states")
    stored = _summary(path, bootstrap=0)
    with open_trace(path) as t:
        lensed = _summary(path, bootstrap=0, lens=fit(t, "logit"))
    for name in ("alignment", "removal", "kl_to_final", "calibration_error"):
        np.testing.assert_allclose(np.array(getattr(lensed, name), float), np.array(getattr(stored, name), float), rtol=1e-4, atol=1e-6, err_msg=name)
    assert lensed.prediction_depth == stored.prediction_depth


# -- where the statistics reach users: monotonicity and compare (text, JSON, reports), audit, reproduce ----

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


def test_monotonicity_json_and_report_carry_the_trajectory(tmp_path):
    from tests.cli_helpers import run, run_json

    path = _trace(tmp_path, "resnet-digits-lpa", "--limit", "120")
    data = run_json("monotonicity", path, "--bootstrap", "100")
    direct = _summary(path, bootstrap=100)
    t = data["trajectory"]
    assert t["alignment"][0] is None and t["alignment"][1:] == pytest.approx(direct.alignment[1:])
    assert t["calibration_error"] == pytest.approx(direct.calibration_error) and t["unit"] == "sample"
    np.testing.assert_allclose(t["kl_to_final_band"], direct.kl_to_final_band, rtol=1e-9)  # the same seed, the same bootstrap
    text = run("monotonicity", path, "--bootstrap", "100").stdout
    assert "alignment (95% CI)" in text and "For an exit at depth k" in text
    sub = run_json("monotonicity", path, "--depths", "0,3,6", "--bootstrap", "0")["trajectory"]
    assert sub["depths"] == [0, 3, 6] and sum(sub["prediction_depth"]) == 120  # settled counts folded into the chosen depths
    html = tmp_path / "m.html"
    run("monotonicity", path, "--report-path", html, "--exit-zero")
    page = html.read_text()
    assert "alignment of each step with its residual target" in page and "expected calibration error per depth" in page


def test_compare_pools_seeds_and_shows_both_groups(tmp_path):
    """Two seeds of a group: each statistic the mean of the seeds', its band the envelope of theirs."""
    from analyzers.trajectory_summary import pool_seeds
    from tests.cli_helpers import run, run_json

    lpa = [_trace(tmp_path, "resnet-digits-lpa", "--limit", n) for n in ("100", "100")]
    e2e = _trace(tmp_path, "resnet-digits-e2e", "--limit", "100")
    out = tmp_path / "c.html"
    data = run_json("compare", "--run", f"LPA={lpa[0]}", "--run", f"LPA={lpa[1]}", "--run", f"E2E={e2e}", "-o", out, "--no-measure")
    each = [_summary(p) for p in lpa]
    pooled = pool_seeds(each)
    assert data["trajectory"]["LPA"]["alignment"][1:] == pytest.approx(pooled.alignment[1:])
    assert data["trajectory"]["E2E"]["kl_to_final"] == pytest.approx(_summary(e2e).kl_to_final)
    for j in range(1, len(pooled.depths)):
        assert pooled.alignment_band[j][0] == min(r.alignment_band[j][0] for r in each)
    assert "the mean of 2 seeds" in pooled.notes[0]
    assert "alignment: LPA" in run("compare", "--run", f"LPA={lpa[0]}", "--run", f"E2E={e2e}", "-o", out, "--force", "--no-measure").stdout
    assert "alignment of each step with its residual target" in out.read_text()


@pytest.mark.parametrize("body,passes", [
    ('max_calibration_error = { deploy = 0.2, "-1" = 0.1 }\n', True),
    ('max_calibration_error = { "1" = 0.1 }\n', False),
    ('max_kl_to_final = { "3" = 0.05 }\n', True),
    ('max_kl_to_final = { "1" = 0.05 }\n', False),
    ('min_alignment = { "2" = 0.5 }\n', True),
    ('min_alignment = { "6" = 0.5 }\n', False),
    ('min_alignment = { "0" = -1 }\n', False),  # no step leads into depth 0: the gate cannot pass it
])
def test_trajectory_rules_pass_and_fail_on_purpose(tmp_path, body, passes):
    """On the digits LPA sample: calibration 0.45 at depth 1 and 0.06 at its last, KL 0.02 at depth 3, alignment
    0.64 at depth 2 and 0.32 at its last."""
    import json

    from tests.cli_helpers import run

    cfg = tmp_path / "a.toml"
    cfg.write_text("[tool.lpa.audit]\n" + body)
    result = run("audit", SAMPLES / "resnet-digits-lpa.safetensors", "--config", cfg, "--json")
    assert json.loads(result.stdout)["passed"] is passes and result.exit_code == (0 if passes else 1)


def test_trajectory_rules_refuse_what_does_not_apply(tmp_path):
    import json

    import h5py

    from tests.cli_helpers import assert_clean_error, run

    cfg = tmp_path / "a.toml"
    cfg.write_text('[tool.lpa.audit]\nmax_kl_to_final = { "-1" = 0.1 }\n')
    assert_clean_error(run("audit", SAMPLES / "mlp-stripe-lpa.safetensors", "--config", cfg), "regression run")
    cfg.write_text('[tool.lpa.audit]\nmin_alignment = { "later" = 0.1 }\n')
    assert_clean_error(run("audit", SAMPLES / "mlp-stripe-lpa.safetensors", "--config", cfg), "not a depth")
    old = _trace(tmp_path, "resnet-digits-lpa", "--limit", "50")
    with h5py.File(old, "r+") as f:
        del f["trajectory"]
        f.attrs["format_version"] = 1
    cfg.write_text('[tool.lpa.audit]\nmin_alignment = { "2" = 0.1 }\n')
    result = run("audit", old, "--config", cfg, "--json")
    case = json.loads(result.stdout)["cases"][0]
    assert result.exit_code == 1 and case["value"] == "not measured" and "trace format 1" in case["message"]
    assert "not measured" in run("audit", old, "--config", cfg).stdout


def test_reproduce_summaries_carry_the_trajectory_table():
    from types import SimpleNamespace

    from lpa_cli.workflows.reproduce import trajectory_markdown

    r = _summary(_trace_once(), bootstrap=0)
    lines = trajectory_markdown(SimpleNamespace(trajectory={"LPA": r, "E2E": r}))
    assert lines[3] == "| depth | alignment LPA | alignment E2E | KL to final LPA | KL to final E2E | ECE LPA | ECE E2E |"
    assert lines[5].startswith("| 0 | - | - | ") and f"{r.alignment[1]:.3f}" in lines[6]


def _trace_once() -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp())
    return _trace(folder, "vit-digits-lpa", "--limit", "40")


@pytest.mark.parametrize("metric", ["ce", "err"])
def test_monotonicity_reuses_its_error_sums_for_the_removal_share(tmp_path, metric):
    """Through `lpa monotonicity` the error removed is the tested error's, from the block sums its own pass
    made (read once): equal, bands included, to the trajectory pass reading that error itself."""
    from analyzers.monotonicity import from_trace as monotonicity
    from analyzers.trace import open_trace
    from analyzers.trajectory_summary import from_trace

    path = _trace(tmp_path, "resnet-digits-e2e", "--limit", "150")
    with open_trace(path) as t:
        via = monotonicity(t, metric=metric, bootstrap=200, seed=3).trajectory
        alone = from_trace(t, error=metric, bootstrap=200, seed=3)
    assert via.removal[0] is None and np.allclose(via.removal[1:], alone.removal[1:], rtol=1e-12)
    assert np.allclose(np.array(via.removal_band[1:], float), np.array(alone.removal_band[1:], float), rtol=1e-12, equal_nan=True)
    assert via.alignment_band == alone.alignment_band and via.calibration_error == alone.calibration_error


def test_a_bf16_model_traces_measures_in_float32(tmp_path):
    """A model held in bf16 (as GPUs serve them): its logits are read into float32 before any measure, so the
    measures are the fp32 model's up to bf16's rounding of the weights and activations."""
    import torch

    from analyzers.trace import open_trace
    from lpa_cli.models.open import load_checkpoint
    from lpa_cli.serving.trace import trace_model

    ckpt = load_checkpoint(SAMPLES / "gpt-text-lpa.safetensors")
    x = torch.randint(0, 256, (6, 64))
    y = torch.roll(x, -1, 1)
    full = trace_model(ckpt.model, x, y, "lm", tmp_path / "fp32.h5", predictions=False).path
    half = trace_model(ckpt.model.to(torch.bfloat16), x, y, "lm", tmp_path / "bf16.h5", predictions=False).path
    with open_trace(full) as a, open_trace(half) as b:
        for name in ("trajectory/kl_to_final", "trajectory/alignment"):
            got, want = b.read(name), a.read(name)
            assert got.dtype == np.float32 and np.isfinite(got[:, 1:]).all()
            np.testing.assert_allclose(got[:, 1:], want[:, 1:], atol=0.05 + 0.1 * np.abs(want[:, 1:]).max())
