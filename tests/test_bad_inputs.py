"""The bad-input matrix: every row is a one-line error naming the file and the cause, exit code 2,
no traceback, and no output file created or changed (unless the row says otherwise)."""

import json
import pickle
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import h5py
import plotly
import pytest
import torch

from analyzers import atomic
from lpa_cli.checkpoint import load_checkpoint, save_checkpoint
from lpa_cli.trace import trace_checkpoint
from tests.cli_helpers import TINY_TRAIN, assert_clean_error, assert_self_contained, run

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
from lpa_cli.checkpoint import load_checkpoint, save_checkpoint
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
    report = tmp_path / "m.html"
    run("monotonicity", GOOD, "--report-path", report, "--quiet")
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
    import lpa_cli.inspect as inspect

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
