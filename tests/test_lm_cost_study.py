"""`lpa reproduce lm-cost`'s own logic: its targets read per-depth perplexity as stated, and the
equal-wall-clock budgets come from the equal-steps runs' logged times (the whole study trains for tens
of minutes; `docs/results.md` has its outcome)."""

from __future__ import annotations

import json

from lpa_cli.workflows import reproduce_lm_cost as lc
from lpa_cli.workflows.study import run_path


def _runs(*curves):
    return [{"ppl": list(c)} for c in curves]


def test_the_within_target_is_the_worst_relative_gap_over_depths_and_groups():
    m = {lc.EXACT: _runs([100, 50, 40], [110, 60, 40]), lc.SAMPLED: _runs([105, 55, 40.5]), lc.ROTATED: _runs([104, 56, 40])}
    ok, text = lc.within(0.02)(m, None)  # exact means: 105, 55, 40
    assert ok and "at most 1.8% from exact" in text
    m[lc.ROTATED] = _runs([104, 57, 40])
    ok, text = lc.within(0.02)(m, None)
    assert not ok and "3.6%" in text


def test_the_better_target_needs_every_depth_of_both_sampled_forms():
    m = {lc.EXACT: _runs([100, 50]), lc.SAMPLED: _runs([99, 49]), lc.ROTATED: _runs([99, 51])}
    ok, text = lc.better(m, None)
    assert not ok and "lower at 2/2" in text and "lower at 1/2" in text


def test_a_runs_time_is_its_logs_last_record_and_only_for_the_same_config(tmp_path, monkeypatch):
    from lpa_cli.config import RunConfig, TrainConfig

    cfg = RunConfig(train=TrainConfig(seed=2))
    path = run_path(tmp_path, "lm-cost", "equal-steps", lc.SAMPLED, 2)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    path.with_suffix(".jsonl").write_text("\n".join(json.dumps({"step": s, "elapsed_s": 1.5 * s}) for s in (10, 20)) + "\n")

    class Info:
        def __init__(self, config):
            self.config = config

    from lpa_cli.training.setup import on_hardware

    monkeypatch.setattr(lc, "read_info", lambda p: Info(on_hardware(cfg)))  # what train records: the precision that ran
    assert lc.seconds(cfg, lc.SAMPLED, tmp_path) == 30.0
    monkeypatch.setattr(lc, "read_info", lambda p: Info(RunConfig()))  # another configuration under that name
    assert lc.seconds(cfg, lc.SAMPLED, tmp_path) is None
    assert lc.seconds(cfg, lc.EXACT, tmp_path) is None  # never trained


def test_lm_cost_is_an_experiment():
    from lpa_cli.workflows.studies import EXPERIMENTS

    assert "lm-cost" in EXPERIMENTS
