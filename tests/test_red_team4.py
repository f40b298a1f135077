"""Red team 4 (issue 32), the rows fixed so far: writers never follow a planted link, the HF export
writes a fixed set of names from validated metadata, every file lpa reads is a regular file (a FIFO
is a one-line error, never a hang), and the small rows (a perfect model's audit, Arabic-Indic digits,
a vanishing temperature). Each: one line on stderr, the documented exit code, nothing destroyed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.cli_helpers import TINY_TRAIN, assert_clean_error, run, run_json

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
MLP = SAMPLES / "mlp-stripe-lpa.safetensors"
GPT = SAMPLES / "gpt-text-lpa.safetensors"


def _train(out: Path, *extra: str):
    return run("train", *TINY_TRAIN, "--steps", "3", "--quiet", *extra, "-o", out)


# rows 1-3: a planted link where lpa writes or locks
def test_row1_a_lock_through_a_planted_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "v.txt"
    victim.write_text("PRECIOUS")
    (tmp_path / "n.safetensors.lock").symlink_to(victim)
    assert_clean_error(_train(tmp_path / "n.safetensors"), "symbolic link")
    assert victim.read_text() == "PRECIOUS" and not (tmp_path / "n.safetensors").exists()
    (tmp_path / "d.safetensors.lock").symlink_to(tmp_path / "nowhere.txt")  # a dangling link creates nothing either
    assert_clean_error(_train(tmp_path / "d.safetensors"), "symbolic link")
    assert not (tmp_path / "nowhere.txt").exists()


def test_row2_the_training_log_is_never_written_through_a_link(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "p.jsonl").symlink_to(tmp_path / "elsewhere" / "new.txt")
    assert_clean_error(_train(tmp_path / "p.safetensors"), "symbolic link")
    assert not (tmp_path / "elsewhere" / "new.txt").exists()


def test_row3_a_partial_trace_is_never_written_through_a_link(tmp_path):
    victim = tmp_path / "v.txt"
    victim.write_text("PRECIOUS")
    (tmp_path / "out.h5.partial").symlink_to(victim)
    assert_clean_error(run("trace", MLP, "--limit", "20", "-o", tmp_path / "out.h5", "--quiet"), "symbolic link")
    assert victim.read_text() == "PRECIOUS" and not (tmp_path / "out.h5").exists()


# row 4: two traces to one output
def test_row4_a_second_trace_to_the_same_output_stops_and_leaves_the_firsts_partial(tmp_path):
    from lpa_core.atomic import output_lock

    out = tmp_path / "same.h5"
    partial = tmp_path / "same.h5.partial"
    with output_lock(out):  # the first trace, still running
        partial.write_bytes(b"the first trace's rows")
        assert_clean_error(run("trace", MLP, "--limit", "20", "-o", out, "--force", "--quiet"), "another lpa process")
        assert partial.read_bytes() == b"the first trace's rows"


# rows 5-7: Hugging Face directories and exports
@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    from tests.test_hf import TRAIN, bpe_tokenizer, build, save

    tmp = tmp_path_factory.mktemp("ft")
    path = save(build("llama", bos_token_id=0, eos_token_id=1), tmp, "llama")
    bpe_tokenizer(path)
    ckpt = tmp / "ft.safetensors"
    run_json("train", "--init", path, "--task", "text", *TRAIN, "-o", ckpt)
    return path, ckpt


def _edit_hf(src: Path, dst: Path, change) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = dict(meta)
    meta["hf"] = change(json.loads(meta["hf"]))
    save_file(tensors, str(dst), metadata=_resealed(meta))
    return dst


def _resealed(meta: dict) -> dict:
    """The metadata hash recomputed, as whoever edits a file can (a hash is no signature): these rows
    test what lpa does with the edited content itself."""
    from lpa_cli.formats.hashes import metadata_hash

    return meta | {"meta_sha256": metadata_hash(meta)} if "meta_sha256" in meta else meta


def test_row5_a_link_out_of_the_model_directory_is_refused_for_every_file(finetuned, tmp_path):
    path, _ = finetuned
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        d = tmp_path / f"llama_{name}"
        shutil.copytree(path, d)
        outside = tmp_path / f"outside_{name}"
        if name == "tokenizer_config.json":
            outside.write_text(json.dumps({"tokenizer_class": "AKIA-TOPSECRET"}))
        else:
            (d / name).rename(outside)
        (d / name).unlink(missing_ok=True)
        (d / name).symlink_to(outside)
        result = run("train", "--init", d, "--task", "text", "--steps", "1", "--quiet", "-o", tmp_path / "x.safetensors")
        assert_clean_error(result, "link out of")
        assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("change, needle", [
    (lambda m: m | {"files": m["files"] | {"modeling_evil.py": "import os"}}, "does not write"),
    (lambda m: m | {"files": m["files"] | {"model.safetensors": "not weights"}}, "does not write"),
    (lambda m: m | {"family": "evil"}, "unknown family"),
    (lambda m: [1, 2], "not a JSON object"),
    (lambda m: m | {"files": ["a"]}, "file names to text"),
    (lambda m: m | {"files": {"tokenizer.json": 5}}, "file names to text"),
    (lambda m: {k: v for k, v in m.items() if k != "config"}, "no config"),
    (lambda m: '{"family": "llama", "files": {}, "config": ' + "[" * 5000 + "]" * 5000 + "}", "not valid JSON"),
    (lambda m: m | {"config": {"a": json.loads('{"b":' * 100 + "1" + "}" * 100)}}, "nested"),
])
def test_rows6_7_an_export_writes_only_what_lpa_writes_from_validated_metadata(finetuned, tmp_path, change, needle):
    _, ckpt = finetuned
    edited = _edit_hf(ckpt, tmp_path / "x.safetensors", lambda m: json.dumps(change(m)) if not isinstance(change(m), str) else change(m))
    out = tmp_path / "exp"
    assert_clean_error(run("export", edited, "--at", "1", "--format", "hf", "-o", out), needle)
    assert not out.exists()


def test_row6_auto_map_is_dropped_from_an_export(finetuned, tmp_path):
    _, ckpt = finetuned
    edited = _edit_hf(ckpt, tmp_path / "x.safetensors", lambda m: json.dumps(m | {"config": m["config"] | {"auto_map": {"AutoModel": "evil.M"}}}))
    out = tmp_path / "exp"
    run_json("export", edited, "--at", "1", "--format", "hf", "-o", out)
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert {p.name for p in out.iterdir()} <= set(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                                                            "special_tokens_map.json", "generation_config.json"])


# row 8: FIFOs
@pytest.mark.parametrize("args", [
    lambda f: ("info", f),
    lambda f: ("monotonicity", f),
    lambda f: ("export", f, "--at", "1", "-o", f.parent / "e.safetensors"),
    lambda f: ("generate", f, "--prompt", "x"),
    lambda f: ("train", "--config", f, "-o", f.parent / "t.safetensors"),
    lambda f: ("audit", MLP, "--config", f),
    lambda f: ("generate", GPT, "--prompt-file", f),
    lambda f: ("trace", f, "-o", f.parent / "t.h5"),
    lambda f: ("train", "--init", f, "-o", f.parent / "t.safetensors"),
])
def test_row8_a_fifo_is_a_one_line_error_never_a_hang(tmp_path, args):
    fifo = tmp_path / "f.safetensors"
    os.mkfifo(fifo)
    assert_clean_error(run(*args(fifo)), "not a regular file")


# row 20, 22, 23
def test_row20_a_vanishing_temperature_is_greedy(tmp_path):
    greedy = run_json("generate", GPT, "--prompt", "This", "--max-new-tokens", "8")
    tiny = run_json("generate", GPT, "--prompt", "This", "--max-new-tokens", "8", "--temperature", "1e-320")
    assert tiny["text"] == greedy["text"]


@pytest.mark.parametrize("flag, value", [("--head-loss", "sampled:\u0663"), ("--depth-schedule", "rotation:\u0663")])
def test_row22_digits_are_ascii(tmp_path, flag, value):
    assert_clean_error(_train(tmp_path / "m.safetensors", flag, value), flag)


def test_row23_two_perfect_runs_pass_their_audit(tmp_path):
    """0 / 0 is a ratio of 1 (equal), so a perfect run against a perfect reference passes
    max_final_error_ratio instead of failing with inf (compare's side: test_compare_audit.py)."""
    from types import SimpleNamespace

    from analyzers.audit import check

    perfect = SimpleNamespace(error_curve=[0.5, 0.0], curve=[0.5, 0.0], metric="err")
    cases = check("a.h5", {"max_final_error_ratio": 1.25}, perfect, None, SimpleNamespace(error_curve=[0.4, 0.0], curve=[0.4, 0.0]))
    assert [(c.passed, c.value) for c in cases] == [(True, 1.0)]
    worse = SimpleNamespace(error_curve=[0.5, 0.1], curve=[0.5, 0.1], metric="err")
    assert not check("b.h5", {"max_final_error_ratio": 1.25}, worse, None, SimpleNamespace(error_curve=[0.4, 0.0], curve=[0.4, 0.0]))[0].passed


def _edit_meta(src: Path, dst: Path, key: str, change) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta[key] = json.dumps(change(json.loads(meta[key])))
    save_file(tensors, str(dst), metadata=_resealed(meta))
    return dst


# row 10: a config claiming far more blocks than the file holds
def test_row10_a_huge_depth_is_refused_from_the_header(tmp_path):
    import time

    edited = _edit_meta(MLP, tmp_path / "d.safetensors", "config", lambda c: c | {"model": c["model"] | {"depth": 100000}})
    began = time.perf_counter()
    assert_clean_error(run("info", edited), "claims 100000 blocks")
    assert time.perf_counter() - began < 20  # was 93 s and 2.2 GB before the comparison


# rows 12-14: a failed run or tokenisation leaves the earlier output and its companions as they were
def test_row13_a_failed_forced_run_keeps_the_earlier_checkpoint_and_its_log(tmp_path):
    out = tmp_path / "d.safetensors"
    assert _train(out).exit_code == 0
    before = (out.read_bytes(), out.with_suffix(".jsonl").read_text())
    inode = out.with_suffix(".jsonl").stat().st_ino
    failed = _train(out, "--lr", "1e12", "--force")
    assert failed.exit_code != 0 and "diverged" in failed.stderr, failed.stderr
    assert (out.read_bytes(), out.with_suffix(".jsonl").read_text()) == before
    assert _train(out, "--force").exit_code == 0  # and a good forced run replaces both
    # a new file renamed into place (its text may equal the first run's: same seed, same rounded times)
    assert out.with_suffix(".jsonl").stat().st_ino != inode and not (tmp_path / "d.jsonl.new").exists()


def test_row14_tokenizing_no_text_over_an_earlier_output_keeps_it(tmp_path):
    (tmp_path / "n.txt").write_text("some text to tokenize. " * 20)
    (tmp_path / "empty.txt").write_text("")
    out = tmp_path / "c.bin"
    run_json("data", "tokenize", tmp_path / "n.txt", "-o", out)
    before = (out.read_bytes(), (tmp_path / "c.bin.json").read_text())
    assert_clean_error(run("data", "tokenize", tmp_path / "empty.txt", "-o", out, "--force"), "no text")
    assert (out.read_bytes(), (tmp_path / "c.bin.json").read_text()) == before


def test_row12_a_sidecar_that_cannot_be_written_leaves_no_token_file(tmp_path, monkeypatch):
    import contextlib
    import errno

    import lpa_cli.data.tokens as tokens

    real = tokens.atomic_path

    class Full(type(tmp_path)):  # the disk fills while the sidecar is written
        def write_text(self, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

    @contextlib.contextmanager
    def failing(target, force=False):
        with real(target, force) as tmp:
            yield Full(tmp) if str(target).endswith(".json") else tmp

    monkeypatch.setattr(tokens, "atomic_path", failing)
    (tmp_path / "n.txt").write_text("some text to tokenize. " * 20)
    from lpa_core.errors import OutputError

    with pytest.raises(OutputError, match="no space left"):
        tokens.tokenize_files([tmp_path / "n.txt"], "bytes", tmp_path / "c.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.txt"]


# row 15: a stored tokenizer is validated
@pytest.mark.parametrize("change, needle", [(lambda t: t | {"eos_id": "x"}, "eos_id"), (lambda t: t | {"eos_id": 10**20}, "eos_id"),
                                            (lambda t: t | {"vocab_size": 10**12}, "vocab_size")])
def test_row15_a_stored_tokenizer_is_validated(finetuned, tmp_path, change, needle):
    _, ckpt = finetuned
    edited = _edit_meta(ckpt, tmp_path / "x.safetensors", "tokenizer", change)
    (tmp_path / "n.txt").write_text("some text. " * 10)
    assert_clean_error(run("data", "tokenize", tmp_path / "n.txt", "--tokenizer", edited, "-o", tmp_path / "c.bin"), needle)
    assert not (tmp_path / "c.bin").exists() and not (tmp_path / "c.bin.json").exists()


# row 16: a planted module beside the user's factory is never imported instead of the real one
def test_row16_the_working_directory_never_shadows_the_standard_library(tmp_path, monkeypatch):
    import subprocess

    from tests.cli_helpers import lpa_executable

    (tmp_path / "mymodels.py").write_text(
        "from torch import nn\nfrom lpa_cli import ResidualModel\n"
        "def make_model(width=8, depth=2, inputs=2, classes=1):\n"
        "    return ResidualModel(nn.Linear(inputs, width), [nn.Linear(width, width) for _ in range(depth)], nn.Linear(width, classes))\n")
    (tmp_path / "statistics.py").write_text("raise ImportError('planted statistics')\n")
    result = subprocess.run([lpa_executable(), "train", "--model", "mymodels:make_model", "--task", "surface:stripe", "--steps", "2",
                             "--threads", "1", "--quiet", "-o", "m.safetensors"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "planted" not in result.stderr, result.stderr


# rows 17, 19: reproduce's output folder and stdout
def test_row17_reproduce_into_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("x")
    assert_clean_error(run("reproduce", "minilm", "-o", tmp_path / "afile"), "is a file")


def test_row19_the_model_packages_greeting_never_reaches_stdout(capsys, tmp_path):
    import importlib.util
    import sys

    if importlib.util.find_spec("all_minilm_l6_v2") is None:  # not importorskip: importing it prints the greeting
        pytest.skip("the real MiniLM package (the test extra) is not installed")

    from lpa_cli.workflows.reproduce_llm import minilm

    sys.modules.pop("all_minilm_l6_v2", None)  # imported afresh: its greeting is printed on import
    model, _ = minilm(tmp_path)
    assert capsys.readouterr().out == "" and (model / "config.json").is_file()
    assert not [p for p in (tmp_path / "minilm").iterdir() if p.name.startswith(".minilm-")]  # unpacked, then renamed


# row 21: click's own usage errors, from the real executable
@pytest.mark.parametrize("args, needle", [(["train", "--steps", "abc"], "--steps"), (["train", "--bogus"], "--bogus"),
                                          (["predict", str(MLP)], "--exit"), (["bogus"], "bogus")])
def test_row21_usage_errors_are_one_line(args, needle):
    import subprocess

    from tests.cli_helpers import lpa_executable

    result = subprocess.run([lpa_executable(), *args], capture_output=True, text=True, timeout=60)
    assert_clean_error(result, needle)


# row 24: what progress lines count
def test_row24_rates_start_after_the_first_item_and_counts_stay_whole():
    from rich.console import Console

    from lpa_cli.commands.render import progress_lines
    from lpa_cli.commands.train import _count

    import lpa_cli.commands.render as render

    console = Console(record=True, width=200)
    clock = iter([0.0, 10.0, 20.0, 30.0])
    real = render.LogProgress.__init__

    def timed(self, *a, **k):
        real(self, *a, **k, clock=lambda: next(clock))

    render.LogProgress.__init__ = timed
    try:
        report = progress_lines(console, "traced", "samples")
        report(1000, 3000)  # the first batch: no rate yet (it took the model's warm-up)
        report(3000, 3000)
    finally:
        render.LogProgress.__init__ = real
    text = console.export_text()
    assert "traced 3,000/3,000" in text and "200.0 samples/s" in text  # 2,000 samples in the 10 s after the first
    assert _count(353) == "353" and _count(1500) == "1.5k"


# row 9: sizes checked before a byte is read
def test_row9_huge_files_are_refused_from_their_size(finetuned, tmp_path):
    path, _ = finetuned
    for name in ("config.json", "tokenizer.json"):  # (a tokenizer_config.json over 1 MiB is not read at all)
        d = tmp_path / f"big_{name}"
        shutil.copytree(path, d)
        with open(d / name, "wb") as f:
            f.truncate(12 << 30)  # sparse: 12 GB claimed, nothing on disk
        result = run("train", "--init", d, "--task", "text", "--steps", "1", "--quiet", "-o", tmp_path / "x.safetensors")
        assert_clean_error(result, "more than lpa reads")
    prompt = tmp_path / "prompt.txt"
    with open(prompt, "wb") as f:
        f.truncate(6 << 30)
    assert_clean_error(run("generate", GPT, "--prompt-file", prompt), "more than lpa reads")
    assert_clean_error(run("train", "--arch", "gpt", "--data", prompt, "--steps", "1", "-o", tmp_path / "t.safetensors"), "more than lpa reads")


# row 11: a full disk while the log is appended
def test_row11_a_full_disk_during_training_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    import lpa_cli.training.trackers as trackers

    class Full:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full(fd, *a, **k):
        os.close(fd)
        return Full()

    monkeypatch.setattr(trackers.os, "fdopen", full)
    out = tmp_path / "t3.safetensors"
    assert_clean_error(_train(out, "--steps", "150"), "no space left on device")
    assert not out.exists() and not (tmp_path / "t3.safetensors.lock").exists()
