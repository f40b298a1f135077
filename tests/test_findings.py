"""Findings of independent checks (issue 17), each pinned by a test that failed before its fix.
(Bootstrap intervals on ordered test sets: tests/test_monotonicity.py; sliding windows and refused
config features: tests/test_hf.py; padded batches through the tracing API: tests/test_hf.py.)"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.cli_helpers import TINY_TRAIN, assert_clean_error, run, run_json

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
GOOD = SAMPLES / "mlp-stripe-lpa.safetensors"


def test_toml_falls_back_to_tomli_where_tomllib_is_missing():
    """Python 3.10 has no tomllib: the same parser comes from the tomli package."""
    pytest.importorskip("tomli", reason="tomli is the Python 3.10 dependency (installed with the test extra)")
    code = ("import sys; sys.modules['tomllib'] = None\n"
            "from lpa_core.tomlfile import toml_loads\nimport lpa_cli.config, analyzers.audit\n"
            "print(toml_loads('a = 1')['a'], toml_loads.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "tomli._parser"]


def test_report_and_junit_writers_refuse_to_overwrite(tmp_path):
    trace = tmp_path / "t.h5"
    run_json("trace", GOOD, "-o", trace, "--limit", "256")
    report = tmp_path / "r.html"
    report.write_text("keep")
    assert_clean_error(run("monotonicity", trace, "--report-path", report), "already exists")
    assert report.read_text() == "keep"
    assert run("monotonicity", trace, "--report-path", report, "--force", "--exit-zero", "--quiet").exit_code == 0
    assert_clean_error(run("monotonicity", trace, "--report-path", trace, "--force"), "is the input")
    assert trace.read_bytes()[:4] == b"\x89HDF"
    junit = tmp_path / "j.xml"
    junit.write_text("keep")
    assert_clean_error(run("audit", trace, "--junit", junit), "already exists")
    assert junit.read_text() == "keep"
    assert_clean_error(run("audit", trace, "--junit", trace, "--force"), "is the input")


def test_reproduce_refuses_settings_it_does_not_know():
    from lpa_core.errors import UsageError
    from lpa_cli.workflows.studies import _digits, _surface

    cfg = _surface("stripe", "lpa", 0, True, sample_depths=3, lr=0.1)
    assert cfg.objective.sample_depths == 3 and cfg.train.lr == 0.1
    assert _digits("vit", "lpa", 0, True, dropout=0.1).model.options["dropout"] == 0.1
    with pytest.raises(UsageError, match="learning_rate"):
        _surface("stripe", "lpa", 0, True, learning_rate=0.1)


def test_train_gives_back_the_threads_and_random_state_it_changes():
    from lpa_cli.config import ModelConfig, RunConfig, TaskConfig, TrainConfig
    from lpa_cli.training.trainer import train

    torch.set_num_threads(2)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    np.random.seed(5)
    train(RunConfig(ModelConfig(depth=2, width=8), TaskConfig(n_train=64, n_test=16), train=TrainConfig(steps=2, threads=1, seed=7)))
    assert torch.get_num_threads() == 2
    torch.testing.assert_close(torch.rand(3), expected)
    np.random.seed(5)
    assert np.random.get_state()[1][0] == np.random.get_state()[1][0]


def test_p_values_below_float_range_are_not_zero():
    from analyzers.metrics import format_p

    assert format_p(0.0) == "p < 1e-300" and format_p(5e-324) == "p < 1e-300" and format_p(0.0123) == "p = 0.0123"


def _runs(tmp_path, objective, seeds):
    paths = []
    for seed in seeds:
        out = tmp_path / f"{objective}-{seed}.safetensors"
        run_json("train", *TINY_TRAIN, "--objective", objective, "--seed", str(seed), "-o", out)
        paths.append(out)
    return paths


def test_group_bands_stay_where_errors_live(tmp_path):
    """Two seeds: a t-interval with one degree of freedom (t = 12.7) went below zero; the seed and
    sample bootstrap does not, and the per-seed dots have a legend entry."""
    e2e, lpa = _runs(tmp_path, "e2e", (0, 1)), _runs(tmp_path, "lpa", (0,))
    report = tmp_path / "c.html"
    data = run_json("compare", "--run", f"E2E={e2e[0]}", "--run", f"E2E={e2e[1]}", "--run", f"LPA={lpa[0]}", "--no-measure", "-o", report)
    band = data["curves"]["E2E"]
    assert band["seeds"] == 2 and "bootstrap over seeds and test samples" in band["band"]
    assert all(low >= 0 for low in band["low"]) and all(lo <= m <= hi for lo, m, hi in zip(band["low"], band["mean"], band["high"]))
    assert np.array(band["per_seed"]).shape == (2, 4)
    assert "E2E: each seed" in report.read_text()


def test_disk_full_while_tracing_is_one_line_and_leaves_no_partial(tmp_path, monkeypatch):
    """ENOSPC when the trace's datasets are allocated: exit 2, one line, the partial file removed."""
    import analyzers.trace.writer as writer

    real = writer.TraceWriter._create

    def full(self):
        real(self)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.TraceWriter, "_create", full)
    out = tmp_path / "t.h5"
    assert_clean_error(run("trace", GOOD, "-o", out), "no space left on device", "nothing was written")
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_disk_full_on_a_real_small_filesystem(tmp_path):
    """The same on a 5 MB tmpfs (needs the right to mount one; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        result = subprocess.run([str(Path(sys.executable).with_name("lpa")), "trace", str(GOOD), "--states", "-o", str(mount / "t.h5")],
                                capture_output=True, text=True)
        assert_clean_error(result, "no space left on device")
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def _with_config(tmp_path, edit) -> Path:
    from tests.test_bad_inputs import _header, _pack

    header, body = _header(GOOD.read_bytes())
    meta = dict(header["__metadata__"])
    config, task = json.loads(meta["config"]), json.loads(meta["task"])
    edit(config, task)
    meta["config"], meta["task"] = json.dumps(config), json.dumps(task)
    header["__metadata__"] = meta
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(_pack(header, body))
    return bad


@pytest.mark.parametrize("case,needle", [
    ("huge input", "config and tensors disagree"),
    ("negative hidden", "model.options.hidden"),
    ("other width", "config and tensors disagree"),
    ("other architecture", "config and tensors disagree"),
    ("other depth", "config and tensors disagree"),
])
def test_configs_are_checked_against_the_tensors_before_anything_is_built(tmp_path, case, needle):
    def edit(config, task):
        if case == "huge input":
            task["in_shape"] = [1 << 36]
        elif case == "negative hidden":
            config["model"]["options"] = {"hidden": -4}
        elif case == "other width":
            config["model"]["width"] = 32
        elif case == "other architecture":
            config["model"]["arch"] = "resnet"
            task["input_kind"] = "image"
            task["in_shape"] = [1, 8, 8]
        else:
            config["model"]["depth"] = 7

    bad = _with_config(tmp_path, edit)
    import time

    t = time.perf_counter()
    assert_clean_error(run("trace", bad, "-o", tmp_path / "t.h5"), needle)
    assert_clean_error(run("info", bad, "--no-verify"), needle)
    assert time.perf_counter() - t < 10 and not (tmp_path / "t.h5").exists()


def test_hf_trace_context_is_never_silently_shortened(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the hf extra is not installed")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=2, n_head=4))
    model.save_pretrained(tmp_path / "gpt2")
    assert_clean_error(run("trace", tmp_path / "gpt2", "--context", "100", "-o", tmp_path / "t.h5"), "longer than the 64 positions")
    assert run_json("trace", tmp_path / "gpt2", "-o", tmp_path / "t.h5", "--limit", "2")["n_samples"] == 2  # default: the 64 it has


def test_environment_is_untouched_by_a_finished_import():
    """Importing lpa and building a model sets nothing in the environment (no global state)."""
    before = dict(os.environ)
    import lpa_cli.app  # noqa: F401

    assert dict(os.environ) == before
