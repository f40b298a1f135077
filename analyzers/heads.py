"""A model's shared head as numpy operations, so probes can read states without torch.

The torch side exports the head (`lpa_cli.models.protocol.export_head`) into the trace's ``/head``
group (`TraceWriter.write_head`): the attribute ``ops`` lists the operations, datasets hold their parameters. Supported ops:
``linear`` (last axis), ``layernorm`` and ``rmsnorm`` (last axis), ``groupnorm`` (channels on axis 1),
``relu``, ``mean`` (over axes), ``take`` (one index of an axis). The last op is always the read-out
``linear``; everything before it maps a state to the read-out's features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lpa_core.errors import TraceError


@dataclass
class Head:
    ops: list[dict[str, Any]]
    params: dict[str, np.ndarray]
    feature_axis: int

    def features(self, h: np.ndarray) -> np.ndarray:
        """Everything before the final linear: state -> read-out features (last axis)."""
        return apply_ops(self.ops[:-1], self.params, h)

    def __call__(self, h: np.ndarray) -> np.ndarray:
        return apply_ops(self.ops, self.params, h)

    @property
    def readout(self) -> tuple[np.ndarray, np.ndarray | None]:
        last = self.ops[-1]
        return self.params[last["weight"]], self.params.get(last.get("bias", ""))


def apply_ops(ops: list[dict[str, Any]], params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    for op in ops:
        kind = op["op"]
        if kind == "linear":
            x = x @ params[op["weight"]].T
            if "bias" in op:
                x = x + params[op["bias"]]
        elif kind == "layernorm":
            mu = x.mean(axis=-1, keepdims=True)
            var = x.var(axis=-1, keepdims=True)
            x = (x - mu) / np.sqrt(var + op["eps"])
            x = _affine(x, op, params, -1)
        elif kind == "rmsnorm":
            x = x / np.sqrt((x.astype(np.float32) ** 2).mean(axis=-1, keepdims=True) + op["eps"])
            x = _affine(x, op, params, -1)
        elif kind == "groupnorm":
            n, c = x.shape[:2]
            g = x.reshape(n, op["groups"], -1)
            g = (g - g.mean(axis=-1, keepdims=True)) / np.sqrt(g.var(axis=-1, keepdims=True) + op["eps"])
            x = _affine(g.reshape(x.shape), op, params, 1)
        elif kind == "relu":
            x = np.maximum(x, 0)
        elif kind == "mean":
            x = x.mean(axis=tuple(op["axes"]))
        elif kind == "take":
            x = np.take(x, op["index"], axis=op["axis"])
        else:
            raise TraceError(f"unknown head op {kind!r} (written by a newer lpa?)")
    return x


def _affine(x: np.ndarray, op: dict, params: dict[str, np.ndarray], axis: int) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis] = -1
    if "weight" in op:
        x = x * params[op["weight"]].reshape(shape)
    if "bias" in op:
        x = x + params[op["bias"]].reshape(shape)
    return x


def read_head(trace) -> Head:
    """The head stored in an open trace (`analyzers.trace.Trace`)."""
    spec, params = trace.head()
    try:
        return Head(list(spec["ops"]), params, int(spec["feature_axis"]))
    except (KeyError, ValueError, TypeError) as err:
        raise TraceError(f"{trace.path}: malformed head group ({err})") from None
