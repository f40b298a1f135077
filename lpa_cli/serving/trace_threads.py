"""Writing a trace's batches while the next ones compute: large batches go to a background thread
(when a core is spare), small ones are written in place."""

from __future__ import annotations

import os
import queue
import threading
import time

import numpy as np
import torch

from analyzers.trace import TraceWriter


THREAD_BATCH_BYTES = 4 << 20  # batches at least this large are written from a background thread


class SyncWriter:
    """Writes each batch in the calling thread (see `writer_for`)."""

    def __init__(self, writer: TraceWriter, flush_every: float = 0.5) -> None:
        self.writer = writer
        self.flush_every = flush_every
        self.last = time.monotonic()

    def put(self, arrays: dict[str, np.ndarray]) -> None:
        self.writer.append(arrays)
        if time.monotonic() - self.last > self.flush_every:
            self.writer.flush()
            self.last = time.monotonic()

    def close(self) -> None:
        pass

    abort = close


class ThreadWriter(threading.Thread):
    """Background HDF5 writer; errors surface in the main thread at the next put() or join()."""

    def __init__(self, writer: TraceWriter, flush_every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.flush_every = flush_every

    def run(self) -> None:
        last = time.monotonic()
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain
            try:
                self.writer.append(item)
                if time.monotonic() - last > self.flush_every:
                    self.writer.flush()
                    last = time.monotonic()
            except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
                self.error = err

    def put(self, arrays: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(arrays)

    def close(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self.queue.put(None)


def spare_cores() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores - torch.get_num_threads()


def writer_for(writer: TraceWriter, batch_bytes: int) -> SyncWriter | ThreadWriter:
    """Write from a background thread only when it can overlap with the forward pass: large batches
    (block states) and a core that torch's threads leave free. Otherwise the thread costs more than
    it saves: its copying and checksumming can only take time from torch's threads, and every
    hand-off stalls torch's parallel regions (on 2 cores with 2 torch threads it made tracing slower
    in every case we measured; bench/trace_overhead.py). The disk's part overlaps either way: the
    writer fsyncs from a thread of its own (`analyzers.trace.sync.Syncer`)."""
    if batch_bytes >= THREAD_BATCH_BYTES and spare_cores() > 0:
        thread = ThreadWriter(writer)
        thread.start()
        return thread
    return SyncWriter(writer)
