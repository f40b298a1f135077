"""The bad-input matrix of the surfaces added in 0.2.0 (Hugging Face directories, token files, image
folders, trackers, generation and prediction, training at scale): one test per row, each a clear
one-line error with exit 2 — never a traceback, a hang, a destroyed file or a silently wrong result.
The 0.1 surfaces are in test_bad_inputs.py; what a checkpoint may run is in test_trust.py."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from tests.cli_helpers import TINY_TRAIN, assert_clean_error, run, run_json

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
GPT = SAMPLES / "gpt-text-lpa.safetensors"
GPT_TRAIN = ["--arch", "gpt", "--depth", "2", "--width", "16", "--steps", "2", "--batch-size", "4", "--threads", "1",
             "--set", "task.options.context=16"]


def _tokens(tmp_path, text="the cat sat on the mat. " * 40):
    (tmp_path / "t.txt").write_text(text)
    out = tmp_path / "c.bin"
    run_json("data", "tokenize", tmp_path / "t.txt", "-o", out)
    return out


# --- token files ----------------------------------------------------------------------------------


def test_tokenize_refuses_what_is_not_a_regular_file(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for source in (Path("/dev/zero"), fifo):
        assert_clean_error(run("data", "tokenize", source, "-o", tmp_path / "x.bin"), str(source), "not a regular file")
    assert not (tmp_path / "x.bin").exists()


def test_training_data_that_is_not_a_regular_file_is_refused(tmp_path):
    fifo = tmp_path / "data.bin"
    os.mkfifo(fifo)
    assert_clean_error(run("train", *GPT_TRAIN, "--data", fifo, "-o", tmp_path / "m.safetensors"), "not a regular file")
    fifo_txt = tmp_path / "notes.txt"
    os.mkfifo(fifo_txt)
    assert_clean_error(run("train", *GPT_TRAIN, "--data", fifo_txt, "-o", tmp_path / "m.safetensors"), "not a regular file")


def test_tokenize_never_writes_over_its_own_input(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("some text " * 20)
    before = src.read_bytes()
    assert_clean_error(run("data", "tokenize", src, "-o", src, "--force"), "is the input")
    assert src.read_bytes() == before


def test_token_ids_beyond_the_vocabulary_are_found_up_front(tmp_path):
    out = _tokens(tmp_path)
    ids = np.fromfile(out, dtype="<u2")
    ids[123] = 300  # a byte tokenizer has 256 (+ specials) ids
    ids.tofile(out)
    result = run("train", *GPT_TRAIN, "--data", out, "-o", tmp_path / "m.safetensors")
    assert_clean_error(result, str(out), "300", "position 123", "vocabulary")
    assert not (tmp_path / "m.safetensors").exists()


def test_a_sidecar_declaring_a_huge_vocabulary_is_refused_before_allocating(tmp_path):
    out = _tokens(tmp_path)
    side = out.with_name(out.name + ".json")
    side.write_text(json.dumps(json.loads(side.read_text()) | {"vocab_size": 10**9}))
    assert_clean_error(run("train", *GPT_TRAIN, "--data", out, "-o", tmp_path / "m.safetensors"), "vocab", "1000000000")


@pytest.mark.parametrize("case", ["empty", "odd", "short"])
def test_empty_odd_sized_and_short_token_files(tmp_path, case):
    out = _tokens(tmp_path)
    side = out.with_name(out.name + ".json")
    meta = json.loads(side.read_text())
    if case == "empty":
        out.write_bytes(b"")
        side.write_text(json.dumps(meta | {"count": 0}))
        needle = "too few"
    elif case == "odd":
        out.write_bytes(out.read_bytes() + b"\x01")
        needle = "bytes"
    else:
        out.write_bytes(out.read_bytes()[:20])
        side.write_text(json.dumps(meta | {"count": 10}))
        needle = "too few"
    assert_clean_error(run("train", *GPT_TRAIN, "--data", out, "-o", tmp_path / "m.safetensors"), needle)


# --- Hugging Face directories ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    import torch

    transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=32)
    path = tmp_path_factory.mktemp("llama") / "m"
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path)
    from tests.test_hf import bpe_tokenizer

    bpe_tokenizer(path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _config(d: Path, **changes) -> None:
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps(cfg | changes))


@pytest.mark.parametrize("key,value", [("hidden_size", 10**9), ("num_hidden_layers", -3), ("vocab_size", 10**12),
                                       ("intermediate_size", 0), ("num_attention_heads", 5)])
def test_hf_config_sizes_are_checked_before_any_allocation(llama, tmp_path, key, value):
    d = _copy(llama, tmp_path / "m")
    _config(d, **{key: value})
    assert_clean_error(run("trace", d, "--context", "8", "-o", tmp_path / "t.h5"), "config")
    assert not (tmp_path / "t.h5").exists()


def test_hf_config_nested_too_deeply(llama, tmp_path):
    d = _copy(llama, tmp_path / "m")
    (d / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert_clean_error(run("trace", d), "config.json")


@pytest.mark.parametrize("case", ["missing", "extra", "misshaped"])
def test_hf_weights_that_do_not_fit_the_config(llama, tmp_path, case):
    from safetensors.torch import load_file, save_file

    d = _copy(llama, tmp_path / "m")
    w = load_file(str(d / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    if case == "missing":
        del w[name]
    elif case == "extra":
        w["model.layers.7.mlp.up_proj.weight"] = w[name].clone()
    else:
        w[name] = w[name][:, :5].contiguous()
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert_clean_error(run("trace", d, "--context", "8", "-o", tmp_path / "t.h5"))


@pytest.mark.parametrize("case", ["int32", "nan"])
def test_hf_weights_must_be_finite_floats(llama, tmp_path, case):
    import torch
    from safetensors.torch import load_file, save_file

    d = _copy(llama, tmp_path / "m")
    w = load_file(str(d / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    if case == "int32":
        w[name] = w[name].to(torch.int32)
    else:
        w[name][0, 0] = float("nan")
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert_clean_error(run("trace", d, "--context", "8", "-o", tmp_path / "t.h5"), name, "int32" if case == "int32" else "not finite")
    assert not (tmp_path / "t.h5").exists()


def test_hf_malformed_tokenizer_json(llama, tmp_path):
    d = _copy(llama, tmp_path / "m")
    (d / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": 7}}')
    assert_clean_error(run("trace", d, "--context", "8"), "tokenizer")


def test_hf_tokenizer_larger_than_the_model_vocabulary(llama, tmp_path):
    d = _copy(llama, tmp_path / "m")
    _config(d, vocab_size=200)
    from safetensors.torch import load_file, save_file

    w = {k: (v[:200].contiguous() if v.shape[0] == 300 else v) for k, v in load_file(str(d / "model.safetensors")).items()}
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    assert_clean_error(run("trace", d, "--context", "8", "-o", tmp_path / "t.h5"), "tokenizer", "300", "200")
    (tmp_path / "d.txt").write_text("the cat sat on the mat " * 50)
    assert_clean_error(run("train", "--init", d, "--data", tmp_path / "d.txt", "--steps", "1", "-o", tmp_path / "m.safetensors"),
                       "300", "200")


def test_hf_symlinks_out_of_the_directory(llama, tmp_path):
    d = _copy(llama, tmp_path / "m")
    outside = tmp_path / "elsewhere.safetensors"
    (d / "model.safetensors").rename(outside)
    (d / "model.safetensors").symlink_to(outside)
    assert_clean_error(run("trace", d, "--context", "8", "-o", tmp_path / "t.h5"), "a link out of", "blobs")
    # the layout huggingface_hub's cache writes: a snapshot's files link into the same repository's blobs
    repo = tmp_path / "hub" / "models--org--m"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots").mkdir()
    snap = _copy(llama, repo / "snapshots" / "0a1b2c")
    (snap / "model.safetensors").rename(repo / "blobs" / "0123abcd")
    (snap / "model.safetensors").symlink_to(repo / "blobs" / "0123abcd")
    assert run("trace", snap, "--context", "8", "--limit", "2", "-o", tmp_path / "t.h5").exit_code == 0


def test_generation_of_an_imported_rope_model_is_bounded_by_its_context(llama, tmp_path):
    ckpt = tmp_path / "ft.safetensors"
    (tmp_path / "d.txt").write_text("the cat sat on the mat " * 50)
    run_json("train", "--init", llama, "--data", tmp_path / "d.txt", "--set", "task.options.context=16", "--steps", "1",
             "--batch-size", "2", "-o", ckpt)
    g = run_json("generate", ckpt, "--prompt", "the cat", "--max-new-tokens", "2000")
    assert g["stopped"] == "context" and g["prompt_tokens"] + len(g["tokens"]) <= 32


def test_hf_export_never_writes_through_a_symlink(llama, tmp_path):
    ckpt = tmp_path / "ft.safetensors"
    (tmp_path / "d.txt").write_text("the cat sat on the mat " * 50)
    run_json("train", "--init", llama, "--data", tmp_path / "d.txt", "--set", "task.options.context=16", "--steps", "1",
             "--batch-size", "2", "-o", ckpt)
    out = tmp_path / "export"
    run_json("export", ckpt, "--at", "1", "--format", "hf", "-o", out)
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    (out / "config.json").unlink()
    (out / "config.json").symlink_to(victim)
    run_json("export", ckpt, "--at", "1", "--format", "hf", "-o", out, "--force")
    assert victim.read_text() == "precious"
    assert not (out / "config.json").is_symlink() and json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1


# --- image folders --------------------------------------------------------------------------------


def _images(root: Path, sizes=((12, 12),) * 6):
    from PIL import Image

    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i, size in enumerate(sizes):
            Image.new("RGB", size, (40 * i, 100 if c == "a" else 200, 0)).save(root / c / f"{i}.png")
    return root


IMAGE_TRAIN = ["--arch", "resnet", "--depth", "1", "--width", "4", "--steps", "1", "--batch-size", "4", "--threads", "1"]


def test_a_huge_first_image_does_not_set_the_size_of_every_image(tmp_path):
    pytest.importorskip("PIL", reason="image folders need Pillow (pip install 'lpa[images]')")
    from PIL import Image

    root = _images(tmp_path / "img")
    Image.new("L", (9000, 9000)).save(root / "a" / "0.png")  # about 80 KB on disk, 81 MP decoded
    result = run_json("train", *IMAGE_TRAIN, "--data", root, "-o", tmp_path / "m.safetensors")
    assert result["task"]["in_shape"] == [3, 12, 12]  # the common size, not the first file's


def test_a_folder_of_huge_images_needs_an_explicit_size(tmp_path):
    pytest.importorskip("PIL", reason="image folders need Pillow (pip install 'lpa[images]')")
    root = _images(tmp_path / "img", sizes=((2000, 2000),) * 3)
    assert_clean_error(run("train", *IMAGE_TRAIN, "--data", root, "-o", tmp_path / "m.safetensors"), "task.options.size")


def test_a_decompression_bomb_is_refused(tmp_path):
    pytest.importorskip("PIL", reason="image folders need Pillow (pip install 'lpa[images]')")
    import struct
    import zlib

    root = _images(tmp_path / "img")

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    (root / "a" / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                                          + chunk(b"IEND", b""))
    assert_clean_error(run("train", *IMAGE_TRAIN, "--data", root, "-o", tmp_path / "m.safetensors"), "bomb.png")


def test_empty_image_folder_and_symlink_loop(tmp_path):
    pytest.importorskip("PIL", reason="image folders need Pillow (pip install 'lpa[images]')")
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    assert_clean_error(run("train", *IMAGE_TRAIN, "--data", empty, "-o", tmp_path / "m.safetensors"), "images")
    root = _images(tmp_path / "img")
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)
    result = run("train", *IMAGE_TRAIN, "--data", root, "-o", tmp_path / "m.safetensors", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["task"]["n_train"] + json.loads(result.stdout)["task"]["n_test"] == 12


# --- .h5 arrays -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(10**9, 4), (100, 10**8)])
def test_h5_datasets_declaring_data_never_written(tmp_path, shape):
    import h5py

    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=shape, dtype="float32", chunks=(1, min(shape[1], 4)))
        f.create_dataset("y", shape=(shape[0],), dtype="int64", chunks=(1,))
    assert path.stat().st_size < 20_000
    assert_clean_error(run("train", *TINY_TRAIN, "--data", path, "-o", tmp_path / "m.safetensors"), "never written")


# --- trackers -------------------------------------------------------------------------------------


def test_an_unreachable_mlflow_server_fails_within_seconds(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the track extra is not installed (pip install 'lpa[track]')")
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    began = time.monotonic()
    result = run("train", *TINY_TRAIN, "--log", "mlflow", "-o", tmp_path / "m.safetensors")
    assert_clean_error(result, "MLflow", f"127.0.0.1:{port}")
    assert time.monotonic() - began < 30
    assert not (tmp_path / "m.safetensors").exists()


def test_tracker_folders_that_cannot_be_made(tmp_path):
    pytest.importorskip("tensorboard", reason="the track extra is not installed (pip install 'lpa[track]')")
    (tmp_path / "m.tb").write_text("a file where the event folder goes")
    assert_clean_error(run("train", *TINY_TRAIN, "--log", "tensorboard", "-o", tmp_path / "m.safetensors"), "m.tb")
    assert (tmp_path / "m.tb").read_text().startswith("a file")
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "m.tb").mkdir()
    os.chmod(ro / "m.tb", 0o500)
    if os.access(ro / "m.tb", os.W_OK):  # root ignores permissions
        pytest.skip("running as root: permissions are not enforced")
    assert_clean_error(run("train", *TINY_TRAIN, "--log", "tensorboard", "-o", ro / "m.safetensors"), "m.tb")


# --- generation and prediction --------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--max-new-tokens", "0"], "--max-new-tokens"),
    (["--max-new-tokens", "-5"], "--max-new-tokens"),
    (["--top-k", "100000"], "--top-k"),
    (["--top-k", "-1"], "--top-k"),
    (["--strategy", "exit", "--exit-depth", "99"], "--exit-depth"),
    (["--strategy", "exit", "--threshold", "1.5"], "--threshold"),
    (["--strategy", "self-speculative", "--draft-depth", "8"], "--draft-depth"),
    (["--strategy", "self-speculative", "--speculate", "0"], "--speculate"),
    (["--strategy", "sideways"], "--strategy"),
])
def test_generation_settings_name_the_option_that_is_wrong(args, needle):
    assert_clean_error(run("generate", GPT, "--prompt", "the", *args), needle)


def test_generation_max_new_tokens_beyond_the_context_says_so():
    g = run("generate", GPT, "--prompt", "the", "--max-new-tokens", "100000")
    assert g.exit_code == 0, g.output
    assert "stopped at the model's context" in g.stderr


def test_invalid_utf8_prompt_file(tmp_path):
    (tmp_path / "p.txt").write_bytes(b"caf\xe9 \xff")
    assert_clean_error(run("generate", GPT, "--prompt-file", tmp_path / "p.txt"), "p.txt", "UTF-8")


@pytest.mark.parametrize("args,needle", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--limit", "-3"], "--limit"),
])
def test_prediction_settings_name_the_option_that_is_wrong(args, needle):
    assert_clean_error(run("predict", SAMPLES / "resnet-digits-lpa.safetensors", "--exit", "depth:1", *args), needle)


def test_prediction_output_goes_through_the_shared_writer(tmp_path):
    """Like every writer (train, trace, reports), a missing output folder is made; what is there is
    never overwritten without --force, and a file where the folder goes is refused."""
    target = tmp_path / "new" / "x.csv"
    assert run("predict", SAMPLES / "mlp-stripe-lpa.safetensors", "--exit", "depth:1", "--limit", "8", "-o", target).exit_code == 0
    assert len(target.read_text().splitlines()) == 9
    assert_clean_error(run("predict", SAMPLES / "mlp-stripe-lpa.safetensors", "--exit", "depth:1", "-o", target), "already exists")
    (tmp_path / "file").write_text("x")
    assert_clean_error(run("predict", SAMPLES / "mlp-stripe-lpa.safetensors", "--exit", "depth:1", "-o", tmp_path / "file" / "x.csv"),
                       "not a directory")


# --- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_diverging_run_keeps_the_last_good_checkpoint(tmp_path, precision):
    out = tmp_path / "m.safetensors"
    run_json("train", *TINY_TRAIN, "-o", out)
    before = out.read_bytes()
    result = run("train", *TINY_TRAIN, "--lr", "1e30", "--precision", precision, "--force", "-o", out)
    assert_clean_error(result, "diverged", "unchanged")
    assert out.read_bytes() == before


def test_grad_accum_zero_and_compile_without_a_compiler(tmp_path, monkeypatch):
    assert_clean_error(run("train", *TINY_TRAIN, "--grad-accum", "0", "-o", tmp_path / "m.safetensors"), "--grad-accum")
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    result = run("train", *TINY_TRAIN, "--compile", "-o", tmp_path / "c.safetensors")
    assert result.exit_code in (0, 2), result.output  # compiled, or fell back with a warning, or refused in one line
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert (tmp_path / "c.safetensors").exists()
