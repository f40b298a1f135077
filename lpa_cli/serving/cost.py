"""What each depth costs: FLOPs per sample (counted by torch) and measured latency on this machine."""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from lpa_cli.data.batch import Batch
from lpa_cli.models.protocol import ResidualModel, _call


@torch.no_grad()
def depth_costs(model: ResidualModel, batch: Batch, repeats: int = 5) -> dict[str, list[float]]:
    """FLOPs per sample and milliseconds per sample of the prefix model at every depth 0..N.

    FLOPs count matrix multiplications and convolutions (2 per multiply-add) of embed, the first k
    blocks and the head. Latency at depth k is embed + blocks 1..k + the head on h_k, each part timed
    inside one full pass (the median over ``repeats`` passes after a warm-up): what running the
    depth-k prefix costs, measured for every depth at the price of one pass instead of N+1.
    """
    model.eval()
    x, mask = batch.x, batch.mask
    flops = []
    for k in range(model.num_depths):
        with FlopCounterMode(display=False) as counter:
            model.truncated(k)(x[:1], None if mask is None else mask[:1])
        flops.append(float(counter.get_total_flops()))
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    passes = []
    for _ in range(repeats + 1):  # the first pass warms up
        sync()
        t = time.perf_counter()
        h = model.embed(x)
        sync()
        stream = time.perf_counter() - t  # embed + blocks so far
        totals = []
        for k in range(model.num_depths):
            if k:
                t = time.perf_counter()
                h = _call(model.blocks[k - 1], h, mask)
                sync()
                stream += time.perf_counter() - t
            t = time.perf_counter()
            model.read(h, mask)
            sync()
            totals.append(stream + time.perf_counter() - t)
        passes.append(totals)
    latency = [statistics.median(p[k] for p in passes[1:]) * 1000 / x.shape[0] for k in range(model.num_depths)]
    return {"flops": flops, "latency_ms": latency}
