"""Where the parts meet: which package may import what, checked by scanning imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Top-level package names a source file imports, anywhere in it (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def sources(*folders: str) -> list[Path]:
    return [p for folder in folders for p in (ROOT / folder).rglob("*.py")]


def test_only_the_trace_package_touches_hdf5():
    offenders = [p.relative_to(ROOT) for p in sources("lpa_cli", "analyzers", "bench") if "h5py" in imports(p)
                 and not p.is_relative_to(ROOT / "analyzers" / "trace")]
    assert not offenders, f"h5py imported outside analyzers/trace: {offenders}"


def test_analyzers_never_import_torch():
    offenders = [p.relative_to(ROOT) for p in sources("analyzers") if "torch" in imports(p)]
    assert not offenders


def test_analyzers_import_without_torch_at_run_time():
    code = ("import sys, analyzers.monotonicity, analyzers.probes, analyzers.compare, analyzers.audit, analyzers.trace, "
            "analyzers.trace.arrays, analyzers.heads, analyzers.report.compare, analyzers.report.monotonicity; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_the_scanner_sees_imports_inside_functions():
    assert "h5py" in imports(ROOT / "analyzers" / "trace" / "reader.py")
    assert "peft" in imports(ROOT / "lpa_cli" / "training" / "finetune.py")  # imported inside a function only


RUN_WITHOUT_TORCH = """
import sys
from typer.testing import CliRunner
from lpa_cli.app import app
runner = CliRunner()
results = [runner.invoke(app, args) for args in {args!r}]
print([r.exit_code for r in results], 'torch' in sys.modules)
"""


def test_help_version_and_trace_analysis_never_load_torch(tmp_path):
    """Command modules import their library calls when they run: `lpa --help`, `lpa --version` and the
    commands given traces start without torch (it costs seconds to import)."""
    from lpa_cli.serving.trace import trace_checkpoint

    trace = tmp_path / "t.h5"
    trace_checkpoint(ROOT / "sample_checkpoints" / "mlp-stripe-lpa.safetensors", trace, limit=500)
    cfg = tmp_path / "audit.toml"
    cfg.write_text("[tool.lpa.audit]\nmonotone = true\n")
    args = [["--help"], ["--version"], ["train", "--help"], ["audit", str(trace), "--config", str(cfg), "--exit-zero", "--quiet"],
            ["monotonicity", str(trace), "--exit-zero", "--quiet"], ["info", str(trace)]]
    out = subprocess.run([sys.executable, "-c", RUN_WITHOUT_TORCH.format(args=args)], capture_output=True, text=True, check=True).stdout.split("]")
    assert out[0].strip("[ ") == ", ".join(["0"] * len(args)), out
    assert out[1].strip() == "False"


def test_registries_drive_the_help_text():
    from lpa_cli.registry import ARCHITECTURES, OBJECTIVES, WEIGHTINGS
    from tests.cli_helpers import run

    text = " ".join(run("train", "--help").stdout.split())
    for registry in (ARCHITECTURES, OBJECTIVES, WEIGHTINGS):
        for name in registry:
            assert name in text
