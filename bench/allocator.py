"""Does raising glibc's mmap/trim thresholds speed up CPU training here? Measured, not assumed.

Runs the same short training (residual MLP on the stripe, then a ResNet on digits) in fresh
processes with lpa's allocator tuning (the default) and without it (LPA_NO_MALLOPT=1), alternating,
and prints median step times and the speed-up.

    python bench/allocator.py [--quick]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

from common import quick_args, summary

ROOT = Path(__file__).resolve().parents[1]
CODE = """
import sys, time
sys.path.insert(0, {root!r})
from lpa_cli.allocator import tune_allocator
tuned = tune_allocator()
from lpa_cli.config import resolve
from lpa_cli.training.trainer import train
cfg = resolve(None, {{"train": {{"threads": 2, "steps": {steps}}}}}, {sets!r})
r = train(cfg)
print(tuned, r.training["seconds"] / {steps})
"""

CASES = {
    "mlp": ['model.depth=8', 'model.width=64', 'train.batch_size=512'],
    "resnet": ['model.arch="resnet"', 'task.name="digits"', 'model.depth=6', 'model.width=32', 'train.batch_size=128'],
}


def run(case: str, tuned: bool, steps: int) -> float:
    env = dict(os.environ)
    env.pop("LPA_NO_MALLOPT", None)
    if not tuned:
        env["LPA_NO_MALLOPT"] = "1"
    code = CODE.format(root=str(ROOT), steps=steps, sets=CASES[case])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()
    assert (out[0] == "True") == tuned, out
    return float(out[1])


def main() -> None:
    quick = quick_args(__doc__)
    repeats, steps = (2, 100) if quick else (4, 400)
    for case in CASES:
        times = {True: [], False: []}
        for _ in range(repeats):
            for tuned in (True, False):
                times[tuned].append(run(case, tuned, steps))
        on, off = statistics.median(times[True]), statistics.median(times[False])
        spread = {k: (max(v) - min(v)) / statistics.median(v) for k, v in times.items()}
        print(f"{case}: tuned {on * 1000:.2f} ms/step (spread {spread[True]:.0%}), glibc default {off * 1000:.2f} ms/step (spread {spread[False]:.0%})")
        summary(f"allocator.{case}.speedup", off / on, "glibc default / tuned; > 1 means the tuning helps")


if __name__ == "__main__":
    main()
