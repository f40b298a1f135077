import json

from tests.cli_helpers import assert_clean_error, run


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
