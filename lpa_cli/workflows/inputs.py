"""Inputs of the analysis commands: a trace is used as it is; a checkpoint is traced first.

The analysis side has one code path and it starts from a trace (docs/design.md).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lpa_core.errors import UsageError
from analyzers.trace import is_trace


@contextlib.contextmanager
def as_trace(path: str | Path, verify: bool = True, states: bool = False, predictions: bool | str = False, *, factory: str = "",
             trust_factory: bool = False, data: str | None = None) -> Iterator[Path]:
    """Yield a trace path for ``path``: itself, or a temporary trace of a checkpoint's test split, or of
    ``data`` (``factory``/``trust_factory``: as `lpa_cli.models.open.load_checkpoint`).

    ``predictions="auto"`` keeps per-depth predictions except for language models (whose logits are
    large and whose analyses need only errors and confidences).
    """
    path = Path(path)
    if is_trace(path):
        if data:
            raise UsageError(f"{path}: a trace was made on its data already; --data goes with a checkpoint")
        yield path
        return
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    from lpa_cli.models.open import source_kind  # torch: only once the input is not already a trace
    from lpa_cli.serving.trace import trace_checkpoint

    if source_kind(path, "input") == "hf":
        raise UsageError(f"{path}: trace Hugging Face models first with `lpa trace {path}`, then pass the .h5 file")

    with tempfile.TemporaryDirectory(prefix="lpa-") as tmp:
        out = Path(tmp) / (path.stem + ".test.h5")
        if predictions == "auto":
            from lpa_cli.formats.checkpoint import read_info

            predictions = read_info(path).task["kind"] != "lm"
        trace_checkpoint(path, out, data=data, verify=verify, predictions=bool(predictions), states=states, factory=factory,
                         trust_factory=trust_factory)
        yield out
