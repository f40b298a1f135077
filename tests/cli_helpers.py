"""Running the CLI in tests: in-process through Typer's runner, or as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from lpa_cli.app import app

TINY_TRAIN = ["--depth", "3", "--width", "16", "--steps", "20", "--batch-size", "64", "--threads", "1",
              "--set", "task.n_train=256", "--set", "task.n_test=64"]


def run(*args: str, env: dict | None = None):
    """Invoke `lpa ARGS` in-process; returns the click Result (exit_code, stdout, stderr)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def run_json(*args: str):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def lpa_executable() -> str:
    return str(Path(sys.executable).with_name("lpa"))


def subprocess_lpa(*args: str, cwd: Path | None = None, module: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "lpa_cli"] if module else [lpa_executable()]
    env = os.environ | {"COLUMNS": "160"}
    return subprocess.run(cmd + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def assert_clean_error(result, *needles: str, code: int = 2) -> None:
    """Exit code as documented, the error in one line (the last on stderr), no traceback."""
    stderr = result.stderr
    assert result.exit_code == code if hasattr(result, "exit_code") else result.returncode == code, stderr
    assert "Traceback" not in stderr and "Traceback" not in (result.stdout or "")
    # a library warning or a run's plan and progress lines may come first; the error itself is one line, the last
    progress = ("WARNING ", "plan: ", "estimate: ", "step ", "traced ", "tokenized ", "generated ")
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(progress)]
    assert len(lines) == 1 and lines[0] == stderr.strip().splitlines()[-1], stderr
    for needle in needles:
        assert needle in stderr, stderr


def assert_self_contained(html: str) -> None:
    """Figures are inline SVG or plotly.js is embedded, and the page itself loads nothing from anywhere."""
    import re

    import plotly

    bundle = plotly.offline.get_plotlyjs()
    assert bundle in html or ("<svg" in html and "<script src" not in html and "Plotly.newPlot" not in html), "no figures the page can draw"
    page = html.replace(bundle, "")  # the library's own string literals (its logo link) are not page markup
    assert not re.search(r"""<script[^>]+src\s*=""", page, re.I)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"""<link[^>]+href""", page, re.I)


def assert_resume_is_exact(cfg, tmp_path: Path, stop_at: int = 9, snapshot_every: int = 6) -> Path:
    """Train ``cfg`` whole; train it again interrupted at step ``stop_at`` (a snapshot every
    ``snapshot_every``) and resume: the same tensors. Returns the resumed checkpoint."""
    import pytest
    import torch

    from lpa_cli.models.open import load_checkpoint
    from lpa_cli.training.trainer import train

    full = tmp_path / "full.safetensors"
    train(cfg, full, snapshot_every=snapshot_every)

    class Stop:  # duck-typed callbacks, as a user may write them
        def on_start(self, *a): ...
        def on_eval(self, *a): ...
        def on_end(self): ...

        def on_step(self, step, loss):
            if step == stop_at:
                raise KeyboardInterrupt

    out = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, snapshot_every=snapshot_every, callbacks=Stop())
    assert out.with_name(out.name + ".snapshot").exists() and not out.exists()
    train(cfg, out, snapshot_every=snapshot_every, resume=True)
    a, b = load_checkpoint(full).model.state_dict(), load_checkpoint(out).model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    return out
