"""The trace writer's durability rule: ``n_written`` never claims samples no fsync has covered."""

from __future__ import annotations

import threading
import time

import numpy as np

import analyzers.trace.spec as trace_spec
import analyzers.trace.sync as trace_sync
import analyzers.trace.writer as trace_writer
from analyzers.trace import TraceSpec, TraceWriter, open_trace, partial_path


def _spec(n: int) -> TraceSpec:
    return TraceSpec(n=n, depths=[0, 1], kind="regression", target_shape=(1,), target_dtype="float32",
                     pred_shape=(1,), state_shape=None, error_names=("se",))


def _rows(start: int, stop: int) -> dict[str, np.ndarray]:
    k = np.arange(start, stop, dtype=np.float32)
    return {"targets": k[:, None], "predictions": np.stack([k, k + 1], 1)[:, :, None], "errors/se": np.stack([k, 2 * k], 1)}


def _wait(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_n_written_waits_for_the_background_fsync(tmp_path, monkeypatch):
    gate = threading.Event()
    synced = []
    real_fsync = trace_sync.os.fsync

    def slow_fsync(fd):  # a disk that takes until `gate` is set
        gate.wait(10)
        real_fsync(fd)
        synced.append(fd)

    monkeypatch.setattr(trace_sync.os, "fsync", slow_fsync)
    out = tmp_path / "t.h5"
    writer = TraceWriter(out, _spec(100))
    writer.append(_rows(0, 40))
    assert writer.flush() == 40
    writer.append(_rows(40, 70))
    assert writer.flush() == 70
    assert writer.n_written == 0  # handed to the OS, but no fsync has finished
    gate.set()
    _wait(lambda: writer._syncer.durable == 70)
    writer.flush()
    assert writer.n_written == 70
    writer.append(_rows(70, 100))
    assert writer.finish() == out and not partial_path(out).exists()
    with open_trace(out) as t:
        np.testing.assert_array_equal(t.read("targets")[:, 0], np.arange(100))
    assert synced, "the background fsync never ran"


def test_resume_starts_from_the_durable_count(tmp_path):
    out = tmp_path / "t.h5"
    writer = TraceWriter(out, _spec(100))
    writer.append(_rows(0, 60))
    writer.flush()
    _wait(lambda: writer._syncer.durable == 60)
    writer.append(_rows(60, 80))
    writer.flush()  # records 60; rows 60-80 are not yet known to be on disk
    writer.close()
    resumed = TraceWriter(out, _spec(100), resume=True)
    assert resumed.start == 60
    resumed.append(_rows(resumed.start, 100))
    resumed.finish()
    with open_trace(out) as t:
        np.testing.assert_array_equal(t.read("errors/se")[:, 1], 2 * np.arange(100))


def test_appends_write_whole_chunks_and_keep_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_spec, "CHUNK_BYTES", 64)  # 8 rows per chunk of predictions, 16 of targets
    writes: list[tuple[str, int, int]] = []
    real_write = TraceWriter._write

    def spy(self, name, count):
        writes.append((name, self._written[name], count))
        real_write(self, name, count)

    monkeypatch.setattr(TraceWriter, "_write", spy)
    out = tmp_path / "t.h5"
    writer = TraceWriter(out, _spec(200))
    rng = np.random.default_rng(0)
    done = 0
    while done < 200:
        size = min(200 - done, int(rng.integers(1, 30)))
        writer.append(_rows(done, done + size))
        done += size
    rows = {name: writer._dataset(name)[1] for name in ("targets", "predictions", "errors/se")}
    assert rows == {"targets": 16, "predictions": 8, "errors/se": 8}
    for name, start, count in writes:
        assert start % rows[name] == 0 and (start + count) % rows[name] == 0, (name, start, count)
    writer.finish()
    with open_trace(out) as t:
        np.testing.assert_array_equal(t.read("predictions")[:, 1, 0], np.arange(200) + 1)
        np.testing.assert_array_equal(t.read("targets")[:, 0], np.arange(200))


def test_large_appends_start_the_disk_before_a_flush_but_claim_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(trace_writer, "SYNC_BYTES", 1)
    synced = []
    real_fsync = trace_sync.os.fsync
    monkeypatch.setattr(trace_sync.os, "fsync", lambda fd: (real_fsync(fd), synced.append(fd)))
    monkeypatch.setattr(trace_spec, "CHUNK_BYTES", 64)
    writer = TraceWriter(tmp_path / "t.h5", _spec(100))
    writer.append(_rows(0, 50))  # whole chunks are written, so fsyncs are requested; no flush yet
    _wait(lambda: len(synced) > 0)
    assert writer._syncer.durable == 0
    writer.close()
