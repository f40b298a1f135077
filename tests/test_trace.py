"""The HDF5 trace: content equals the model, crash safety, and clear errors for bad files."""

import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lpa_core.errors import TraceError
from analyzers.trace import FORMAT_VERSION, open_trace, partial_path
from lpa_cli.models.open import load_checkpoint
from lpa_cli.data.tasks import load_task
from lpa_cli.serving.trace import trace_checkpoint, trace_modules
from tests.cli_helpers import assert_clean_error, lpa_executable, run, run_json

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"


@pytest.mark.parametrize("threaded", [False, True])
def test_both_writers_write_the_same_trace(threaded, tmp_path, monkeypatch):
    """The background writer (large batches, a spare core) and the in-thread one give equal traces."""
    import lpa_cli.serving.trace_threads as tr

    monkeypatch.setattr(tr, "THREAD_BATCH_BYTES", 0 if threaded else 1 << 60)
    monkeypatch.setattr(tr, "spare_cores", lambda: 1)
    chosen = []
    real = tr.writer_for
    monkeypatch.setattr(tr, "writer_for", lambda w, b: chosen.append(r := real(w, b)) or r)
    ckpt = SAMPLES / "mlp-stripe-lpa.safetensors"
    trace_checkpoint(ckpt, tmp_path / "t.h5", states=True, limit=300, batch_size=32)
    assert isinstance(chosen[0], tr.ThreadWriter if threaded else tr.SyncWriter)
    reference = tmp_path / "ref.h5"
    monkeypatch.setattr(tr, "THREAD_BATCH_BYTES", 1 << 60 if threaded else 0)
    trace_checkpoint(ckpt, reference, states=True, limit=300, batch_size=32)
    with open_trace(tmp_path / "t.h5") as a, open_trace(reference) as b:
        for name in ("predictions", "states", "targets", "errors/se"):
            np.testing.assert_array_equal(a.read(name), b.read(name))


def test_errors_one_depth_at_a_time_equal_the_vectorised_ones(tmp_path, monkeypatch):
    """Big heads take the per-depth path (bounded memory); it must give the same trace."""
    import lpa_cli.serving.trace as tr

    ckpt = SAMPLES / "gpt-text-lpa.safetensors"
    trace_checkpoint(ckpt, tmp_path / "vec.h5", limit=24, batch_size=8)
    monkeypatch.setattr(tr, "VECTORISE_BYTES", 0)
    trace_checkpoint(ckpt, tmp_path / "loop.h5", limit=24, batch_size=8, predictions=False)
    with open_trace(tmp_path / "vec.h5") as a, open_trace(tmp_path / "loop.h5") as b:
        assert not b.has("predictions")
        for name in ("errors/ce", "errors/correct", "errors/ce_token", "confidence/max_prob", "confidence/entropy"):
            np.testing.assert_allclose(a.read(name), b.read(name), rtol=1e-6, atol=1e-6)


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("name", ["mlp-stripe-lpa", "resnet-digits-e2e", "gpt-text-lpa"])
def test_trace_equals_model_predictions_and_recomputed_errors(name, tmp_path):
    ckpt_path = SAMPLES / f"{name}.safetensors"
    out = tmp_path / "t.h5"
    trace_checkpoint(ckpt_path, out, states=True, limit=40, batch_size=16)
    ckpt = load_checkpoint(ckpt_path)
    x, y = load_task(ckpt.config.task).test.tensors()
    x, y = x[:40], y[:40]
    with torch.no_grad():
        expected = torch.stack(ckpt.model.predictions(x), dim=1).numpy()
        states = torch.stack(list(ckpt.model.states(x)), dim=1).numpy()
    with open_trace(out) as t:
        preds = t.read("predictions")
        np.testing.assert_allclose(preds, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(t.read("states"), states, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(t.read("targets"), y.numpy())
        targets = y.numpy()
        # errors recomputed with numpy from the stored predictions and targets
        if t.kind == "regression":
            se = ((preds - targets[:, None, :]) ** 2).mean(axis=-1)
            np.testing.assert_allclose(t.errors("se"), se, rtol=1e-5, atol=1e-7)
        else:
            logp = _log_softmax(preds.astype(np.float64))
            if t.kind == "classification":
                ce = -np.take_along_axis(logp, targets[:, None, None].repeat(logp.shape[1], 1), axis=-1)[..., 0]
                correct = (preds.argmax(-1) == targets[:, None]).astype(np.float32)
            else:
                idx = np.broadcast_to(targets[:, None, :, None], logp.shape[:-1] + (1,))
                ce = -np.take_along_axis(logp, idx, axis=-1)[..., 0].mean(-1)
                correct = (preds.argmax(-1) == targets[:, None, :]).mean(-1)
            np.testing.assert_allclose(t.errors("ce"), ce, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(t.errors("correct"), correct, rtol=0, atol=1e-6)
            prob = np.exp(logp)
            np.testing.assert_allclose(t.read("confidence/max_prob"), prob.max(-1), rtol=1e-4, atol=1e-6)
        assert t.attrs["complete"] and t.attrs["checkpoint_sha256"] == ckpt.sha256
        assert t.depths == list(range(ckpt.model.num_depths))


def test_trace_cli_defaults_and_depth_subset(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes((SAMPLES / "mlp-stripe-lpa.safetensors").read_bytes())
    data = run_json("trace", ckpt)  # no flags: own task, test split, next to the checkpoint
    assert data["path"] == str(tmp_path / "m.test.h5") and data["n_samples"] == 4096
    data = run_json("trace", ckpt, "--depths", "0,4:", "--dtype", "float16", "--compression", "lzf", "-o", tmp_path / "s.h5")
    assert data["depths"] == [0, 4, 5, 6, 7, 8]
    with open_trace(tmp_path / "s.h5") as t:
        info = t.datasets()
        assert info["predictions"].dtype == "float16" and info["predictions"].compression == "lzf"
        assert info["errors/se"].checksummed


def test_python_api_traces_any_module_list(tmp_path):
    torch.manual_seed(0)
    embed = torch.nn.Linear(3, 8)
    blocks = [torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()) for _ in range(2)]
    head = torch.nn.Linear(8, 1)
    x, y = torch.randn(10, 3), torch.randn(10, 1)
    result = trace_modules(embed, blocks, head, x, y, "regression", tmp_path / "mine.h5")
    assert result.depths == [0, 1, 2] and result.n == 10
    with open_trace(tmp_path / "mine.h5") as t:
        with torch.no_grad():
            h1 = blocks[0](embed(x))
            np.testing.assert_allclose(t.read("predictions")[:, 1], head(h1).numpy(), rtol=1e-6)


class _FailsOnSecondBatch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, h):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")
        return h


def test_a_failing_trace_leaves_a_resumable_partial_and_no_threads(tmp_path):
    import threading

    from analyzers.trace.sync import Syncer as _Syncer

    x, y = torch.randn(20, 3), torch.randn(20, 1)
    with pytest.raises(RuntimeError, match="boom"):
        trace_modules(torch.nn.Linear(3, 4), [_FailsOnSecondBatch()], torch.nn.Linear(4, 1), x, y, "regression", tmp_path / "t.h5", batch_size=10)
    assert not any(isinstance(t, _Syncer) for t in threading.enumerate())
    assert partial_path(tmp_path / "t.h5").exists() and not (tmp_path / "t.h5").exists()
    torch.manual_seed(0)
    result = trace_modules(torch.nn.Linear(3, 4), [torch.nn.Identity()], torch.nn.Linear(4, 1), x, y, "regression", tmp_path / "t.h5", batch_size=10, resume=True)
    assert result.n == 20


SLOW_TRACE = ["--split", "train", "--no-predictions", "--states", "--batch-size", "8", "--quiet"]


def _flushed(path) -> int:
    """Samples a running writer has flushed so far (read without taking the file lock)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs.get("n_written", 0))
    except OSError:
        return 0


@pytest.mark.slow
def test_sigkill_leaves_nothing_readers_accept_and_resume_completes(tmp_path):
    ckpt = SAMPLES / "gpt-text-lpa.safetensors"
    full = tmp_path / "full.h5"
    assert run("trace", ckpt, *SLOW_TRACE, "-o", full).exit_code == 0
    out = tmp_path / "killed.h5"
    proc = subprocess.Popen([lpa_executable(), "trace", str(ckpt), *SLOW_TRACE, "-o", str(out)])
    part = partial_path(out)
    deadline = time.time() + 60
    while _flushed(part) == 0 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and part.exists(), "trace finished before the kill; make SLOW_TRACE slower"
    with pytest.raises(TraceError):
        open_trace(out)
    with pytest.raises(TraceError, match="incomplete"):
        open_trace(part)
    assert_clean_error(run("info", part), "incomplete")
    with h5py.File(part, "r") as f:  # the partial file survived the kill, with some samples flushed
        flushed = int(f.attrs["n_written"])
    assert 0 < flushed < 3169
    result = run_json("trace", ckpt, *SLOW_TRACE, "-o", out, "--resume")
    assert not part.exists() and result["resumed_from"] == flushed
    with open_trace(out) as a, open_trace(full) as b:
        for name in ("targets", "states", "errors/ce", "errors/ce_token", "confidence/entropy"):
            np.testing.assert_array_equal(a.read(name), b.read(name))
    assert result["n_samples"] == 3169


def _trace_file(tmp_path):
    out = tmp_path / "good.h5"
    trace_checkpoint(SAMPLES / "mlp-stripe-lpa.safetensors", out, limit=500)
    return out


def test_bad_trace_files(tmp_path):
    good = _trace_file(tmp_path)
    cases = {
        "empty.h5": b"",
        "truncated.h5": good.read_bytes()[: 3000],
        "text.h5": b"definitely not hdf5" * 10,
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    future = tmp_path / "future.h5"
    future.write_bytes(good.read_bytes())
    with h5py.File(future, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    needles = {"empty.h5": "not an HDF5", "truncated.h5": "truncated", "text.h5": "not an HDF5", "foreign.h5": "not an lpa trace", "future.h5": "newer"}
    for name, needle in needles.items():
        with pytest.raises(TraceError, match=needle):
            open_trace(tmp_path / name)
        assert_clean_error(run("info", tmp_path / name), needle)


def test_flipped_byte_is_detected_by_checksum(tmp_path):
    good = _trace_file(tmp_path)
    with h5py.File(good, "r") as f:
        offset = f["errors/se"].id.get_chunk_info(0).byte_offset
    data = bytearray(good.read_bytes())
    data[offset + 10] ^= 0xFF
    bad = tmp_path / "flipped.h5"
    bad.write_bytes(bytes(data))
    with open_trace(bad) as t, pytest.raises(TraceError, match="checksum"):
        t.errors("se")
    assert_clean_error(run("info", bad), "checksum")


def test_trace_refuses_overwrite_and_bad_options(tmp_path):
    good = _trace_file(tmp_path)
    ckpt = SAMPLES / "mlp-stripe-lpa.safetensors"
    assert_clean_error(run("trace", ckpt, "-o", good), "already exists")
    assert_clean_error(run("trace", ckpt, "-o", tmp_path / "x.h5", "--dtype", "int8"), "--dtype")
    assert_clean_error(run("trace", ckpt, "-o", tmp_path / "x.h5", "--compression", "zstd"), "compression")
    assert_clean_error(run("trace", ckpt, "-o", tmp_path / "x.h5", "--depths", "12"), "outside")
    assert_clean_error(run("trace", ckpt, "-o", tmp_path / "x.h5", "--data", "digits"), "does not fit")
    assert not (tmp_path / "x.h5").exists()
