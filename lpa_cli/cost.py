"""What each depth costs: FLOPs per sample (counted by torch) and measured latency on this machine."""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lpa_cli.batch import Batch
from lpa_cli.models.protocol import ResidualModel


@torch.no_grad()
def depth_costs(model: ResidualModel, batch: Batch, repeats: int = 5) -> dict[str, list[float]]:
    """FLOPs per sample and milliseconds per sample of the prefix model at every depth 0..N.

    FLOPs count matrix multiplications and convolutions (2 per multiply-add) of embed, the first k
    blocks and the head; latency is the median of ``repeats`` timed runs on the batch ``x``.
    """
    model.eval()
    x, mask = batch.x, batch.mask
    flops, latency = [], []
    for k in range(model.num_depths):
        prefix = model.truncated(k)
        with FlopCounterMode(display=False) as counter:
            prefix(x[:1], None if mask is None else mask[:1])
        flops.append(float(counter.get_total_flops()))
        prefix(x, mask)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            prefix(x, mask)
            times.append(time.perf_counter() - t)
        latency.append(statistics.median(times) * 1000 / x.shape[0])
    return {"flops": flops, "latency_ms": latency}
