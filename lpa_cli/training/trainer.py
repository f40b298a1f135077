"""The one trainer. It knows the `ResidualModel` protocol, an `Objective` and a `Task` — nothing
about architectures.

Reproducibility and resume: the batch of step s is a pure function of (seed, s), the learning rate
is a pure function of s, and snapshots hold weights, optimiser state, the RNG states, the gradient
scaler and the step. So a run killed at any point and resumed from its last snapshot ends with the
same tensors as an uninterrupted one. Distributed runs (torchrun; `lpa_cli.training.distributed`) split each
global batch across ranks; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from lpa_core.atomic import output_lock
from lpa_core.errors import UsageError
from lpa_cli.config import RunConfig
from lpa_cli.data.splits import batch_indices
from lpa_cli.data.tasks import Task
from lpa_cli.models import ResidualModel
from lpa_cli.models.open import resolve_init
from lpa_cli.runtime import restored_process_state
from lpa_cli.training.distributed import World, is_main_process, join
from lpa_cli.training.finish import TrainResult, finish_run
from lpa_cli.training.loop import TrainingError, run_steps
from lpa_cli.training.setup import check_outputs, learning_rate, prepare
from lpa_cli.training.trackers import Callbacks

__all__ = ["Callbacks", "TrainResult", "TrainingError", "batch_indices", "is_main_process", "learning_rate", "train"]


def train(
    cfg: RunConfig,
    output: str | Path | None = None,
    *,
    model: ResidualModel | None = None,
    task: Task | None = None,
    force: bool = False,
    resume: bool = False,
    snapshot_every: int = 500,
    callbacks: Callbacks | None = None,
    trust_factory: bool = False,
) -> TrainResult:
    """Train ``cfg`` and (when ``output`` is given) save a self-describing checkpoint there.

    ``model``: a ready `ResidualModel` to train instead of building one from ``cfg.model`` (its
    checkpoint then loads with ``load_checkpoint(path, model=...)`` unless ``cfg.model`` builds the
    same model, e.g. through ``cfg.model.factory``). ``task``: data already loaded. The process's
    torch thread count and RNG states are restored when training ends. ``trust_factory``: with
    ``cfg.model.init`` an lpa checkpoint whose model a factory builds, use the factory it names even
    when ``cfg.model.factory`` does not name the same one (`lpa_cli.models.factory`).
    """
    if snapshot_every < 0:
        raise UsageError(f"--snapshot-every must be >= 0, got {snapshot_every}")
    cfg = resolve_init(cfg, trust_factory)
    world = join()
    output = Path(output) if output is not None else None
    lock = contextlib.nullcontext()
    if output is not None and world.main:
        check_outputs(output, cfg, force, resume)
        lock = output_lock(output)
    try:
        with lock, restored_process_state():
            return _train(cfg, output, model, task, resume, snapshot_every, callbacks or Callbacks(), world)
    finally:
        world.close()


def _train(cfg: RunConfig, output: Path | None, model, task, resume: bool, snapshot_every: int, callbacks: Callbacks,
           world: World) -> TrainResult:
    run = prepare(cfg, output, model, task, resume, world)
    try:
        loop = run_steps(run, callbacks, snapshot_every)
        return finish_run(run, loop)
    except BaseException:
        if run.snap is None or not run.snap.exists():  # a run that wrote no checkpoint (nor a snapshot to resume) leaves no new log
            for tr in run.trackers:
                tr.discard()
        raise
    finally:
        for tr in run.trackers:
            tr.close()
