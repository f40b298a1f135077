"""Streamed data at scale: memory and speed of training from token files and image folders.

1. **Token files, memory.** A 2 GB and a 20 MB token file (uint16, the built-in corpus tokenised to
   bytes and repeated; with the sidecar `lpa data tokenize` writes), the same LPA run of
   `lpa_cli.training.trainer.train` on each (random windows over the whole file), each in a fresh process,
   alternating, 3 rounds. Target: peak RSS (``ru_maxrss``) of the 2 GB run <= 1.2x the 20 MB run's.
   Printed beside it: the process's RSS before training (torch and the libraries), the part of the
   peak no data source can remove.
2. **Token files, speed.** One process trains the same model in alternating blocks of 10 steps, fed
   by lpa's own batch iterator from the token file or from the same windows held in memory (one int64
   tensor, as the built-in text task holds them), same step indices; the first block of each is
   warm-up. Target: token-file samples/s >= 0.95x in-memory. Beside it, the data path alone
   (batches/s of each source, no model), which bounds what the source can cost.
3. **Image folders.** 3,000 PNGs of 32x32 RGB in ten class folders, read with Pillow by 2 worker
   processes (`--workers 2`), against the same images decoded once into a tensor, training the
   built-in ResNet the same way as 2. Target: folder samples/s >= 0.9x in-memory. Beside it, the
   decode rate alone (images/s of one process reading the folder).

    python bench/data_scale.py [--quick]
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import quick_args, run_child, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONTEXT, BATCH = 256, 16  # token runs: 4,096 tokens a step
IMAGE_BATCH, IMAGES_PER_CLASS, CLASSES, SIDE = 64, 300, 10, 32


def write_token_file(path: Path, tokens: int, base: Path) -> None:
    """``tokens`` uint16 tokens: ``base``'s tokens repeated, with ``base``'s sidecar (count changed)."""
    from lpa_cli.data.tokens import sidecar

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


def in_memory(windows):
    """The same windows as ``windows`` (a token file's), the tokens held as one int64 tensor."""
    import torch

    from lpa_cli.data.splits import Windows

    w = windows
    return Windows(torch.from_numpy(np.asarray(w.tokens, dtype=np.int64)), w.context, w.stride, w.start, w.start + w.count + w.context, w.sampling)


def child(spec: dict) -> None:
    """`lpa_cli.training.trainer.train` on a token file in this process (evaluation on 64 windows); prints peak RSS."""
    from lpa_cli.allocator import tune_allocator
    from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
    from lpa_cli.training.trainer import train

    tune_allocator()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    cfg = RunConfig(ModelConfig(arch="gpt", depth=4, width=128), TaskConfig(name=f"tokens:{spec['path']}", options={"context": CONTEXT}),
                    ObjectiveConfig(name="lpa"), TrainConfig(steps=spec["steps"], batch_size=BATCH, lr=1e-3, seed=0, threads=2, eval_samples=64))
    train(cfg, None)
    print(json.dumps({"peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "before_bytes": before}))


def speed_child(spec: dict) -> None:
    """Training speed of two batch sources in one process, in alternating blocks of steps over the
    same step indices: the model, objective and Adam of the run, fed by lpa's own batch iterator
    (`lpa_cli.training.setup.batches`, worker processes included). Prints each source's samples/s."""
    import torch

    from lpa_cli.allocator import tune_allocator
    from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
    from lpa_cli.training.distributed import World
    from lpa_cli.models.open import build_initial_model, complete
    from lpa_cli.training.objectives import build_objective
    from lpa_cli.data.tasks import load_task
    from lpa_cli.data.splits import TensorSplit
    from lpa_cli.training.setup import batches as _batches

    tune_allocator()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    if spec["kind"] == "tokens":
        model_cfg, task_cfg, batch = ModelConfig(arch="gpt", depth=4, width=128), TaskConfig(name=f"tokens:{spec['path']}", options={"context": CONTEXT}), BATCH
    else:
        model_cfg, task_cfg, batch = ModelConfig(arch="resnet", depth=4, width=32), TaskConfig(name=f"folder:{spec['path']}"), IMAGE_BATCH
    task = load_task(task_cfg)
    split = task.train
    if spec["kind"] == "tokens":  # the same windows, the tokens held as one int64 tensor
        held = in_memory(split)
    else:  # every training image decoded once
        every = split.rows(0, len(split))
        held = TensorSplit(every.x, every.y)
    steps, block = spec["steps"], spec["block"]

    def cfg(workers: int) -> RunConfig:
        return RunConfig(model_cfg, task_cfg, ObjectiveConfig(name="lpa"), TrainConfig(steps=steps, batch_size=batch, seed=0, workers=workers))

    run_cfg = complete(cfg(0), task)
    model = build_initial_model(run_cfg, task)
    objective = build_objective(run_cfg.objective, model.num_blocks, task.kind)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    sources = {spec["names"][0]: _batches(split, cfg(spec["workers"]), 0, World(), False), spec["names"][1]: _batches(held, cfg(0), 0, World(), False)}
    times = {name: 0.0 for name in sources}
    done = 0
    for start in range(0, steps, block):
        for name, it in sources.items():
            t = time.perf_counter()
            for _ in range(min(block, steps - start)):
                b = next(it)
                loss = objective(model, b).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if start:  # the first block of each is the warm-up (workers starting, allocator)
                times[name] += time.perf_counter() - t
        done += min(block, steps - start) if start else 0
    print(json.dumps({name: done * batch / t for name, t in times.items()}))


def data_path_rate(split, batch: int, draws: int) -> float:
    """Batches/s of ``split.batch`` alone over ``draws`` seeded random batches."""
    from lpa_cli.data.splits import batch_indices

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
        spec = json.loads(sys.argv[2])
        (speed_child if "block" in spec else child)(spec)
        return
    quick = quick_args(__doc__)
    from lpa_cli.data.text import builtin_corpus
    from lpa_cli.data.tokens import tokenize_files

    big_tokens, small_tokens = (50 << 20, 10 << 20) if quick else (1 << 30, 10 << 20)  # uint16: 2 GiB / 100 MiB (quick) vs 20 MiB
    steps, rounds, block = (20, 1, 5) if quick else (100, 3, 10)
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

        # 1: peak RSS, fresh processes, the two file sizes alternating.
        res: dict[str, list[dict]] = {"big": [], "small": []}
        for _ in range(rounds):
            res["big"].append(run_child(__file__, {"path": str(root / "big.bin"), "steps": steps}))
            res["small"].append(run_child(__file__, {"path": str(root / "small.bin"), "steps": steps}))
        for name, rows in res.items():
            print(f"tokens {name}: " + "; ".join(f"peak {mib(r['peak_bytes'])} (before training {mib(r['before_bytes'])})" for r in rows), flush=True)
        big, small = median([r["peak_bytes"] for r in res["big"]]), median([r["peak_bytes"] for r in res["small"]])
        floor = median([r["before_bytes"] for r in res["small"]])
        summary("data_scale.tokens.peak_rss", big / small, f"peak RSS {mib(big_tokens * 2)} file / {mib(small_tokens * 2)} file, target <= 1.2 "
                f"({mib(big)} vs {mib(small)}; {mib(floor)} of it is the process before training)", big / small <= 1.2)

        # 2: speed, one process, blocks of steps alternating between the two sources.
        import torch

        from lpa_cli.config import TaskConfig
        from lpa_cli.data.tasks import load_task

        torch.set_num_threads(2)
        w = load_task(TaskConfig(name=f"tokens:{root / 'big.bin'}", options={"context": CONTEXT})).train
        small_w = load_task(TaskConfig(name=f"tokens:{root / 'small.bin'}", options={"context": CONTEXT})).train
        held = in_memory(small_w)
        draws = 200 if quick else 2000
        rate_mm, rate_mem = data_path_rate(w, BATCH, draws), data_path_rate(held, BATCH, draws)
        speed = run_child(__file__, {"kind": "tokens", "path": str(root / "small.bin"), "names": ["memmap", "memory"], "workers": 0,
                     "steps": steps * 2, "block": block})
        print(f"tokens speed: {json.dumps(speed)}", flush=True)
        ratio = speed["memmap"] / speed["memory"]
        summary("data_scale.tokens.samples_s", ratio, f"training samples/s, token file / the same windows in memory, target >= 0.95 "
                f"({speed['memmap']:.0f} vs {speed['memory']:.0f}); the data path alone: {rate_mm:.0f} batches/s from the {mib(big_tokens * 2)} file, "
                f"{rate_mem:.0f} from memory, i.e. {1000 / rate_mm:.2f} ms a batch against {BATCH * 1000 / speed['memory']:.0f} ms a step", ratio >= 0.95)

        # 3: image folders with 2 workers against the same images in memory.
        folder = root / "images"
        write_image_folder(folder, per_class)
        split = load_task(TaskConfig(name=f"folder:{folder}")).train
        decode = data_path_rate(split, IMAGE_BATCH, 10 if quick else 40) * IMAGE_BATCH
        img = run_child(__file__, {"kind": "images", "path": str(folder), "names": ["folder", "memory"], "workers": 2, "steps": steps * 2, "block": block})
        print(f"images speed: {json.dumps(img)}", flush=True)
        ratio = img["folder"] / img["memory"]
        summary("data_scale.images.samples_s", ratio, f"training samples/s, image folder (2 workers) / in-memory tensors, target >= 0.9 "
                f"({img['folder']:.0f} vs {img['memory']:.0f}); decoding alone {decode:.0f} images/s in one process", ratio >= 0.9)


if __name__ == "__main__":
    main()
