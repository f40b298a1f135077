"""The bad-input matrix: every row is a one-line error naming the file and the cause, exit code 2,
no traceback, and no output file created or changed (unless the row says otherwise)."""

import json
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import plotly
import pytest
import torch

from lpa_core import atomic
from lpa_cli.formats.checkpoint import save_checkpoint
from lpa_cli.models.open import load_checkpoint
from lpa_cli.serving.trace import trace_checkpoint
from tests.cli_helpers import TINY_TRAIN, assert_clean_error, assert_self_contained, run, run_json

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
GOOD = SAMPLES / "mlp-stripe-lpa.safetensors"


def _header(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _pack(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def _with_meta(**changes) -> bytes:
    header, body = _header(GOOD.read_bytes())
    header["__metadata__"] = {**header["__metadata__"], **changes}
    return _pack(header, body)


def _both_commands_refuse(tmp_path, data: bytes, *needles: str):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data)
    out = tmp_path / "out.h5"
    assert_clean_error(run("info", bad), str(bad), *needles)
    assert_clean_error(run("trace", bad, "-o", out), str(bad), *needles)
    assert not out.exists() and bad.read_bytes() == data


# 1
@pytest.mark.parametrize("case", ["empty", "seven", "truncated", "appended"])
def test_row1_empty_short_truncated_appended(tmp_path, case):
    good = GOOD.read_bytes()
    data = {"empty": b"", "seven": good[:7], "truncated": good[: len(good) - 100], "appended": good + b"junk"}[case]
    needle = {"empty": "too short", "seven": "too short", "truncated": "", "appended": "unexpected bytes"}[case]
    _both_commands_refuse(tmp_path, data, needle)


# 2
def test_row2_huge_header_lengths_are_refused_fast(tmp_path):
    t = time.perf_counter()
    _both_commands_refuse(tmp_path, struct.pack("<Q", 2**40) + b"{}", "exceeds")
    big = tmp_path / "big.safetensors"
    with big.open("wb") as f:  # a 99 MB header (sparse file): refused from its length alone
        f.write(struct.pack("<Q", 99 * 2**20))
        f.seek(8 + 99 * 2**20 - 1)
        f.write(b" ")
    assert_clean_error(run("info", big), "exceeds")
    assert time.perf_counter() - t < 5


# 3
@pytest.mark.parametrize("case", ["out_of_bounds", "overlap", "overflow", "dtype"])
def test_row3_bad_offsets_and_dtypes(tmp_path, case):
    header, body = _header(GOOD.read_bytes())
    names = [k for k in header if k != "__metadata__"]
    a, b = header[names[0]], header[names[1]]
    if case == "out_of_bounds":
        a["data_offsets"] = [a["data_offsets"][0], len(body) + 4]
    elif case == "overlap":
        b["data_offsets"] = [a["data_offsets"][0], a["data_offsets"][0] + b["data_offsets"][1] - b["data_offsets"][0]]
    elif case == "overflow":
        a["data_offsets"] = [2**64 - 8, 2**64 + 8]
    else:
        a["dtype"] = "F128"
    needle = {"out_of_bounds": "outside", "overlap": "", "overflow": "outside", "dtype": "unknown dtype"}[case]
    _both_commands_refuse(tmp_path, _pack(header, body), needle)


# 4
class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["pickle", "torch-zip"])
def test_row4_pickles_are_never_unpickled(tmp_path, kind):
    marker = tmp_path / "PWNED"
    bad = tmp_path / "model.safetensors"
    if kind == "pickle":
        bad.write_bytes(pickle.dumps(_Marker(str(marker))))
    else:
        torch.save({"x": _Marker(str(marker))}, bad)
    for args in (["info", bad], ["trace", bad, "-o", tmp_path / "t.h5"], ["monotonicity", bad], ["export", bad, "--at", "1", "-o", tmp_path / "e.safetensors"]):
        assert_clean_error(run(*args), str(bad))
    assert not marker.exists()


# 5
@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"config": None}, "metadata has no 'config'"),
        ({"config": "{not json"}, "not valid JSON"),
        ({"config": "[" * 200_000 + "]" * 200_000}, "nested too deeply"),
        ({"metrics": '{"mse": [NaN]}'}, "not valid JSON"),
        ({"config": json.dumps({"model": {"depth": "eight"}})}, "expected an integer"),
        ({"config": json.dumps({"model": {"arch": "transformer-xl"}})}, "unknown architecture"),
        ({"task": json.dumps({"kind": "regression"})}, "lacks kind/in_shape/out_dim"),
        ({"format_version": "99"}, "newer than this lpa"),
    ],
)
def test_row5_bad_metadata(tmp_path, changes, needle):
    header, body = _header(GOOD.read_bytes())
    meta = dict(header["__metadata__"])
    for k, v in changes.items():
        if v is None:
            meta.pop(k)
        else:
            meta[k] = v
    header["__metadata__"] = meta
    _both_commands_refuse(tmp_path, _pack(header, body), needle)


# 6
def test_row6_flipped_tensor_byte(tmp_path):
    data = bytearray(GOOD.read_bytes())
    data[-3] ^= 0x01
    bad = tmp_path / "flip.safetensors"
    bad.write_bytes(bytes(data))
    assert_clean_error(run("info", bad, "--verify"), "hash mismatch")
    assert_clean_error(run("trace", bad, "-o", tmp_path / "t.h5"), "hash mismatch")
    assert run("trace", bad, "-o", tmp_path / "t.h5", "--no-verify", "--quiet").exit_code == 0
    assert run("info", bad, "--no-verify").exit_code == 0  # metadata alone is still readable without verification


# 7
SAVER = """
import sys, torch
from lpa_cli.formats.checkpoint import load_checkpoint, save_checkpoint
c = load_checkpoint(sys.argv[1])
with torch.no_grad():
    c.model.head.bias += 1.0  # the new version differs from the file it replaces
once = len(sys.argv) > 3
while True:
    save_checkpoint(sys.argv[2], c.model, c.config, c.task, c.metrics, c.training, force=True)
    if once:
        break
"""


@pytest.mark.slow
def test_row7_sigkill_during_saves_never_leaves_a_broken_file(tmp_path):
    new = tmp_path / "new.safetensors"
    subprocess.run([sys.executable, "-c", SAVER, str(GOOD), str(new), "once"], check=True)
    versions = {GOOD.read_bytes(), new.read_bytes()}
    target = tmp_path / "model.safetensors"
    target.write_bytes(GOOD.read_bytes())
    rng = random.Random(0)
    for trial in range(20):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(GOOD), str(target)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.2 + rng.random() * 0.5)  # start-up, then somewhere in the save loop
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert target.read_bytes() in versions, f"trial {trial}: a partial file under the target name"
        load_checkpoint(target)
    c = load_checkpoint(target)
    save_checkpoint(target, c.model, c.config, c.task, c.metrics, c.training, force=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.safetensors.tmp-")]  # stale temps cleaned


# 8 (see also tests/test_checkpoint.py)
def test_row8_exception_mid_save_leaves_target_unchanged(tmp_path, monkeypatch):
    target = tmp_path / "m.safetensors"
    target.write_bytes(GOOD.read_bytes())
    c = load_checkpoint(GOOD)

    def failing_fsync(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic, "fsync_path", failing_fsync)
    with pytest.raises(Exception):
        save_checkpoint(target, c.model, c.config, c.task, force=True)
    assert target.read_bytes() == GOOD.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


# 9
def test_row9_load_and_save_over_the_same_path(tmp_path):
    target = tmp_path / "m.safetensors"
    target.write_bytes(GOOD.read_bytes())
    c = load_checkpoint(target)
    save_checkpoint(target, c.model, c.config, c.task, c.metrics, c.training, force=True)
    assert target.read_bytes() == GOOD.read_bytes()


# 10-12: tests/test_trace.py (SIGKILL + resume; truncated/empty/foreign; flipped byte)


# 13
def test_row13_missing_compression_filter(tmp_path):
    trace = tmp_path / "t.h5"
    trace_checkpoint(GOOD, trace, limit=50)
    with h5py.File(trace, "r+") as f:
        del f["errors/se"]
        ds = f.create_dataset("errors/se", shape=(50, 9), dtype="f4", chunks=(50, 9), compression=307, allow_unknown_filter=True)
        ds.id.write_direct_chunk((0, 0), b"\0" * 64)
    assert_clean_error(run("monotonicity", trace), "filter")


# 14
EVIL = ["</script><img src=x onerror=alert(1)>", '<a href="javascript:alert(1)">x</a>', "line\u2028break", "{{7*7}}"]


def test_row14_strings_in_reports_stay_literal(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    trace_checkpoint(SAMPLES / "resnet-digits-lpa.safetensors", a)
    trace_checkpoint(SAMPLES / "resnet-digits-e2e.safetensors", b)
    with h5py.File(a, "r+") as f:  # metadata from a file: the traced checkpoint path and config
        f.attrs["checkpoint_path"] = EVIL[0]
        cfg = json.loads(f.attrs["config"])
        cfg["task"]["name"] = EVIL[1]
        f.attrs["config"] = json.dumps(cfg)
    report = tmp_path / "r.html"
    result = run("compare", "--run", f"{EVIL[0]}={a}", "--run", f"{EVIL[1]}{EVIL[2]}{EVIL[3]}={b}", "-o", report, "--quiet")
    assert result.exit_code == 0, result.output
    html = report.read_text()
    assert_self_contained(html)
    for raw in EVIL[:2]:
        assert raw not in html
    assert "\u2028" not in html  # escaped as &#x2028; in markup and \u2028 in JSON
    assert '<a href="javascript' not in html and "href=javascript" not in html  # never live markup
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html and "{{7*7}}" in html
    mono = tmp_path / "m.html"
    run("monotonicity", a, "--report-path", mono, "--exit-zero", "--quiet")
    assert "<img src=x" not in mono.read_text()


# 15
def test_row15_plotly_is_embedded_and_current(tmp_path):
    report = tmp_path / "m.html"  # the interactive page (the default draws SVG: tests/test_reports.py)
    run("monotonicity", GOOD, "--report-path", report, "--quiet", "--plotlyjs", "embed")
    html = report.read_text()
    assert_self_contained(html)
    version = plotly.offline.get_plotlyjs_version()
    assert int(version.split(".")[0]) >= 2 and f"v{version}" in html or version in html


# 16: tests/test_cli_train_info.py::test_same_command_twice_gives_byte_identical_checkpoints


# 17
def test_row17_existing_output_read_only_dir_and_full_disk(tmp_path, monkeypatch):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    assert_clean_error(run("train", *TINY_TRAIN, "-o", out), "already exists")
    assert out.read_bytes() == b"precious"
    import errno

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", full_disk)
    assert_clean_error(run("train", *TINY_TRAIN, "-o", out, "--force", "--quiet"), "no space left")
    assert out.read_bytes() == b"precious"

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(atomic.os, "replace", read_only)
    assert_clean_error(run("train", *TINY_TRAIN, "-o", out, "--force", "--quiet"), "permission denied")
    assert out.read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# 18: tests/test_data.py::test_bad_data_files_exit_2_and_write_nothing and test_cli_train_info.py::test_bad_toml_exits_2


def test_a_bug_is_one_line_and_exit_3_not_a_traceback(monkeypatch):
    import lpa_cli.workflows.inspect as inspect

    def broken(*args, **kwargs):
        raise ValueError("boom\nsecond line")

    monkeypatch.setattr(inspect, "describe", broken)
    result = run("info", GOOD)
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error" in lines[0] and "ValueError: boom second line" in lines[0]
    assert "Traceback" not in result.output
    debug = run("info", GOOD, env={"LPA_DEBUG": "1"})
    assert isinstance(debug.exception, ValueError)  # the traceback is there for whoever asks


# --- a red team's and a new user's findings (issue 19): data is never destroyed ----------------------------------


def test_checkpoint_outputs_are_safetensors_files_that_are_no_input(tmp_path):
    assert_clean_error(run("train", *TINY_TRAIN, "-o", tmp_path / "q.jsonl"), ".safetensors")
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1}\n')  # an earlier run's log
    assert_clean_error(run("train", *TINY_TRAIN, "-o", tmp_path / "m.safetensors"), "m.jsonl", "--force")
    assert log.read_text() == '{"step": 1}\n'
    init = tmp_path / "init.safetensors"
    init.write_bytes(GOOD.read_bytes())
    assert_clean_error(run("train", "--init", init, "--steps", "1", "-o", init, "--force"), "is the input")
    assert init.read_bytes() == GOOD.read_bytes()


def test_devices_and_pipes_are_never_replaced(tmp_path):
    fifo = tmp_path / "pipe.html"
    os.mkfifo(fifo)
    assert_clean_error(run("compare", "--run", f"A={GOOD}", "--run", f"B={GOOD}", "-o", fifo, "--force", "--no-measure"), "not a regular file")
    assert_clean_error(run("trace", GOOD, "-o", fifo, "--force"), "not a regular file")
    assert fifo.is_fifo()


def test_two_runs_to_one_output_do_not_interleave(tmp_path):
    out = tmp_path / "m.safetensors"
    with atomic.output_lock(out):  # a first run holds the output
        assert_clean_error(run("train", *TINY_TRAIN, "-o", out), "another lpa process")
    assert not out.exists()
    assert run("train", *TINY_TRAIN, "-o", out, "--quiet").exit_code == 0  # the lock went with its holder
    assert not out.with_name(out.name + ".lock").exists()


# --- never a wrong answer with exit 0 -----------------------------------------------------------------------------


def test_depth_subsets_are_labelled_and_selected_by_depth(tmp_path):
    out = tmp_path / "s.h5"
    shown = run("trace", GOOD, "--depths", "0,4:", "-o", out, "--limit", "512")
    rows = [line.split("│")[1].strip() for line in shown.stdout.splitlines() if line.startswith("│")]
    assert rows == ["0", "4", "5", "6", "7", "8"]
    rows = [line.split("│")[1].strip() for line in run("info", out).stdout.splitlines() if line.startswith("│") and "│" in line[1:]]
    assert rows[-6:] == ["0", "4", "5", "6", "7", "8"]
    from analyzers.monotonicity import from_trace
    from analyzers.trace import open_trace

    with open_trace(out) as t:
        assert from_trace(t, depths="4,8", bootstrap=0).depths == [4, 8]
        assert from_trace(t, depths="2:", bootstrap=0).depths == [4, 5, 6, 7, 8]
    assert_clean_error(run("monotonicity", out, "--depths", "1,8"), "depth 1 was not recorded")


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_a_gate_cannot_be_bypassed_with_non_finite_settings(tmp_path, value):
    assert_clean_error(run("monotonicity", GOOD, "--tolerance", value), "--tolerance")
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f"[tool.lpa.audit]\nmonotone = true\ntolerance = {value}\n")
    assert_clean_error(run("audit", GOOD, "--config", cfg), "tolerance")


@pytest.mark.parametrize("line,needle", [("reference = 5", "reference"), ("seed = -1", "seed"), ("within = nan", "within"),
                                         ("bootstrap = 100000000", "bootstrap")])
def test_bad_audit_settings_exit_2(tmp_path, line, needle):
    cfg = tmp_path / "audit.toml"
    cfg.write_text(f"[tool.lpa.audit]\nmonotone = true\n{line}\n")
    assert_clean_error(run("audit", GOOD, "--config", cfg), needle)


def test_resuming_a_trace_on_other_data_is_refused(tmp_path):
    out = tmp_path / "t.h5"
    partial = Path(str(out) + ".partial")
    data_a, data_b = tmp_path / "a.npz", tmp_path / "b.npz"
    rng = np.random.default_rng(0)
    for p in (data_a, data_b):
        x = rng.uniform(-1, 1, size=(400, 2)).astype(np.float32)
        np.savez(p, x=x, y=np.sin(x[:, :1]).astype(np.float32))
    trace_checkpoint(GOOD, out, data=str(data_a))
    out.rename(partial)  # as if killed: a partial trace of data A
    with h5py.File(partial, "r+") as f:
        f.attrs["complete"] = False
    assert_clean_error(run("trace", GOOD, "--data", data_b, "-o", out, "--resume"), "different settings or data")


def test_integer_csv_targets_with_many_values_are_regression(tmp_path, caplog):
    csv = tmp_path / "prices.csv"
    rng = np.random.default_rng(0)
    rows = ["a,b,price"] + [f"{a:.3f},{b:.3f},{int(100 + 50 * a + 30 * b)}" for a, b in rng.uniform(0, 5, size=(1200, 2))]
    csv.write_text("\n".join(rows))
    from lpa_cli.config import TaskConfig
    from lpa_cli.data.tasks import load_task

    with caplog.at_level("WARNING"):
        task = load_task(TaskConfig(name=f"file:{csv}"))
    assert task.kind == "regression" and "regression" in caplog.text
    standardized = run_json("train", *TINY_TRAIN, "--data", csv, "--set", "task.options.standardize=true", "--steps", "60",
                            "-o", tmp_path / "s.safetensors")
    assert standardized["task"]["meta"]["stats"]["std"][0] > 1  # recorded, so a trace of other data applies the same


def test_compare_checks_the_checkpoint_a_trace_names(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(GOOD.read_bytes())
    trace = tmp_path / "m.h5"
    run_json("trace", ckpt, "-o", trace)
    ckpt.write_bytes((SAMPLES / "mlp-stripe-e2e.safetensors").read_bytes())  # another model now sits at that path
    data = run_json("compare", "--run", f"A={trace}", "--run", f"B={SAMPLES / 'mlp-stripe-e2e.safetensors'}", "-o", tmp_path / "c.html")
    assert data["cost"]["A"]["flops"] is None and any("content hash differs" in n for n in data["notes"])


def test_compare_across_data_sets_with_force(tmp_path):
    small = tmp_path / "small.safetensors"
    run_json("train", *TINY_TRAIN, "-o", small)
    assert_clean_error(run("compare", "--run", f"A={GOOD}", "--run", f"B={small}", "-o", tmp_path / "c.html"), "different data")
    data = run_json("compare", "--run", f"A={GOOD}", "--run", f"B={small}", "-o", tmp_path / "c.html", "--force")
    assert data["heatmaps"] is None and "Welch" in data["final"][0]["test"]


@pytest.mark.parametrize("args,needle", [
    (["--set", "task.options.contxt=32"], "contxt"),
    (["--eval-every", "-1"], "--eval-every"),
    (["--snapshot-every", "-1"], "--snapshot-every"),
    (["--threads", "-2"], "--threads"),
    (["--threads", "100000"], "--threads"),
    (["--set", "train.warmup=-5"], "warmup"),
    (["--lr", "inf"], "--lr"),
    (["--lpa-lambda", "inf"], "--lpa-lambda"),
    (["--seed", "100000000000000000000"], "seed"),
    (["--set", "task.n_train=-3"], "n_train"),
    (["--arch", "gpt", "--task", "text", "--set", "task.options.context=abc"], "context"),
    (["--arch", "gpt", "--task", "text", "--set", "model.options.heads=0"], "heads"),
])
def test_bad_training_settings_exit_2(tmp_path, args, needle):
    out = tmp_path / "m.safetensors"
    assert_clean_error(run("train", *TINY_TRAIN, *args, "-o", out), needle)
    assert not out.exists()


def test_bad_probe_ridge(tmp_path):
    states = tmp_path / "s.h5"
    trace_checkpoint(GOOD, states, states=True, limit=200)
    assert_clean_error(run("probe", states, "--fit-on", states, "--ridge", "nan"), "--ridge")


def test_divergence_stops_with_one_line_and_no_checkpoint(tmp_path):
    out = tmp_path / "m.safetensors"
    assert_clean_error(run("train", *TINY_TRAIN, "--lr", "1e30", "-o", out), "diverged")
    assert not out.exists()
    huge = tmp_path / "huge.npz"
    np.savez(huge, x=np.full((100, 2), 1e300), y=np.zeros(100))
    assert_clean_error(run("train", *TINY_TRAIN, "--data", huge, "-o", out), "float32")


def test_json_output_is_strict():
    from lpa_cli.commands.render import print_json

    import io
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        print_json({"a": float("nan"), "b": [float("inf"), 1.0]})
    assert json.loads(buf.getvalue(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}")) == {"a": None, "b": [None, 1.0]}


def test_empty_text_and_string_metrics_and_lm_traces(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_clean_error(run("train", "--arch", "gpt", "--task", f"text:{empty}", "-o", tmp_path / "m.safetensors"), "too short")
    header, body = _header(GOOD.read_bytes())
    header["__metadata__"] = {**header["__metadata__"], "metrics": json.dumps({"mse": ["low", "high"]})}
    bad = tmp_path / "strings.safetensors"
    bad.write_bytes(_pack(header, body))
    assert_clean_error(run("info", bad, "--no-verify"), "list of numbers")
    lm = tmp_path / "lm.h5"
    trace_checkpoint(SAMPLES / "gpt-text-lpa.safetensors", lm, limit=8, predictions=False)
    assert run("info", lm).exit_code == 0 and run_json("info", lm)["kind"] == "lm"


def test_markup_and_html_in_names_stay_text(tmp_path):
    odd = tmp_path / "[red]x[/x]<b>bold</b>.h5"
    trace_checkpoint(GOOD, odd, limit=300)
    result = run("monotonicity", odd, "--report-path", tmp_path / "r.html", "--exit-zero")
    assert result.exit_code == 0, result.output
    assert "[red]x[/x]" in result.stdout
    page = (tmp_path / "r.html").read_text()
    assert "<b>bold</b>" not in page.replace(plotly.offline.get_plotlyjs(), "")
    assert "&lt;b&gt;bold&lt;/b&gt;" in page  # escaped for the legend, which plotly renders as HTML
    result = run("compare", "--run", f"[/x]={odd}", "--run", f"B={odd}", "-o", tmp_path / "c.html", "--no-measure")
    assert result.exit_code == 0 and "[/x]" in result.stdout


def test_github_annotations_escape_their_properties(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    odd = tmp_path / "a,b:c.safetensors"
    odd.write_bytes((SAMPLES / "mlp-stripe-e2e.safetensors").read_bytes())
    cfg = tmp_path / "audit.toml"
    cfg.write_text("[tool.lpa.audit]\nmax_error = { \"1\" = 1e-9 }\n")
    result = run("audit", odd, "--config", cfg)
    line = next(l for l in result.stdout.splitlines() if l.startswith("::error"))
    assert "file=" + str(odd).replace(",", "%2C").replace(":", "%3A") in line and "a,b:c" not in line.split("::")[1]


def test_reports_say_what_made_them(tmp_path):
    report = tmp_path / "r.html"
    run("monotonicity", GOOD, "--report-path", report, "--exit-zero", "--quiet")
    page = report.read_text()
    assert "Provenance" in page and "monotonicity" in page and "created" in page
    first = page.split("<svg", 2)[1]  # the per-depth curve: depths are whole numbers on its axis
    assert all(f">{k}</text>" in first for k in range(9)) and ">0.5</text>" not in first and ">7.5</text>" not in first
