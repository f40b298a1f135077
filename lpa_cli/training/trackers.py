"""Experiment trackers: callbacks of the trainer that record per-depth losses and metrics.

``--log jsonl`` (the default) appends one JSON record per evaluation, and the training losses about
100 times a run, to the output with the suffix ``.jsonl`` (``runs/m.safetensors`` -> ``runs/m.jsonl``);
``tensorboard`` writes event files under ``runs/m.tb/`` (scalars ``train/loss/depth_k``,
``test/<metric>/depth_k``, the config as hyper-parameters); ``mlflow`` logs the same to the MLflow
tracking URI of the environment (``MLFLOW_TRACKING_URI``; unset, a local ``mlruns/`` folder beside
the output), with the final checkpoint as an artifact. TensorBoard and MLflow are optional extras
(``pip install 'lpa[track]'``) and are imported only when asked for; the library core never imports
them. A tracker's failure is one line on stderr (exit 2), like any other.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from lpa_core.files import open_new, readable, refuse_link
from lpa_core.errors import LpaError, OutputError, UsageError
from analyzers.metrics import finite
from lpa_core.atomic import atomic_path
from lpa_cli.formats.checkpoint import read_metadata

log = logging.getLogger(__name__)


class Callbacks:
    """Hooks the trainer calls; the base class does nothing (the command line adds a progress bar)."""

    def on_plan(self, plan: dict[str, Any]) -> None:
        """Before the first step: parameters, samples and tokens per step, steps, device (`train`)."""

    def on_start(self, total_steps: int, start_step: int) -> None: ...

    def on_step(self, step: int, loss: float | None) -> None: ...

    def on_progress(self, step: int, loss: float, per_depth: dict[int, Any]) -> None:
        """After every step, with each depth's loss term (tensors: read them only when shown)."""

    def on_eval(self, step: int, metrics: dict[str, list[float]]) -> None: ...

    def on_end(self) -> None: ...


class Tracker(Callbacks):
    """A callback that records the run (rank 0 only)."""

    def start(self, config: dict[str, Any], resumed_at: int) -> None: ...

    def record(self, step: int, lr: float, loss: float | None, per_depth: dict[int, float], metrics: dict[str, list[float]],
               elapsed: float, checkpoint_sha256: str = "") -> None:
        """One record; the run's last carries the content hash of its checkpoint, written once the file is
        complete and before it takes its name."""

    def saved(self, path: Path) -> None: ...

    def discard(self) -> None:
        """The run failed before its checkpoint was written: take back what it started, if it can."""

    def close(self) -> None: ...


class JsonlTracker(Tracker):
    """One JSON object per record in the run's ``.jsonl`` log (strict JSON: non-finite numbers are null).

    A fresh run over an earlier run's log (``--force``) writes beside it, under ``<log>.new``, and
    renames it into place when the checkpoint is saved: a run that fails (diverges, fills the disk, is
    killed) leaves the earlier checkpoint and its log as they were. Before the checkpoint takes its name
    the log gets its last record, with the checkpoint's content hash (the seal); a kill between the two renames leaves the
    new checkpoint beside a sealed ``<log>.new``, which the next run over it renames into place instead
    of deleting: the pair is always the old one or the new one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writing = path  # where records go until the checkpoint is saved
        self.fresh = False

    def start(self, config: dict[str, Any], resumed_at: int) -> None:
        self.fresh = not resumed_at
        if resumed_at:
            truncate_log(self.path, resumed_at)
        elif self.path.exists() or self.path.is_symlink():
            self.writing = refuse_link(self.path.with_name(self.path.name + ".new"))
            if self.writing.exists() and not self._complete_pair():
                self.writing.unlink()  # a killed run's: its checkpoint never took its name

    def _complete_pair(self) -> bool:
        """A sealed ``<log>.new`` whose checkpoint took its name (a kill between the two renames): rename
        it into place now. False when the log belongs to no checkpoint there."""
        try:
            lines = readable(self.writing, "text", error=OutputError).read_text(encoding="utf-8", errors="replace").split("\n")
            seal = json.loads(next(line for line in reversed(lines) if line.strip()) or "{}")
            ckpt = self.path.with_suffix(".safetensors")
            matches = isinstance(seal, dict) and ckpt.is_file() and seal.get("checkpoint_sha256") == read_metadata(ckpt).get("sha256")
        except (StopIteration, ValueError, LpaError):
            return False
        if matches:
            refuse_link(self.path)
            os.replace(self.writing, self.path)
            log.warning("%s: the last run stopped between saving its checkpoint and its log; its log is now in place", self.path)
            self.writing = self.path.with_name(self.path.name + ".new")
        return matches

    def saved(self, path: Path) -> None:
        if self.writing != self.path:
            refuse_link(self.path)
            if self.writing.exists():
                os.replace(self.writing, self.path)
            else:  # nothing was logged yet: the earlier run's log goes with its checkpoint
                self.path.unlink()
            self.writing = self.path

    def discard(self) -> None:
        if self.fresh and self.writing.exists():
            self.writing.unlink()  # a resumed run keeps its log: the snapshot it resumes from still stands

    def record(self, step, lr, loss, per_depth, metrics, elapsed, checkpoint_sha256: str = "") -> None:
        entry = {"step": step, "lr": lr, "train_loss": loss, "train_loss_per_depth": {str(k): v for k, v in per_depth.items()},
                 "test": metrics, "elapsed_s": round(elapsed, 3)}
        self._append(entry | ({"checkpoint_sha256": checkpoint_sha256} if checkpoint_sha256 else {}), sync=bool(checkpoint_sha256))

    def _append(self, entry: dict[str, Any], sync: bool = False) -> None:
        self.writing.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(finite(entry), allow_nan=False) + "\n"
        try:
            with os.fdopen(open_new(self.writing, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a") as f:  # never through a link
                f.write(line)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as err:
            raise OutputError(f"{self.writing}: {'no space left on device' if err.errno == errno.ENOSPC else err.strerror or err}; "
                              "the run stopped, and an earlier checkpoint is unchanged") from None


def truncate_log(path: Path, step: int) -> None:
    """After a resume, drop log records written after the snapshot (they will be written again)."""
    if not path.exists():
        return
    keep = []
    for line in readable(path, "text", error=OutputError).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue  # a line cut by the kill
    with atomic_path(path, force=True) as tmp:
        tmp.write_text("".join(x + "\n" for x in keep))


def _scalars(loss: float | None, per_depth: dict[int, float], metrics: dict[str, list[float]]) -> dict[str, float]:
    out = {}
    if loss is not None:
        out["train/loss"] = loss
    out |= {f"train/loss/depth_{k}": v for k, v in per_depth.items()}
    for name, values in metrics.items():
        out |= {f"test/{name}/depth_{k}": v for k, v in enumerate(values)}
        if values:
            out[f"test/{name}/final"] = values[-1]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
    return out


class TrackerError(UsageError):
    """An experiment tracker refused (its server, its store, its settings)."""


class TensorBoardTracker(Tracker):
    def __init__(self, logdir: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--log tensorboard needs the optional extra: pip install 'lpa[track]' (or pip install tensorboard)") from None
        self.logdir = logdir
        if logdir.exists() and not logdir.is_dir():
            raise TrackerError(f"--log tensorboard: {logdir} exists and is not a folder (move it, or choose another -o)")
        try:
            self.writer = SummaryWriter(str(logdir))
        except OSError as err:
            raise TrackerError(f"--log tensorboard: cannot write event files in {logdir} ({err.strerror or err})") from None
        self.config: dict[str, Any] = {}
        self.last_metrics: dict[str, list[float]] = {}

    def start(self, config, resumed_at) -> None:
        self.config = _flat(config)
        self.writer.add_text("config", json.dumps(config, indent=1), 0)

    def record(self, step, lr, loss, per_depth, metrics, elapsed, checkpoint_sha256: str = "") -> None:
        for tag, value in _scalars(loss, per_depth, metrics).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.last_metrics = metrics

    def close(self) -> None:
        final = {f"hparam/{k}": v for k, v in _scalars(None, {}, self.last_metrics).items() if k.endswith("/final")}
        if final:
            self.writer.add_hparams(self.config, final, run_name=".")
        self.writer.close()


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())[:300]


class MlflowTracker(Tracker):
    def __init__(self, run_name: str, folder: Path) -> None:
        try:
            import mlflow
        except ImportError:
            raise UsageError("--log mlflow needs the optional extra: pip install 'lpa[track]' (or pip install mlflow-skinny)") from None
        self.mlflow = mlflow
        self.run_name = run_name
        self.run = None
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # a local store beside the output; MLflow 3 asks for this opt-in to its file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            self.uri = (folder / "mlruns").resolve().as_uri()
        else:
            self.uri = os.environ["MLFLOW_TRACKING_URI"]
            _reachable(self.uri)
            # MLflow retries a failed request for minutes by default; a run should fail in seconds instead
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the tracking client reports with many exception types
            raise TrackerError(f"mlflow ({self.uri}): {what} failed: {_one_line(err)}") from None

    def start(self, config, resumed_at) -> None:
        self.mlflow.set_tracking_uri(self.uri)
        self.run = self._call("starting a run", self.mlflow.start_run, run_name=self.run_name)
        params = _flat(config)
        self._call("logging parameters", self.mlflow.log_params, {k: str(v)[:500] for k, v in params.items()})

    def record(self, step, lr, loss, per_depth, metrics, elapsed, checkpoint_sha256: str = "") -> None:
        scalars = {k.replace("/", "."): v for k, v in _scalars(loss, per_depth, metrics).items()}
        scalars["train.lr"] = lr
        self._call("logging metrics", self.mlflow.log_metrics, scalars, step=step)

    def saved(self, path: Path) -> None:
        self._call("storing the checkpoint", self.mlflow.log_artifact, str(path))

    def close(self) -> None:
        if self.run is not None:
            self.run = None
            self._call("ending the run", self.mlflow.end_run)


def _reachable(uri: str, timeout: float = 5.0) -> None:
    """An HTTP(S) tracking server answers a TCP connection within ``timeout`` seconds, or a one-line
    error says so before training starts (other stores are local, or checked by MLflow itself)."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(uri)
    if url.scheme not in ("http", "https"):
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "localhost", port), timeout=timeout).close()
    except OSError as err:
        raise TrackerError(f"--log mlflow: the MLflow server at {url.hostname}:{port} (MLFLOW_TRACKING_URI) does not answer "
                           f"({err.strerror or err}); start it, or unset MLFLOW_TRACKING_URI to log to ./mlruns beside the output") from None


def make_trackers(names: list[str], output: Path | None) -> list[Tracker]:
    """The trackers ``--log`` asks for; without an output only MLflow can record anything."""
    out: list[Tracker] = []
    for name in dict.fromkeys(names):
        if name == "jsonl" and output is not None:
            out.append(JsonlTracker(output.with_suffix(".jsonl")))
        elif name == "tensorboard" and output is not None:
            out.append(TensorBoardTracker(output.with_name(output.stem + ".tb")))
        elif name == "mlflow":
            out.append(MlflowTracker(output.stem if output is not None else "lpa", output.parent if output is not None else Path.cwd()))
    return out
