"""Streamed data at scale: memory and speed of training from token files and image folders.

Every figure comes from a fresh process running `lpa_cli.train.train` (peak RSS: ``ru_maxrss``;
samples/s: the training steps after a warm-up, timed through the trainer's ``on_step`` hook):

1. **Token files, memory.** A 2 GB and a 20 MB token file (uint16, the built-in corpus tokenised to
   bytes and repeated; written with the sidecar `lpa data tokenize` writes), the same LPA run on
   each through ``numpy.memmap`` (random windows over the whole file). Target: peak RSS of the 2 GB
   run <= 1.2x the 20 MB run's. Printed beside it: the process's RSS before training (torch and the
   model), which is the part of the peak no data source can remove.
2. **Token files, speed.** The same windows of the 20 MB file held in memory (one int64 tensor, the
   way the built-in text task holds them) and read from the memmap, in interleaved rounds. Target:
   memmap samples/s >= 0.95x in-memory. Beside it, the data path alone (batches/s of each, no model).
3. **Image folders.** 3,000 PNGs of 32x32 RGB in ten class folders, read with Pillow by 2 worker
   processes, against the same images decoded once into a tensor, training the built-in ResNet.
   Target: folder samples/s >= 0.9x in-memory. Beside it, the decode cost alone (images/s of one
   process reading the folder).

    python bench/data_scale.py [--quick]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import quick_args, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTEXT, BATCH = 256, 16  # token runs: 4,096 tokens a step
IMAGE_BATCH, IMAGES_PER_CLASS, CLASSES, SIDE = 64, 300, 10, 32


def write_token_file(path: Path, tokens: int, base: Path) -> None:
    """``tokens`` uint16 tokens: ``base``'s tokens repeated, with ``base``'s sidecar (count changed)."""
    from lpa_cli.tasks.tokens import sidecar

    src = np.fromfile(base, dtype="<u2")
    chunk = np.resize(src, 1 << 25)  # 64 MB a write
    with open(path, "wb") as f:
        left = tokens
        while left:
            n = min(left, chunk.size)
            f.write(chunk[:n].tobytes())
            left -= n
    meta = json.loads(sidecar(base).read_text())
    sidecar(path).write_text(json.dumps(meta | {"count": tokens}))


def write_image_folder(root: Path, per_class: int) -> None:
    """Ten classes of noisy coloured stripes at class-dependent angles, as PNG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    for c in range(CLASSES):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        angle = np.pi * c / CLASSES
        for i in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(12 * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
            rgb = np.stack([wave, np.roll(wave, c, axis=0), -wave], axis=-1) * 0.4 + 0.5 + rng.normal(0, 0.1, (SIDE, SIDE, 3))
            Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")


class _Clock:
    """Trainer callback: the time from the end of step ``warm`` to the last step."""

    def __init__(self, warm: int) -> None:
        from lpa_cli.trackers import Callbacks

        self.warm, self.t0, self.t1 = warm, None, None
        clock = self

        class Hook(Callbacks):
            def on_step(self, step: int, loss: float | None) -> None:
                if step == clock.warm:
                    clock.t0 = time.perf_counter()
                clock.t1 = time.perf_counter()

        self.hook = Hook()


def child(spec: dict) -> None:
    """One training run in this process; prints peak RSS and samples/s as JSON."""
    import dataclasses

    import torch

    from lpa_cli.allocator import tune_allocator
    from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
    from lpa_cli.tasks import load_task
    from lpa_cli.tasks.splits import TensorSplit, Windows
    from lpa_cli.train import train

    tune_allocator()
    steps, warm = spec["steps"], spec["warm"]
    if spec["kind"] == "tokens":
        model = ModelConfig(arch="gpt", depth=4, width=128)
        task_cfg = TaskConfig(name=f"tokens:{spec['path']}", options={"context": CONTEXT}, n_test=64)
        batch, workers = BATCH, 0
    else:
        model = ModelConfig(arch="resnet", depth=4, width=32)
        task_cfg = TaskConfig(name=f"folder:{spec['path']}")
        batch, workers = IMAGE_BATCH, spec.get("workers", 0)
    task = load_task(task_cfg)
    if spec["mode"] == "memory" and spec["kind"] == "tokens":  # the same windows, the tokens held as one tensor
        w = task.train
        held = torch.from_numpy(np.asarray(w.tokens, dtype=np.int64))
        task = dataclasses.replace(task, train=Windows(held, w.context, w.stride, w.start, w.start + w.count + w.context, w.sampling))
    elif spec["mode"] == "memory":  # every training image decoded once
        every = task.train.rows(0, len(task.train))
        task = dataclasses.replace(task, train=TensorSplit(every.x, every.y))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = RunConfig(model, task_cfg, ObjectiveConfig(name="lpa"),
                    TrainConfig(steps=steps, batch_size=batch, lr=1e-3, seed=0, threads=2, workers=workers, eval_samples=64))
    clock = _Clock(warm)
    train(cfg, None, task=task, callbacks=clock.hook)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"peak_bytes": peak, "before_bytes": before, "samples_s": (steps - warm) * batch / (clock.t1 - clock.t0)}))


def run(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "2"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child {spec} failed: {(proc.stderr.strip().splitlines() or ['killed'])[-1]}")
    return json.loads(lines[-1])


def data_path_rate(split, batch: int, draws: int) -> float:
    """Batches/s of ``split.batch`` alone over ``draws`` seeded random batches."""
    from lpa_cli.tasks.splits import batch_indices

    idx = [batch_indices(len(split), batch, 0, s, split.draw_rows()) for s in range(draws)]
    split.batch(idx[0])
    t = time.perf_counter()
    for i in idx:
        split.batch(i)
    return draws / (time.perf_counter() - t)


def mib(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(json.loads(sys.argv[2]))
        return
    quick = quick_args(__doc__)
    from lpa_cli.tasks.text import builtin_corpus
    from lpa_cli.tasks.tokens import tokenize_files

    big_tokens, small_tokens = (50 << 20, 10 << 20) if quick else (1 << 30, 10 << 20)  # uint16: 2 GiB / 100 MiB (quick) vs 20 MiB
    steps, warm, rounds = (20, 5, 1) if quick else (150, 20, 3)
    per_class = 30 if quick else IMAGES_PER_CLASS
    with tempfile.TemporaryDirectory(prefix="lpa-data-scale-", dir=os.environ.get("LPA_BENCH_TMP")) as tmp:
        root = Path(tmp)
        (root / "corpus.txt").write_bytes(builtin_corpus())
        tokenize_files([root / "corpus.txt"], "bytes", root / "base.bin")
        t = time.perf_counter()
        write_token_file(root / "big.bin", big_tokens, root / "base.bin")
        write_token_file(root / "small.bin", small_tokens, root / "base.bin")
        print(f"token files: {mib((root / 'big.bin').stat().st_size)} and {mib((root / 'small.bin').stat().st_size)} "
              f"written in {time.perf_counter() - t:.1f} s", flush=True)

        # 1 and 2: token files. Rounds interleave the variants so machine noise hits them alike.
        res: dict[str, list[dict]] = {"big": [], "small": [], "memory": []}
        for _ in range(rounds):
            res["big"].append(run({"kind": "tokens", "path": str(root / "big.bin"), "mode": "mmap", "steps": steps, "warm": warm}))
            res["small"].append(run({"kind": "tokens", "path": str(root / "small.bin"), "mode": "mmap", "steps": steps, "warm": warm}))
            res["memory"].append(run({"kind": "tokens", "path": str(root / "small.bin"), "mode": "memory", "steps": steps, "warm": warm}))
        for name, rows in res.items():
            print(f"tokens {name}: " + "; ".join(f"peak {mib(r['peak_bytes'])} (before training {mib(r['before_bytes'])}), "
                                                  f"{r['samples_s']:.0f} samples/s" for r in rows), flush=True)
        big, small = median([r["peak_bytes"] for r in res["big"]]), median([r["peak_bytes"] for r in res["small"]])
        floor = median([r["before_bytes"] for r in res["small"]])
        summary("data_scale.tokens.peak_rss", big / small, f"peak RSS {mib(big_tokens * 2)} file / {mib(small_tokens * 2)} file, target <= 1.2 "
                f"({mib(big)} vs {mib(small)}; {mib(floor)} of it is the process before training)", big / small <= 1.2)
        speed = median([m["samples_s"] / h["samples_s"] for m, h in zip(res["small"], res["memory"])])
        from lpa_cli.config import TaskConfig
        from lpa_cli.tasks import load_task
        from lpa_cli.tasks.splits import Windows

        import torch

        torch.set_num_threads(2)
        w = load_task(TaskConfig(name=f"tokens:{root / 'small.bin'}", options={"context": CONTEXT})).train
        held = Windows(torch.from_numpy(np.asarray(w.tokens, dtype=np.int64)), w.context, w.stride, w.start, w.start + w.count + w.context, w.sampling)
        draws = 200 if quick else 2000
        rate_mm, rate_mem = data_path_rate(w, BATCH, draws), data_path_rate(held, BATCH, draws)
        summary("data_scale.tokens.samples_s", speed, f"training samples/s, memmap / in memory (same windows), target >= 0.95; "
                f"data path alone {rate_mm:.0f} vs {rate_mem:.0f} batches/s ({rate_mm / rate_mem:.2f}x), against "
                f"{median([r['samples_s'] for r in res['memory']]) / BATCH:.0f} training steps/s", speed >= 0.95)

        # 3: image folders with 2 workers against the same images in memory.
        folder = root / "images"
        write_image_folder(folder, per_class)
        img: dict[str, list[dict]] = {"folder": [], "memory": []}
        for _ in range(rounds):
            img["folder"].append(run({"kind": "images", "path": str(folder), "mode": "folder", "workers": 2, "steps": steps, "warm": warm}))
            img["memory"].append(run({"kind": "images", "path": str(folder), "mode": "memory", "steps": steps, "warm": warm}))
        for name, rows in img.items():
            print(f"images {name}: " + "; ".join(f"{r['samples_s']:.0f} samples/s" for r in rows), flush=True)
        ratio = median([f["samples_s"] / m["samples_s"] for f, m in zip(img["folder"], img["memory"])])
        split = load_task(TaskConfig(name=f"folder:{folder}")).train
        decode = data_path_rate(split, IMAGE_BATCH, 10 if quick else 40) * IMAGE_BATCH
        summary("data_scale.images.samples_s", ratio, f"training samples/s, image folder (2 workers) / in-memory tensors, target >= 0.9; "
                f"decoding alone {decode:.0f} images/s in one process, training "
                f"{median([r['samples_s'] for r in img['memory']]):.0f} samples/s", ratio >= 0.9)


if __name__ == "__main__":
    main()
