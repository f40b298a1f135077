"""Speed and memory of `lpa monotonicity` on a large synthetic trace.

Builds a trace of N samples x 17 depths (default 1M) as `lpa trace` writes a regression trace (format 2:
the errors and each step's alignment), then times, side by side in one run, the full monotonicity
analysis (bootstrap included; the trajectory's statistics too) against a plain numpy computation of
just the per-depth means of the same two datasets (the floor: reading what the curves summarise).
Target: ratio <= 3. Then checks that peak RSS at 1M samples is within 1.5x
of that at 100k (chunked reads).

    python bench/analysis.py [--quick]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import interleaved, quick_args, summary, tune_allocator

from analyzers.monotonicity import from_trace
from analyzers.trace import TraceSpec, TraceWriter, open_trace

DEPTHS = 17


def build(path: Path, n: int) -> None:
    """A complete synthetic regression trace: errors fall with depth, plus noise."""
    spec = TraceSpec(n=n, depths=list(range(DEPTHS)), kind="regression", target_shape=(1,), target_dtype="float32",
                     pred_shape=None, state_shape=None, error_names=("se",), trajectory=True, attrs={"target_var": 1.0})
    writer = TraceWriter(path, spec, force=True)
    rng = np.random.default_rng(0)
    curve = np.geomspace(1.0, 1e-3, DEPTHS)
    for start in range(0, n, 65536):
        rows = min(65536, n - start)
        se = (curve * rng.exponential(1.0, size=(rows, DEPTHS))).astype(np.float32)
        align = rng.uniform(-1, 1, size=(rows, DEPTHS)).astype(np.float32)
        align[:, 0] = np.nan  # no step into depth 0
        writer.append({"errors/se": se, "trajectory/alignment": align, "targets": np.zeros((rows, 1), np.float32)})
    writer.finish()


def plain_means(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open_trace(path) as t:
        return t.errors("se").mean(axis=0), t.read("trajectory/alignment")[:, 1:].mean(axis=0)


def monotonicity(path: Path):
    with open_trace(path) as t:
        return from_trace(t, bootstrap=1000)


def peak_rss(path: Path) -> float:
    """Peak RSS (MB) of a fresh process that runs the analysis."""
    code = (
        "import sys; sys.path.insert(0, %r); sys.path.insert(0, %r)\n"
        "from analysis import monotonicity, tune_allocator; from pathlib import Path\n"
        "assert 'torch' not in sys.modules; tune_allocator()\n"
        "monotonicity(Path(%r))\n"
        "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    ) % (str(Path(__file__).parent), str(Path(__file__).parents[1]), str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1]) / 1024


def main() -> None:
    tune_allocator()  # as `lpa monotonicity` does at start-up
    large, small = (100_000, 10_000) if quick_args(__doc__) else (1_000_000, 100_000)
    with tempfile.TemporaryDirectory(prefix="lpa-bench-") as d:
        big, little = Path(d) / "big.h5", Path(d) / "small.h5"
        build(big, large)
        build(little, small)
        t = interleaved({"means": lambda: plain_means(big), "monotonicity": lambda: monotonicity(big)}, repeats=3)
        ratio = t["monotonicity"] / t["means"]
        print(f"{large:,} samples x {DEPTHS} depths: plain means {t['means']:.3f}s, monotonicity {t['monotonicity']:.3f}s")
        summary("analysis.time_ratio", ratio, "target <= 3 vs plain numpy means, bootstrap included", ratio <= 3)
        r_large, r_small = peak_rss(big), peak_rss(little)
        print(f"peak RSS: {r_small:.0f} MB at {small:,}, {r_large:.0f} MB at {large:,}")
        summary("analysis.rss_ratio", r_large / r_small, "target <= 1.5", r_large / r_small <= 1.5)


if __name__ == "__main__":
    main()
