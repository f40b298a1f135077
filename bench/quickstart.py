"""Wall time of the README's main command (`lpa train --force`, everything at defaults) on a machine
where set-up is already done.

    python bench/quickstart.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import summary


def main() -> None:
    lpa = Path(sys.executable).with_name("lpa")
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        subprocess.run([str(lpa), "train", "--force", "--quiet"], cwd=d, check=True)
        seconds = time.perf_counter() - t
    summary("quickstart.seconds", seconds, "the README's main command, set-up done")


if __name__ == "__main__":
    main()
