import json

import pytest

from tests.cli_helpers import assert_clean_error, run


@pytest.mark.slow
def test_counterexample_quick_end_to_end_and_reuse(tmp_path):
    out = tmp_path / "results"
    result = run("reproduce", "counterexample", "--quick", "--seeds", "1", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data[0]["experiment"] == "counterexample" and len(data[0]["targets"]) == 2
    summary = (out / "summary-counterexample.md").read_text()
    assert "| LPA |" in summary and "| E2E |" in summary and "target:" in summary
    assert (out / "counterexample" / "small-mlp" / "report.html").exists()
    ckpt = out / "counterexample" / "small-mlp" / "lpa-s0.safetensors"
    before = ckpt.stat().st_mtime_ns
    again = run("reproduce", "counterexample", "--quick", "--seeds", "1", "-o", out)
    assert again.exit_code == 0 and "training" not in again.stderr  # checkpoints reused
    assert ckpt.stat().st_mtime_ns == before


def test_unknown_experiment():
    assert_clean_error(run("reproduce", "mnist"), "unknown experiment")
    assert_clean_error(run("reproduce", "surface", "--seeds", "0"), "--seeds")


def test_a_run_trained_for_one_study_is_copied_into_another_not_retrained(tmp_path, monkeypatch):
    import lpa_cli.workflows.reproduce as rp
    from lpa_cli.training.trainer import train
    from tests.conftest import tiny_run

    cfg, other = tiny_run(steps=5), tiny_run(steps=6)
    first = tmp_path / "results" / "surface" / "stripe" / "lpa-s0.safetensors"
    train(cfg, first)
    store = rp.CheckpointStore(tmp_path / "results")
    monkeypatch.setattr(rp, "train", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    messages = []
    copy = rp._checkpoint(cfg, tmp_path / "results" / "ablation" / "x" / "uniform-s0.safetensors", store, messages.append)
    assert copy.read_bytes() == first.read_bytes() and "reusing" in messages[0]
    with pytest.raises(AssertionError, match="retrained"):  # a different configuration is trained
        rp._checkpoint(other, tmp_path / "results" / "ablation" / "x" / "other-s0.safetensors", store, messages.append)
