"""Probes: the numpy head equals torch's, probes beat the logit lens on held-out data, refusal rules."""

from pathlib import Path

import numpy as np
import pytest

from analyzers.heads import read_head
from analyzers.probes import evaluate, fit, load_lens
from analyzers.trace import open_trace
from lpa_cli.serving.trace import trace_checkpoint
from tests.cli_helpers import assert_clean_error, run, run_json

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("probes")
    out = {}
    for name in ("mlp-stripe-e2e", "resnet-digits-e2e"):
        for split in ("train", "test"):
            path = d / f"{name}.{split}.h5"
            trace_checkpoint(SAMPLES / f"{name}.safetensors", path, split=split, states=True, limit=1500)
            out[name, split] = path
    return out


@pytest.mark.parametrize("name", ["mlp-stripe-lpa", "resnet-digits-lpa", "vit-digits-lpa", "gpt-text-lpa"])
def test_numpy_head_reproduces_the_models_predictions(name, tmp_path):
    path = tmp_path / "t.h5"
    trace_checkpoint(SAMPLES / f"{name}.safetensors", path, states=True, limit=20)
    with open_trace(path) as t:
        head, states, preds = read_head(t), t.read("states"), t.read("predictions")
    for j in range(states.shape[1]):
        np.testing.assert_allclose(head(states[:, j]), preds[:, j], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name,metric", [("mlp-stripe-e2e", "mse"), ("resnet-digits-e2e", "ce")])
@pytest.mark.parametrize("kind", ["tuned", "linear"])
def test_probes_beat_the_logit_lens_at_intermediate_depths_on_held_out_data(traces, name, metric, kind):
    with open_trace(traces[name, "train"]) as train, open_trace(traces[name, "test"]) as test:
        logit = evaluate(fit(train, "logit"), test)[metric]
        probe = evaluate(fit(train, kind), test)[metric]
    middle = range(1, len(logit) - 1)
    better = sum(probe[k] < logit[k] for k in middle)
    assert better >= len(middle) - 1, (logit, probe)  # at most one intermediate depth not improved
    assert np.mean([probe[k] for k in middle]) < 0.7 * np.mean([logit[k] for k in middle])


def test_linear_probe_is_least_squares_for_regression(traces):
    with open_trace(traces["mlp-stripe-e2e", "train"]) as train:
        lens = fit(train, "linear", ridge=0.0)
        head = read_head(train)
        feats = head.features(train.read("states")[:, 3]).astype(np.float64)
        y = train.read("targets")
    x1 = np.hstack([feats, np.ones((len(feats), 1))])
    sol, *_ = np.linalg.lstsq(x1, y, rcond=None)
    # the features are nearly collinear (condition ~1e7), so compare the objective, not coefficients
    fitted = feats @ lens.params["W.3"] + lens.params["c.3"]
    ours, best = np.mean((fitted - y) ** 2), np.mean((x1 @ sol - y) ** 2)
    assert best <= ours <= best * 1.01


def test_save_load_and_cli(traces, tmp_path):
    out = tmp_path / "p.safetensors"
    data = run_json("probe", traces["resnet-digits-e2e", "test"], "--fit-on", traces["resnet-digits-e2e", "train"], "--kind", "tuned", "-o", out)
    assert data["output"] == str(out) and len(data["probe"]["ce"]) == 7
    lens = load_lens(f"tuned:{out}")
    with open_trace(traces["resnet-digits-e2e", "test"]) as test:
        assert evaluate(lens, test)["ce"] == pytest.approx(data["probe"]["ce"])
    result = run("monotonicity", traces["resnet-digits-e2e", "test"], "--lens", f"tuned:{out}", "--json", "--metric", "ce")
    assert result.exit_code in (0, 1) and '"metric": "ce"' in result.stdout
    assert_clean_error(run("monotonicity", traces["resnet-digits-e2e", "test"], "--lens", f"linear:{out}"), "not linear")


def test_refusals(traces, tmp_path):
    train, test = traces["resnet-digits-e2e", "train"], traces["resnet-digits-e2e", "test"]
    out = tmp_path / "p.safetensors"
    assert_clean_error(run("probe", train, "--fit-on", train, "-o", out), "fitted on")
    assert not out.exists()
    run_json("probe", test, "--fit-on", train, "-o", out)
    assert_clean_error(run("monotonicity", train, "--lens", f"tuned:{out}"), "fitted on")
    assert_clean_error(run("monotonicity", traces["mlp-stripe-e2e", "test"], "--lens", f"tuned:{out}"), "different model")
    no_states = tmp_path / "plain.h5"
    trace_checkpoint(SAMPLES / "resnet-digits-e2e.safetensors", no_states, limit=50)
    assert_clean_error(run("probe", test, "--fit-on", no_states, "-o", tmp_path / "q.safetensors"), "--states")
    assert_clean_error(run("probe", test, "--fit-on", train, "--kind", "magic"), "unknown probe kind")
    assert_clean_error(run("monotonicity", test, "--lens", f"tuned:{tmp_path / 'none.safetensors'}"), "not found")
