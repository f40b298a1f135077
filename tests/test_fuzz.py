"""Property-based fuzzing: mutated checkpoints, traces, TOML configs and data files may be refused,
but only with the toolkit's own error types (`LpaError`), never a crash or another exception.

The default suite runs the same 50 cases per loader every time; `pytest -m fuzz` (or `make fuzz`)
runs 1,000 new random ones each.
Inputs that once failed are kept in tests/fuzz_corpus/ and replayed on every run.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzers.audit import load_config
from lpa_core.errors import LpaError
from analyzers.trace import open_trace
from lpa_cli.models.open import load_checkpoint
from lpa_cli.config import TaskConfig, resolve
from lpa_cli.data.tasks import load_task
from lpa_cli.serving.trace import trace_checkpoint
from lpa_cli.training.trainer import train
from tests.conftest import tiny_run

CORPUS = Path(__file__).parent / "fuzz_corpus"
QUICK, FULL = 50, 1000
SETTINGS = dict(deadline=None, suppress_health_check=list(HealthCheck), database=None)


def _tiny_checkpoint(directory: Path) -> bytes:
    path = directory / "tiny.safetensors"
    if not path.exists():
        train(tiny_run(steps=2), path)
    return path.read_bytes()


def _tiny_trace(directory: Path) -> bytes:
    path = directory / "tiny.h5"
    if not path.exists():
        trace_checkpoint(directory / "tiny.safetensors", path, limit=20, states=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    ckpt = _tiny_checkpoint(d)
    trace = _tiny_trace(d)
    npz = io.BytesIO()
    np.savez(npz, x=np.zeros((10, 3), np.float32), y=np.arange(10) % 2)
    with h5py.File(d / "data.h5", "w") as f:
        f["x"], f["y"] = np.arange(30, dtype=np.float32).reshape(10, 3), np.arange(10) % 2
    return {"checkpoint": ckpt, "trace": trace, "npz": npz.getvalue(), "h5": (d / "data.h5").read_bytes(),
            "csv": b"a,b,c\n" + b"\n".join(b"%d,%d,%d" % (i, i * 2, i % 2) for i in range(12)),
            "toml": b'[model]\narch = "mlp"\ndepth = 2\nwidth = 8\n[objective]\nname = "lpa"\nweights = "sqrt"\n[train]\nsteps = 3\nlr = 0.01\n',
            "audit": b'[tool.lpa.audit]\nmonotone = true\nmax_error = { "1" = 0.5 }\n[tool.lpa.audit.overrides."*x*"]\nmax_deploy_depth = 2\n'}


def mutate(data: bytes, draw) -> bytes:
    """A few random edits: byte flips, a truncation, an insertion or a deleted span."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header"]))
        if not data:
            break
        if op == "flip":
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 32))]
        else:  # concentrate on the first bytes, where headers and lengths live
            i = draw(st.integers(0, min(len(data), 512) - 1))
            data[i] = draw(st.integers(0, 255))
    return bytes(data)


def _only_lpa_errors(fn) -> None:
    try:
        fn()
    except LpaError:
        pass


def _check_checkpoint(path: Path) -> None:
    _only_lpa_errors(lambda: load_checkpoint(path))


def _check_trace(path: Path) -> None:
    def read():
        with open_trace(path) as t:
            for name in t.error_names:
                t.errors(name)
            for ds in ("targets", "predictions", "states"):
                if t.has(ds):
                    t.read(ds)

    _only_lpa_errors(read)


def _check_toml(path: Path) -> None:
    _only_lpa_errors(lambda: resolve(path, {}, []))


def _check_audit(path: Path) -> None:
    _only_lpa_errors(lambda: load_config(path))


def _check_data(path: Path) -> None:
    _only_lpa_errors(lambda: load_task(TaskConfig(name=f"file:{path}")))


CHECKS = {"checkpoint": (".safetensors", _check_checkpoint), "trace": (".h5", _check_trace), "toml": (".toml", _check_toml),
          "audit": (".toml", _check_audit), "npz": (".npz", _check_data), "csv": (".csv", _check_data), "h5": (".h5", _check_data)}


def _fuzz(kind: str, examples: int, seeds, tmp_path_factory, derandomize: bool = False):
    suffix, check = CHECKS[kind]
    directory = tmp_path_factory.mktemp(f"fuzz-{kind}")

    @settings(max_examples=examples, derandomize=derandomize, **SETTINGS)
    @given(st.data())
    def run(data):
        mutated = mutate(seeds[kind], data.draw)
        path = directory / f"case{suffix}"
        path.write_bytes(mutated)
        try:
            check(path)
        except Exception:
            # keep the smallest failing input seen, as a regression test (hypothesis shrinks towards it)
            keep = CORPUS / kind
            keep.mkdir(parents=True, exist_ok=True)
            found = sorted(keep.glob(f"found*{suffix}"), key=lambda p: p.stat().st_size)
            if not found or len(mutated) < found[0].stat().st_size:
                for old in found:
                    old.unlink()
                (keep / f"found{suffix}").write_bytes(mutated)
            raise

    run()


@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_fuzz_quick(kind, seeds, tmp_path_factory):
    # the same cases on every run, so the default suite is reproducible; `make fuzz` explores
    _fuzz(kind, QUICK, seeds, tmp_path_factory, derandomize=True)


@pytest.mark.fuzz
@pytest.mark.parametrize("kind", sorted(CHECKS))
def test_fuzz_full(kind, seeds, tmp_path_factory):
    _fuzz(kind, int(os.environ.get("LPA_FUZZ_EXAMPLES", FULL)), seeds, tmp_path_factory)


@pytest.mark.parametrize("path", sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md"), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_regressions(path):
    CHECKS[path.parent.name][1](path)
