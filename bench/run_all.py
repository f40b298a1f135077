"""Run every benchmark (with --quick: tiny sizes, a smoke test that they run) and collect the
summary lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ["train_overhead.py", "train_throughput.py", "allocator.py", "trace_overhead.py", "analysis.py", "lm_memory.py", "lm_cost.py", "gpu_step.py", "finetune.py",
           "data_scale.py", "inference.py",
           "quickstart.py"]


def main() -> int:
    extra = [a for a in sys.argv[1:] if a == "--quick"]
    failed = 0
    for script in SCRIPTS:
        args = extra if script != "quickstart.py" else []
        print(f"== {script} {' '.join(args)}", flush=True)
        proc = subprocess.run([sys.executable, str(HERE / script), *args], cwd=HERE)
        failed += proc.returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
