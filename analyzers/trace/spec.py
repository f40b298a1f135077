"""What a trace holds, fixed before its first sample is written: shapes, settings and the format's
constants (the layout is described in docs/trace-format.md)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lpa_core.errors import UsageError

FORMAT = "lpa-trace"
FORMAT_VERSION = 2  # 2: the trajectory group (version 1 traces, without it, still read)
COMPRESSIONS = ("none", "gzip", "lzf")
CHUNK_BYTES = 1 << 20
KINDS = ("regression", "classification", "lm")
# trajectory/<name> datasets per task kind (format 2): name -> dtype; LMs hold them per token too
# (`<name>_token`, (n, D, T)), and their arg-max only per token
TRAJECTORY: dict[str, dict[str, str]] = {
    "regression": {"alignment": "float32"},
    "classification": {"kl_to_final": "float32", "alignment": "float32", "prediction": "int32"},
    "lm": {"kl_to_final": "float32", "alignment": "float32", "kl_to_final_token": "float32", "alignment_token": "float32",
           "prediction_token": "int32"},
}


def partial_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(output.name + ".partial")


@dataclass
class TraceSpec:
    """Shapes and attributes of a trace, fixed before the first sample is written."""

    n: int
    depths: list[int]
    kind: str
    target_shape: tuple[int, ...]
    target_dtype: str
    pred_shape: tuple[int, ...] | None  # None: predictions not stored
    state_shape: tuple[int, ...] | None  # None: states not stored
    error_names: tuple[str, ...]
    token_len: int = 0  # LMs: sequence length T (per-token datasets)
    confidence: bool = False
    trajectory: bool = False  # format 2's trajectory group (without it the file is a format-1 trace)
    dtype: str = "float32"
    compression: str = "none"
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def target_size(self) -> int:
        return math.prod(self.target_shape)

    def datasets(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Name -> (shape, dtype) of every dataset the trace holds."""
        D = len(self.depths)
        out: dict[str, tuple[tuple[int, ...], str]] = {"targets": ((self.n, *self.target_shape), self.target_dtype)}
        if self.pred_shape is not None:
            out["predictions"] = ((self.n, D, *self.pred_shape), self.dtype)
        for name in self.error_names:
            out[f"errors/{name}"] = ((self.n, D), "float32")
            if self.token_len:
                out[f"errors/{name}_token"] = ((self.n, D, self.token_len), "float32")
        if self.confidence:
            tail = (self.token_len,) if self.token_len else ()
            out["confidence/max_prob"] = ((self.n, D, *tail), "float32")
            out["confidence/entropy"] = ((self.n, D, *tail), "float32")
        if self.trajectory:
            for name, dtype in TRAJECTORY[self.kind].items():
                out[f"trajectory/{name}"] = ((self.n, D, self.token_len) if name.endswith("_token") else (self.n, D), dtype)
        if self.state_shape is not None:
            out["states"] = ((self.n, D, *self.state_shape), self.dtype)
        return out

    def identity(self) -> dict[str, Any]:
        """What `--resume` compares: shapes, settings, the model and the data traced."""
        a = self.attrs
        return json.loads(json.dumps({
            "n": self.n, "depths": self.depths, "datasets": {k: [list(v[0]), v[1]] for k, v in self.datasets().items()},
            "compression": self.compression, "source": a.get("checkpoint_sha256", ""), "split": a.get("split", ""),
            "data": a.get("data_id", ""),
        }))


def filters(compression: str) -> dict[str, Any]:
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r}; expected none, gzip or lzf")
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4}
    return {"compression": "lzf"}


def chunk_shape(shape: tuple[int, ...], itemsize: int, chunk_bytes: int = CHUNK_BYTES) -> tuple[int, ...]:
    """Chunk along the sample axis only, about ``chunk_bytes`` each (at least one sample)."""
    per_sample = max(1, math.prod(shape[1:]) * itemsize)
    rows = max(1, min(shape[0], chunk_bytes // per_sample))
    return (rows, *shape[1:])


def jsonable(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    return value
