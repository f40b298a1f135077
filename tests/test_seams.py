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
