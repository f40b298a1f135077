"""lpa compare and lpa audit, end to end, with independent checks of their numbers."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from junitparser import JUnitXml
from torch import nn

from analyzers.compare import pareto
from analyzers.monotonicity import from_trace
from analyzers.trace import open_trace
from lpa_cli.data.batch import Batch
from lpa_cli.serving.cost import depth_costs
from lpa_cli.models.protocol import ResidualModel
from lpa_cli.serving.trace import trace_checkpoint
from tests.cli_helpers import TINY_TRAIN, assert_clean_error, assert_self_contained, run, run_json

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
EVIL = "</script><img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def digit_traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    out = {}
    for name in ("resnet-digits-lpa", "resnet-digits-e2e"):
        out[name] = d / f"{name}.h5"
        trace_checkpoint(SAMPLES / f"{name}.safetensors", out[name])
    return out


def test_compare_numbers_equal_monotonicity_and_direct_group_means(digit_traces, tmp_path):
    lpa, e2e = digit_traces["resnet-digits-lpa"], digit_traces["resnet-digits-e2e"]
    report = tmp_path / "r.html"
    data = run_json("compare", "--run", f"LPA={lpa}", "--run", f"LPA={lpa}", "--run", f"E2E={e2e}", "-o", report, "--metric", "err")
    for run_info in data["runs"]:
        with open_trace(run_info["path"]) as t:
            ref = from_trace(t, metric="err")
        assert run_info["curve"] == pytest.approx(ref.curve) and run_info["verdict"] == ref.verdict
    with open_trace(lpa) as a, open_trace(e2e) as b:
        err_lpa = 1 - a.errors("correct").astype(np.float64)
        err_e2e = 1 - b.errors("correct").astype(np.float64)
    assert data["curves"]["LPA"]["mean"] == pytest.approx(err_lpa.mean(axis=0).tolist())
    assert data["curves"]["LPA"]["seeds"] == 2
    gap = [g for g in data["gaps"] if g["depth"] == 1][0]
    assert gap["gap"] == pytest.approx((err_e2e[:, 1] - err_lpa[:, 1]).mean())
    assert data["final"][0]["test"].startswith("paired t-test")
    assert {d["key"] for d in data["diff"]} == {"objective.name"}
    assert data["cost"]["LPA"]["flops"][0] < data["cost"]["LPA"]["flops"][-1]
    assert set(data["early_exit"]["LPA"]) == {"max_prob", "entropy", "patience"}
    html = report.read_text()
    assert_self_contained(html)
    for section in ("What differs", "Final depth", "Per-depth error", "Gap per depth", "Monotonicity per run",
                    "Train once, use N models", "Early exit", "Early exit, measured", "When samples are first right"):
        assert section in html, section
    measured = data["measured"]["LPA"]  # run for real on the checkpoint each trace names
    assert [m["setting"] for m in measured][:2] == ["0.5", "0.7"] and all(m["measured_speedup"] > 0 for m in measured)
    assert all(m["quality"] <= 1 and m["simulated_speedup"] >= 1 - 1e-6 for m in measured)
    shares = data["first_correct"]["LPA"]
    assert len(shares) == 7 and sum(shares) == pytest.approx(float((err_lpa == 0).any(axis=1).mean()))


def test_compare_surface_has_heatmaps_and_training_curves(tmp_path):
    report = tmp_path / "s.html"
    data = run_json("compare", "--no-measure", "--run", f"LPA={SAMPLES / 'mlp-stripe-lpa.safetensors'}",
                    "--run", f"E2E={SAMPLES / 'mlp-stripe-e2e.safetensors'}", "-o", report)
    assert data["heatmaps"]["grid"] == [64, 64] and len(data["heatmaps"]["groups"]["LPA"]) == 9
    assert data["training"]  # the samples' .jsonl logs
    html = report.read_text()
    assert "Predictions by depth" in html
    assert "Training curves" in html and "training loss at every depth" in html  # the logs' per-depth training losses (no evaluations)


def test_a_report_says_when_training_curves_are_absent(tmp_path):
    """Traces whose checkpoints (and logs) are gone: the section says why it is empty."""
    import shutil

    traces = []
    for name in ("mlp-stripe-lpa", "mlp-stripe-e2e"):
        ckpt = tmp_path / f"{name}.safetensors"
        shutil.copy(SAMPLES / f"{name}.safetensors", ckpt)
        traces.append(tmp_path / f"{name}.h5")
        trace_checkpoint(ckpt, traces[-1])
        ckpt.unlink()
    report = tmp_path / "r.html"
    run_json("compare", "--no-measure", "--run", f"LPA={traces[0]}", "--run", f"E2E={traces[1]}", "-o", report)
    assert "Training curves" in report.read_text() and "Not shown: no run" in report.read_text()


def test_training_curves_need_logs_with_several_evaluations(tmp_path):
    for name in ("a", "b"):
        run_json("train", *TINY_TRAIN, "--eval-every", "5", "--objective", "lpa" if name == "a" else "e2e", "-o", tmp_path / f"{name}.safetensors")
    report = tmp_path / "curves.html"
    run_json("compare", "--no-measure", "--run", f"A={tmp_path / 'a.safetensors'}", "--run", f"B={tmp_path / 'b.safetensors'}", "-o", report)
    assert "Training curves" in report.read_text()


def test_runs_without_evaluations_log_a_training_loss_curve(tmp_path):
    for name in ("a", "b"):
        run_json("train", *TINY_TRAIN, "--objective", "lpa" if name == "a" else "e2e", "-o", tmp_path / f"{name}.safetensors")
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(records) >= 10 and all(len(r["train_loss_per_depth"]) == 4 for r in records[:-1])
    report = tmp_path / "curves.html"
    run_json("compare", "--no-measure", "--run", f"A={tmp_path / 'a.safetensors'}", "--run", f"B={tmp_path / 'b.safetensors'}", "-o", report)
    html = report.read_text()
    assert "training loss at every depth" in html and "Not shown" not in html


def test_compare_with_many_groups_renders(tmp_path):
    """15 groups (the reproduce ablation's count) once made plotly refuse the heatmap grid's spacing."""
    traces = {}
    for name in ("mlp-stripe-lpa", "mlp-stripe-e2e"):
        traces[name] = tmp_path / f"{name}.h5"
        trace_checkpoint(SAMPLES / f"{name}.safetensors", traces[name])
    runs = []
    for i in range(15):
        runs += ["--run", f"G{i}={traces['mlp-stripe-lpa' if i % 2 else 'mlp-stripe-e2e']}"]
    report = tmp_path / "many.html"
    data = run_json("compare", "--no-measure", *runs, "-o", report, "--bootstrap", "200")
    assert len(data["heatmaps"]["groups"]) == 15 and report.read_text().count("G14") >= 1


def test_run_names_are_escaped_everywhere(digit_traces, tmp_path):
    report = tmp_path / "evil.html"
    result = run("compare", "--no-measure", "--run", f"{EVIL}={digit_traces['resnet-digits-lpa']}", "--run", f"E2E={digit_traces['resnet-digits-e2e']}",
                 "-o", report, "--quiet")
    assert result.exit_code == 0, result.output
    html = report.read_text()
    assert EVIL not in html and "<img src=x" not in html
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html  # shown literally


def test_compare_globs_and_refusals(digit_traces, tmp_path):
    data = run_json("compare", "--no-measure", "--run", f"LPA={SAMPLES}/resnet-digits-l*", "--run", f"E2E={SAMPLES}/resnet-digits-e*", "-o", tmp_path / "g.html")
    assert data["groups"]["E2E"] == [str(SAMPLES / "resnet-digits-e2e.safetensors")]
    other = SAMPLES / "vit-digits-e2e.safetensors"
    ok = run("compare", "--no-measure", "--run", f"A={digit_traces['resnet-digits-lpa']}", "--run", f"B={other}", "-o", tmp_path / "x.html", "--quiet")
    assert ok.exit_code == 0  # same test set, different architectures: comparable
    assert_clean_error(run("compare", "--no-measure", "--run", f"A={digit_traces['resnet-digits-lpa']}", "--run", f"B={SAMPLES / 'mlp-stripe-lpa.safetensors'}",
                           "-o", tmp_path / "y.html"), "cannot be compared")
    sub = tmp_path / "sub.h5"
    trace_checkpoint(SAMPLES / "resnet-digits-e2e.safetensors", sub, limit=100)
    assert_clean_error(run("compare", "--no-measure", "--run", f"A={digit_traces['resnet-digits-lpa']}", "--run", f"B={sub}", "-o", tmp_path / "z.html"), "--force")
    assert run("compare", "--no-measure", "--run", f"A={digit_traces['resnet-digits-lpa']}", "--run", f"B={sub}", "-o", tmp_path / "z.html", "--force", "--quiet").exit_code == 0
    assert_clean_error(run("compare", "--no-measure", "--run", f"A={digit_traces['resnet-digits-lpa']}", "-o", tmp_path / "w.html"), "two groups")
    assert_clean_error(run("compare", "--no-measure", "--run", "A", "--run", "B=x", "-o", tmp_path / "w.html"), "NAME=PATH")
    assert_clean_error(run("compare", "--no-measure", "--run", f"A={tmp_path}/none*", "--run", "B=x", "-o", tmp_path / "w.html"), "matches no file")


class _SleepingBlock(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.lin = seconds, nn.Linear(4, 4)

    def forward(self, h):
        time.sleep(self.seconds)
        return h + self.lin(h)


def test_depth_costs_count_each_prefix_and_time_its_parts():
    """FLOPs by hand (2 per multiply-add); latency of depth k is embed + blocks 1..k + head, checked
    with blocks that sleep a known time (sleep gives a lower bound that noise cannot break)."""
    sleeps = [0.0, 0.02, 0.0, 0.04]
    model = ResidualModel(nn.Linear(3, 4), [_SleepingBlock(s) for s in sleeps], nn.Linear(4, 2))
    x = torch.randn(8, 3)
    costs = depth_costs(model, Batch(x, torch.zeros(8)), repeats=3)
    assert costs["flops"] == [2 * 3 * 4 + 2 * 4 * 2 + k * 2 * 4 * 4 for k in range(5)]
    for k, ms in enumerate(costs["latency_ms"]):
        slept = sum(sleeps[:k]) * 1000 / len(x)  # ms per sample
        assert slept <= ms < slept + 25 / len(x), (k, ms, slept)


def test_pareto_front():
    assert pareto([1, 2, 3, 4], [5, 3, 4, 1]) == [0, 1, 3]


# --- audit ------------------------------------------------------------------------------------


def _config(tmp_path, body: str) -> Path:
    path = tmp_path / "audit.toml"
    path.write_text("[tool.lpa.audit]\n" + body)
    return path


LPA = SAMPLES / "mlp-stripe-lpa.safetensors"
E2E = SAMPLES / "mlp-stripe-e2e.safetensors"
DIGITS = SAMPLES / "resnet-digits-lpa.safetensors"


@pytest.mark.parametrize(
    "body,target,passes",
    [
        ("monotone = true\n", LPA, True),
        ("monotone = true\n", E2E, False),
        ('max_error = { "3" = 1e-3 }\n', LPA, True),
        ('max_error = { "3" = 1e-5 }\n', LPA, False),
        ('min_accuracy = { "-1" = 0.95 }\n', DIGITS, True),
        ('min_accuracy = { "1" = 0.99 }\n', DIGITS, False),
        (f'max_final_error_ratio = 3.0\nreference = "{E2E}"\n', LPA, True),
        (f'max_final_error_ratio = 1.25\nreference = "{E2E}"\n', LPA, False),
        ("max_deploy_depth = 8\n", LPA, True),
        ("max_deploy_depth = 2\n", LPA, False),
    ],
)
def test_each_rule_passes_and_fails_on_purpose(tmp_path, body, target, passes):
    result = run("audit", target, "--config", _config(tmp_path, body), "--json")
    data = json.loads(result.stdout)
    assert data["passed"] is passes and result.exit_code == (0 if passes else 1)


def test_junit_output_parses_with_one_case_per_rule_and_input(tmp_path):
    cfg = _config(tmp_path, 'monotone = true\nmax_deploy_depth = 7\n[tool.lpa.audit.overrides."*stripe*"]\nmax_error = { "-1" = 1e-3 }\n')
    junit = tmp_path / "out.xml"
    result = run("audit", LPA, E2E, DIGITS, "--config", cfg, "--junit", junit)
    assert result.exit_code == 1  # E2E is not monotone
    xml = JUnitXml.fromfile(str(junit))
    cases = [c for suite in xml for c in suite]
    assert len(cases) == 3 * 2 + 2  # monotone + deploy for all three, max_error for the two stripe models
    failed = [(c.classname, c.name) for c in cases if not c.is_passed]
    assert (str(E2E), "monotone") in failed
    assert run("audit", LPA, E2E, "--config", cfg, "--exit-zero", "--quiet").exit_code == 0


def test_pyproject_table_and_github_annotations(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.lpa.audit]\nmonotone = true\n')
    monkeypatch.chdir(tmp_path)
    result = run("audit", E2E, env={"GITHUB_ACTIONS": "true"})
    assert result.exit_code == 1 and f"::error file={E2E},title=lpa audit monotone::" in result.stdout


@pytest.mark.parametrize(
    "body,needle",
    [
        ("monotonic = true\n", "unknown audit rule"),
        ('max_error = 0.1\n', "table of depth"),
        ('max_error = { "x" = 0.1 }\n', "not a depth"),
        ("monotone = 1\n", "true or false"),
        ("alpha = 0.05\n", "defines no rule"),
        ("max_final_error_ratio = 1.2\n", "reference"),
        ('max_error = { "12" = 0.1 }\n', "not among the recorded depths"),
    ],
)
def test_bad_configs_exit_2(tmp_path, body, needle):
    assert_clean_error(run("audit", LPA, "--config", _config(tmp_path, body)), needle)


def test_bad_config_files(tmp_path):
    assert_clean_error(run("audit", LPA, "--config", tmp_path / "none.toml"), "not found")
    (tmp_path / "bad.toml").write_text("[tool.lpa.audit\n")
    assert_clean_error(run("audit", LPA, "--config", tmp_path / "bad.toml"), "invalid TOML")
    (tmp_path / "empty.toml").write_text("[tool.other]\nx = 1\n")
    assert_clean_error(run("audit", LPA, "--config", tmp_path / "empty.toml"), "no [tool.lpa.audit]")
    assert_clean_error(run("audit", LPA, "--config", _config(tmp_path, 'min_accuracy = { "1" = 0.5 }\n')), "does not apply")


def test_two_perfect_runs_are_equal_not_infinitely_apart():
    """Red team 4, row 23: 0 / 0 is a ratio of 1 (an audit rule passes), and compare says both are perfect."""
    import numpy as np

    from analyzers.compare import paired_gaps
    from analyzers.compare_types import Run
    from analyzers.metrics import error_ratio

    assert error_ratio(0.0, 0.0) == 1.0 and error_ratio(1.0, 0.0) == float("inf") and error_ratio(1.0, 2.0) == 0.5
    zeros = np.zeros((20, 3))
    runs = {g: [Run(g, f"{g}.h5", {}, [0, 1, 2], zeros.copy(), None)] for g in ("lpa", "e2e")}
    _, finals = paired_gaps(runs, "err", 0.05)
    assert finals[0].error_ratio == 1.0
    assert "both perfect" in finals[0].statement and "inf" not in finals[0].statement and "nan" not in finals[0].statement
