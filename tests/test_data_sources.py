"""Data that need not fit in memory: token files read through numpy.memmap, image folders read with
Pillow, lazily read .npy/.h5 arrays, worker processes, and evaluation on a fixed subset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lpa_core.errors import DataError
from lpa_cli.config import TaskConfig
from lpa_cli.data.tasks import data_spec, load_task
from lpa_cli.data.splits import MappedArray, Windows
from lpa_cli.data.text import builtin_corpus
from lpa_cli.formats.tokenizer import load_tokenizer
from tests.cli_helpers import TINY_TRAIN, assert_clean_error, run, run_json

GPT = ["--arch", "gpt", "--depth", "2", "--width", "16", "--set", "model.options.heads=2", "--steps", "6", "--batch-size", "4",
       "--threads", "1", "--set", "task.options.context=16", "--set", "task.n_test=4"]


def _texts(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    text = builtin_corpus().decode()
    (folder / "a.txt").write_text(text[:40000])
    (folder / "b.txt").write_text(text[40000:60000])
    return folder, text


def test_tokenize_bytes_round_trip_and_train(tmp_path):
    folder, text = _texts(tmp_path)
    out = tmp_path / "corpus.bin"
    info = run_json("data", "tokenize", folder, "-o", out)
    side = json.loads((tmp_path / "corpus.bin.json").read_text())
    assert side["dtype"] == "uint16" and side["count"] == info["tokens"] == 60000 and side["documents"] == 2
    tokens = np.memmap(out, dtype="<u2", mode="r")
    assert bytes(tokens.astype(np.uint8)) == (text[:40000] + text[40000:60000]).encode()  # bytes have no end-of-text token
    assert data_spec(str(out)) == f"tokens:{out}"
    result = run_json("train", *GPT, "--data", out, "-o", tmp_path / "m.safetensors")
    assert result["task"]["kind"] == "lm" and result["task"]["out_dim"] == 256
    assert run("trace", tmp_path / "m.safetensors", "-o", tmp_path / "t.h5", "--quiet").exit_code == 0


def test_tokenize_with_a_bpe_tokenizer(tmp_path):
    pytest.importorskip("tokenizers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    from tests.test_hf import bpe_tokenizer

    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    bpe_tokenizer(tok_dir)
    folder, text = _texts(tmp_path)
    out = tmp_path / "bpe.bin"
    run_json("data", "tokenize", folder / "a.txt", folder / "b.txt", "--tokenizer", tok_dir, "-o", out)
    side = json.loads(out.with_name("bpe.bin.json").read_text())
    tok = load_tokenizer(tok_dir)
    ids = np.memmap(out, dtype="<u2", mode="r").tolist()
    assert side["vocab_size"] == tok.vocab_size == 300
    assert tok.decode(ids) == text[:40000] + text[40000:60000]
    ckpt = tmp_path / "bpe.safetensors"
    run_json("train", *GPT, "--data", out, "-o", ckpt)
    from lpa_cli.formats.checkpoint import read_info
    from lpa_cli.formats.tokenizer import read_tokenizer

    assert read_tokenizer(read_info(ckpt)).vocab_size == 300  # stored for generation


def test_token_files_sample_windows_with_memmap_deterministically(tmp_path):
    out = tmp_path / "c.bin"
    run_json("data", "tokenize", _texts(tmp_path)[0], "-o", out)
    task = load_task(TaskConfig(name=f"tokens:{out}", options={"context": 32}))
    assert task.train.sampling == "random" and isinstance(task.train.tokens, MappedArray)
    from lpa_cli.data.splits import batch_indices

    idx = batch_indices(len(task.train), 8, 0, 5, "random")
    assert torch.equal(idx, batch_indices(len(task.train), 8, 0, 5, "random"))
    b = task.train.batch(idx)
    tokens = np.memmap(out, dtype="<u2", mode="r")
    for row, start in zip(b.x, idx.tolist()):
        assert row.tolist() == tokens[start : start + 32].tolist()
    assert torch.equal(b.x[:, 1:], b.y[:, :-1])

    held = Windows(torch.from_numpy(np.asarray(tokens, dtype=np.int64)), 32, 1, 0, task.train.count + 32)
    h = held.batch(idx)
    assert torch.equal(h.x, b.x) and torch.equal(h.y, b.y) and b.x.dtype == h.x.dtype == torch.int64


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
def test_token_and_npy_reads_leave_no_mapping_behind(tmp_path):
    """A map kept open holds every page it touched in RSS; reads must unmap (and pickle for workers)."""
    import pickle

    out = tmp_path / "c.bin"
    run_json("data", "tokenize", _texts(tmp_path)[0], "-o", out)
    task = load_task(TaskConfig(name=f"tokens:{out}", options={"context": 16}))
    b = task.train.batch(torch.arange(4))
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    np.save(tmp_path / "d.npy", x)
    np.save(tmp_path / "d.y.npy", np.arange(20) % 2)
    arrays = load_task(TaskConfig(name=f"file:{tmp_path / 'd.npy'}"))
    rows = arrays.train.batch(torch.arange(3))
    maps = Path("/proc/self/maps").read_text()
    assert str(out) not in maps and "d.npy" not in maps
    assert torch.equal(pickle.loads(pickle.dumps(task.train)).batch(torch.arange(4)).x, b.x)
    assert torch.equal(rows.x, torch.from_numpy(x[arrays.train.rows_index[:3]]))


def test_bad_token_files(tmp_path):
    out = tmp_path / "c.bin"
    run_json("data", "tokenize", _texts(tmp_path)[0], "-o", out)
    ckpt = tmp_path / "m.safetensors"
    data = out.read_bytes()
    out.write_bytes(data[:-10])  # truncated
    assert_clean_error(run("train", *GPT, "--data", out, "-o", ckpt), "truncated")
    out.write_bytes(data)
    side = out.with_name("c.bin.json")
    meta = json.loads(side.read_text())
    side.write_text(json.dumps(meta | {"count": meta["count"] + 1}))
    assert_clean_error(run("train", *GPT, "--data", out, "-o", ckpt), "sidecar says")
    side.unlink()
    assert_clean_error(run("train", *GPT, "--data", out, "-o", ckpt), "no sidecar")
    assert not ckpt.exists()
    assert_clean_error(run("data", "tokenize", tmp_path / "none.txt", "-o", tmp_path / "x.bin"), "not found")
    assert not (tmp_path / "x.bin").exists()


def _folder(tmp_path, classes=("disc", "square"), per_class=12, size=12):
    from PIL import Image

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            yy, xx = np.mgrid[:size, :size]
            shape = ((yy - 6) ** 2 + (xx - 6) ** 2 < 16) if c == 0 else ((abs(yy - 6) < 4) & (abs(xx - 6) < 4))
            img = (shape * 200 + rng.integers(0, 40, (size, size))).astype(np.uint8)
            Image.fromarray(np.stack([img] * 3, axis=-1)).save(root / name / f"{i}.png")
    return root


def test_image_folder_trains_with_workers(tmp_path):
    pytest.importorskip("PIL", reason="image folders need Pillow (pip install 'lpa[images]')")
    root = _folder(tmp_path)
    task = load_task(TaskConfig(name=data_spec(str(root))))
    assert task.kind == "classification" and task.in_shape == (3, 12, 12) and task.meta["classes"] == ["disc", "square"]
    x, y = task.test.tensors()
    assert x.shape == (5, 3, 12, 12) and 0 <= float(x.min()) and float(x.max()) <= 1
    args = ["--arch", "resnet", "--depth", "2", "--width", "8", "--steps", "8", "--batch-size", "8", "--threads", "1", "--data", root]
    a = run_json("train", *args, "-o", tmp_path / "a.safetensors")
    b = run_json("train", *args, "--workers", "2", "-o", tmp_path / "b.safetensors")
    assert a["metrics"] == b["metrics"]  # the same batches, gathered by worker processes


def test_bad_image_folders(tmp_path):
    pytest.importorskip("PIL", reason="image folders need Pillow (pip install 'lpa[images]')")
    root = _folder(tmp_path, classes=("only",))
    assert_clean_error(run("train", *TINY_TRAIN, "--arch", "resnet", "--data", root, "-o", tmp_path / "m.safetensors"), "two class folders")
    root2 = _folder(tmp_path / "two")
    (root2 / "disc" / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert_clean_error(run("train", *TINY_TRAIN, "--arch", "resnet", "--data", root2, "-o", tmp_path / "m.safetensors"), "5.png", "unreadable image")
    assert not (tmp_path / "m.safetensors").exists()


def test_lazy_arrays_give_the_in_memory_batches(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    np.save(tmp_path / "d.npy", x)
    np.save(tmp_path / "d.y.npy", y)
    import h5py

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["x"], f["y"] = x, y
    np.savez(tmp_path / "d.npz", x=x, y=y)
    memory = load_task(TaskConfig(name=f"file:{tmp_path / 'd.npz'}"))
    for name, options in (("d.npy", {}), ("d.h5", {"lazy": True})):
        lazy = load_task(TaskConfig(name=f"file:{tmp_path / name}", options=options))
        assert lazy.description.endswith("read lazily") and lazy.out_dim == 2
        idx = torch.tensor([5, 1, 1, 200])
        a, b = lazy.train.batch(idx), memory.train.batch(idx)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    result = run_json("train", *TINY_TRAIN, "--data", tmp_path / "d.npy", "--workers", "1", "-o", tmp_path / "m.safetensors")
    assert result["task"]["kind"] == "classification"


def test_huge_declared_sizes_are_refused_before_reading(tmp_path):
    import h5py

    with h5py.File(tmp_path / "bomb.h5", "w") as f:  # a few KB of file declaring 2^44 bytes of zeros
        f.create_dataset("x", shape=(2**40, 4), dtype="f4", chunks=(1024, 4), compression="gzip")
        f.create_dataset("y", shape=(2**40,), dtype="i8", chunks=(1024,), compression="gzip")
    with pytest.raises(DataError, match="never written|TiB"):
        load_task(TaskConfig(name=f"file:{tmp_path / 'bomb.h5'}"))


def test_evaluation_on_a_fixed_subset(tmp_path):
    out = tmp_path / "m.safetensors"
    full = run_json("train", *TINY_TRAIN, "-o", out)
    part = run_json("train", *TINY_TRAIN, "--eval-samples", "16", "-o", tmp_path / "p.safetensors")
    assert full["metrics"]["mse"] != part["metrics"]["mse"]
    from lpa_cli.models.open import load_checkpoint
    from lpa_cli.training.evaluate import evaluate

    c = load_checkpoint(tmp_path / "p.safetensors")
    test = load_task(c.config.task).test
    rows = torch.linspace(0, len(test) - 1, 16).round().long()
    x, y = test.tensors()
    with torch.no_grad():
        se = [((p - y[rows]) ** 2).mean().item() for p in c.model.predictions(x[rows])]
    assert part["metrics"]["mse"] == pytest.approx(se, rel=1e-5)
    assert evaluate(c.model, test, "regression", samples=16)["mse"] == pytest.approx(se, rel=1e-5)
