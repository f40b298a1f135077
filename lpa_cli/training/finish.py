"""Finishing a run: the final evaluation and the learned-nothing warnings, LoRA merged, the
self-describing checkpoint written (only then is the log's last record kept), the snapshot removed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from analyzers.metrics import finite
from lpa_cli import __version__
from lpa_cli.config import RunConfig
from lpa_cli.formats.checkpoint import save_checkpoint
from lpa_cli.models import ResidualModel, count_parameters
from lpa_cli.models.open import init_metadata
from lpa_cli.training.distributed import full_model_state
from lpa_cli.training.loop import Loop, chance_depths, evaluate_run
from lpa_cli.training.setup import Run, learning_rate

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    path: Path | None
    config: RunConfig
    task: dict[str, Any]
    metrics: dict[str, list[float]]
    training: dict[str, Any]
    sha256: str
    model: ResidualModel = field(repr=False)


def finish_run(run: Run, loop: Loop) -> TrainResult:
    cfg, t, world, model = run.cfg, run.cfg.train, run.world, run.model
    metrics = evaluate_run(run)
    warnings = loop.watch.judge(metrics, run.task, lr=t.lr, pretrained=bool(cfg.model.init)) if world.main else []
    for w in warnings:
        log.warning("%s", w)
    run.finish(model)
    state = full_model_state(run.step_module, t.parallel, world) if run.fsdp else None
    if state is not None:
        state = {k.removeprefix("model."): v for k, v in state.items()}
    training = {
        "steps": t.steps,
        "final_loss": loop.last_loss,
        # under FSDP parameters are DTensors, whose numel() is the whole (logical) tensor's
        "parameters": count_parameters(model) if not run.fsdp else sum(p.numel() for p in run.step_module.parameters()),
        "world_size": world.size,
        "lpa_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
    } | ({"warnings": warnings} if warnings else {})
    chance, baseline = chance_depths(metrics, run.task)
    if chance:  # what `lpa export` warns about before shipping one of these depths
        training["chance_depths"], training["chance_baseline"] = chance, baseline
    info = run.task.info()
    sha = ""
    if world.main:
        def final(digest: str = "") -> None:  # the last record: with a checkpoint, once it is complete, before its rename
            for tr in run.trackers:
                tr.record(t.steps, learning_rate(cfg, max(0, t.steps - 1)), loop.last_loss, {}, metrics, loop.elapsed, checkpoint_sha256=digest)

        if run.output is not None:
            sha = save_checkpoint(run.output, model, cfg, info, finite(metrics), training, force=True, state=state,
                                  tokenizer=run.task.tokenizer, extra=_hf_metadata(cfg), before_rename=final)
            if run.snap.exists():
                run.snap.unlink()
            for tr in run.trackers:
                tr.saved(run.output)
        else:
            final()
    world.barrier()
    return TrainResult(run.output, cfg, info, metrics, training | {"seconds": round(loop.elapsed, 3)}, sha, model)


def _hf_metadata(cfg: RunConfig) -> dict[str, str]:
    """What a model started from a Hugging Face directory records (for export --format hf)."""
    return init_metadata(cfg) if cfg.model.init else {}
