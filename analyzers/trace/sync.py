"""Background fsync for the trace writer."""

from __future__ import annotations

import os
import threading
from pathlib import Path


class Syncer(threading.Thread):
    """Flushes a file's written pages to disk in the background (os.fsync releases the GIL, and the
    disk, not the CPU, does the work), so the fsync before the final rename has little left to wait
    for. `durable` is the largest requested count whose fsync has finished."""

    def __init__(self, path: Path, durable: int) -> None:
        super().__init__(daemon=True)
        self.fd = os.open(path, os.O_RDONLY)
        self.durable = durable
        self._count: int | None = None  # the latest request not yet picked up
        self._wake = threading.Condition()
        self._stopping = False
        self.start()

    def request(self, count: int) -> None:
        """Ask for an fsync covering the first ``count`` samples (all already handed to the OS)."""
        with self._wake:
            self._count = count if self._count is None else max(self._count, count)
            self._wake.notify()

    def run(self) -> None:
        while True:
            with self._wake:
                while self._count is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                count, self._count = self._count, None
            try:
                os.fsync(self.fd)
            except OSError:
                return  # the final fsync_path reports disk errors in the main thread
            self.durable = max(self.durable, count)

    def stop(self) -> None:
        """Stop syncing (idempotent); pending requests are dropped, the final fsync comes later."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self.is_alive():
            self.join()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
