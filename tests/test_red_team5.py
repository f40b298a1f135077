"""Red team 5 (issue 41): each row as a test. The classes are round 4's, at the openers and writers the
rules did not reach; `tests/test_file_rules.py` keeps the next one out. Each: the documented exit code,
one line on stderr, nothing destroyed, nothing read or run that should not be."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.cli_helpers import TINY_TRAIN, assert_clean_error, run, run_json, subprocess_lpa

SAMPLES = Path(__file__).resolve().parents[1] / "sample_checkpoints"
MLP = SAMPLES / "mlp-stripe-lpa.safetensors"
MLP_E2E = SAMPLES / "mlp-stripe-e2e.safetensors"
DIGITS_E2E = SAMPLES / "resnet-digits-e2e.safetensors"
HANG = 60  # seconds: a reader that blocks on a FIFO fails the test instead of hanging the suite


def _resealed(src: Path, dst: Path, **fields: str) -> Path:
    """A copy of ``src`` with metadata fields replaced and the metadata hash recomputed (anyone can)."""
    from safetensors import safe_open

    from lpa_cli.formats.checkpoint import save_file
    from lpa_cli.formats.hashes import metadata_hash

    with safe_open(str(src), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta |= fields
    meta["meta_sha256"] = metadata_hash(meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


# row 1: tokenizer files copied from a loaded model's folder go through the reading rule
def test_row1_a_linked_tokenizer_file_of_a_loaded_model_is_refused_not_copied(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    pytest.importorskip("tokenizers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    from lpa_core.errors import DataError
    from lpa_cli.integrations.transformers import lpa_model
    from tests.test_hf import bpe_tokenizer, build, save

    path = save(build("llama", bos_token_id=0, eos_token_id=1), tmp_path, "llama")
    bpe_tokenizer(path)
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-TOKEN-123")
    (path / "special_tokens_map.json").symlink_to(secret)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(path)
    loaded.name_or_path = str(path)
    with pytest.raises(DataError, match="a link out of"):
        lpa_model(loaded, context=16)


# row 2: what an HF export writes is data, never a pointer to code
def _hf_edited(tmp_path: Path, ckpt: Path, change) -> Path:
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        hf = json.loads(f.metadata()["hf"])
    change(hf)
    return _resealed(ckpt, tmp_path / "edited.safetensors", hf=json.dumps(hf))


def test_row2_export_carries_no_auto_map_or_quantization_config_anywhere(tmp_path):
    pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    from tests.test_hf import TRAIN, bpe_tokenizer, build, save

    path = save(build("llama", bos_token_id=0, eos_token_id=1), tmp_path, "llama")
    bpe_tokenizer(path)
    ckpt = tmp_path / "ft.safetensors"
    run_json("train", "--init", path, "--task", "text", *TRAIN, "-o", ckpt)

    def evil(hf):
        hf["config"] |= {"auto_map": {"AutoModelForCausalLM": "attacker/repo--m.M"}, "quantization_config": {"quant_method": "x"},
                         "text_config": {"auto_map": {"AutoConfig": "attacker/repo--c.C"}}}
        hf["files"]["tokenizer_config.json"] = json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                           "auto_map": {"AutoTokenizer": ["attacker/repo--t.T", None]}})
    out = tmp_path / "exp"
    run_json("export", _hf_edited(tmp_path, ckpt, evil), "--at", "3", "--format", "hf", "-o", out, "--no-assistant-exit")
    for f in out.iterdir():
        if f.suffix == ".json":
            text = f.read_text()
            assert "auto_map" not in text and "quantization_config" not in text and "attacker" not in text, f.name

    def huge(hf):
        hf["config"]["vocab_size"] = 10**9
    assert_clean_error(run("export", _hf_edited(tmp_path, ckpt, huge), "--at", "3", "--format", "hf", "-o", tmp_path / "exp2",
                           "--no-assistant-exit"), "vocab_size")
    assert not (tmp_path / "exp2" / "model.safetensors").exists()


# row 3: four readers that a FIFO used to block forever
def test_row3_fifos_at_the_log_snapshot_and_sidecar_are_refused_not_read(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    shutil.copy(MLP, ckpt)
    os.mkfifo(tmp_path / "m.jsonl")  # compare reads the log beside a checkpoint
    r = subprocess_lpa("compare", "--run", f"a={ckpt}", "--run", f"b={MLP_E2E}", "--no-measure", "-o", tmp_path / "c.html", timeout=HANG)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "r.safetensors"
    os.mkfifo(tmp_path / "r.safetensors.snapshot")  # --resume reads the snapshot
    r = subprocess_lpa("train", *TINY_TRAIN, "--resume", "-o", out, timeout=HANG)
    assert_clean_error(r, "not a regular file")
    os.mkfifo(tmp_path / "l.jsonl")  # the log, truncated on resume and replaced on --force
    assert_clean_error(subprocess_lpa("train", *TINY_TRAIN, "--force", "-o", tmp_path / "l.safetensors", timeout=HANG), "not a regular file")
    tokens = tmp_path / "t.bin"
    tokens.write_bytes(b"\0" * 64)
    os.mkfifo(tmp_path / "t.bin.json")  # the token file's sidecar
    assert_clean_error(subprocess_lpa("train", "--task", f"tokens:{tokens}", "--steps", "1", "-o", tmp_path / "x.safetensors", timeout=HANG),
                       "not a regular file")


# row 4: compare's log reader takes any bytes
def test_row4_malformed_training_logs_are_passed_over_with_a_note(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    shutil.copy(MLP, ckpt)
    (tmp_path / "m.jsonl").write_bytes(b'{"step": 1, "train_loss_per_depth": [1, 2]}\n{"step": "two", "train_loss": "x"}\n'
                                       b'{"step": 3, "test": {"mse": ["a"]}}\n\xff\xfe not utf-8\n{"step": 4, "train_loss_per_depth": {"x": 1}}\n'
                                       b'{"step": 5, "train_loss": 0.5, "train_loss_per_depth": {"0": 0.7, "1": 0.5}, "test": {}}\n')
    r = run("compare", "--run", f"a={ckpt}", "--run", f"b={MLP_E2E}", "--no-measure", "-o", tmp_path / "c.html", "--json")
    assert r.exit_code == 0, r.output
    from lpa_cli.workflows.compare import _log

    notes: list[str] = []
    assert [rec["step"] for rec in _log(ckpt, notes)] == [5] and "5 line(s)" in notes[0]
    (tmp_path / "m.jsonl").unlink()
    (tmp_path / "m.jsonl").mkdir()  # a directory where the log should be
    assert run("compare", "--run", f"a={ckpt}", "--run", f"b={MLP_E2E}", "--no-measure", "-o", tmp_path / "d.html").exit_code == 0


# row 5: an output is never an input, however it is named
def test_row5_outputs_that_are_inputs_are_refused_even_with_force(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    shutil.copy(MLP, ckpt)
    before = ckpt.read_bytes()
    assert_clean_error(run("predict", ckpt, "--exit", "fixed:2", "-o", ckpt, "--force"), "is the input")
    os.link(ckpt, tmp_path / "hard.csv")  # the same file under another name
    assert_clean_error(run("predict", ckpt, "--exit", "fixed:2", "-o", tmp_path / "hard.csv", "--force"), "is the input")
    data = tmp_path / "d.csv"
    data.write_text("x0,x1,y\n" + "".join(f"{i / 100},{-i / 100},{i / 50}\n" for i in range(100)))
    text = data.read_text()
    assert_clean_error(run("predict", ckpt, "--exit", "fixed:2", "--data", data, "-o", data, "--force"), "is the input")
    assert ckpt.read_bytes() == before and data.read_text() == text
    fit, test = tmp_path / "fit.h5", tmp_path / "test.h5"
    run_json("trace", ckpt, "--split", "train", "--states", "--limit", "64", "-o", fit)
    run_json("trace", ckpt, "--states", "--limit", "64", "-o", test)
    kept = fit.read_bytes()
    assert_clean_error(run("probe", test, "--fit-on", fit, "-o", fit, "--force"), "is the input")
    assert fit.read_bytes() == kept
    (tmp_path / "m.jsonl").write_text('{"step": 1}\n')
    assert_clean_error(run("compare", "--run", f"a={ckpt}", "--run", f"b={MLP_E2E}", "-o", tmp_path / "m.jsonl", "--force"), "is the input")
    assert (tmp_path / "m.jsonl").read_text() == '{"step": 1}\n'


# row 6: data before the file that describes it; checkpoint and log as a pair
def test_row6_tokens_are_renamed_before_their_sidecar(tmp_path, monkeypatch):
    import lpa_core.atomic as atomic
    from lpa_cli.data.tokens import tokenize_files

    order = []
    real = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (order.append(Path(b).name), real(a, b)))
    (tmp_path / "a.txt").write_text("some text to tokenize. " * 20)
    tokenize_files([tmp_path / "a.txt"], "bytes", tmp_path / "c.bin")
    assert order == ["c.bin", "c.bin.json"]


def test_row6_a_kill_between_checkpoint_and_log_leaves_a_pair_the_next_run_completes(tmp_path, monkeypatch):
    from lpa_cli.formats.checkpoint import read_info
    from lpa_cli.training.trackers import JsonlTracker
    from lpa_cli.training.trainer import train
    from tests.conftest import tiny_run

    out = tmp_path / "m.safetensors"
    train(tiny_run(steps=3), out)  # the earlier pair
    old_log = out.with_suffix(".jsonl").read_text()
    # killed between the renames: SIGKILL runs no clean-up, so discard() does not run either
    monkeypatch.setattr(JsonlTracker, "saved", lambda self, path: (_ for _ in ()).throw(KeyboardInterrupt()))
    monkeypatch.setattr(JsonlTracker, "discard", lambda self: None)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_run(steps=4), out, force=True)
    monkeypatch.undo()
    sealed = out.with_name("m.jsonl.new")
    assert out.with_suffix(".jsonl").read_text() == old_log and sealed.exists()  # new checkpoint, old log, sealed new log
    last = json.loads(sealed.read_text().splitlines()[-1])
    assert last["checkpoint_sha256"] == read_info(out).sha256 and last["step"] == 4
    tracker = JsonlTracker(out.with_suffix(".jsonl"))
    tracker.start({}, 0)  # what the next --force run does first: completes the pair instead of deleting the only copy
    assert json.loads(out.with_suffix(".jsonl").read_text().splitlines()[-1])["checkpoint_sha256"] == read_info(out).sha256
    assert not sealed.exists()


# row 7: every output path checked before the work
def test_row7_a_link_or_folder_at_the_log_fails_before_any_checkpoint_is_written(tmp_path):
    out = tmp_path / "m.safetensors"
    (tmp_path / "m.jsonl").symlink_to(tmp_path / "nowhere")  # dangling
    assert_clean_error(run("train", *TINY_TRAIN, "-o", out), "symbolic link")
    assert not out.exists() and not (tmp_path / "nowhere").exists()
    (tmp_path / "m.jsonl").unlink()
    (tmp_path / "m.jsonl").mkdir()
    assert_clean_error(run("train", *TINY_TRAIN, "--force", "-o", out), "is a directory")
    assert not out.exists()


# row 8: a gate that cannot be fooled in silence
def _config(tmp_path: Path, text: str) -> Path:
    cfg = tmp_path / "audit.toml"
    cfg.write_text("[tool.lpa.audit]\n" + text)
    return cfg


def test_row8a_an_input_no_rule_applies_to_fails(tmp_path):
    cfg = _config(tmp_path, 'alpha = 0.05\n[tool.lpa.audit.overrides."other.safetensors"]\nmonotone = true\n')
    r = run("audit", MLP, "--config", cfg, "--json")
    assert r.exit_code == 1
    cases = json.loads(r.stdout)["cases"]
    assert [c["rule"] for c in cases] == ["no rule applies"] and not cases[0]["passed"]


def test_row8b_a_trace_named_like_a_checkpoint_is_refused(tmp_path):
    trace = tmp_path / "t.h5"
    run_json("trace", MLP, "--limit", "50", "-o", trace)
    fake = tmp_path / "model.safetensors"
    shutil.copy(trace, fake)
    assert_clean_error(run("audit", fake, "--config", _config(tmp_path, "monotone = true\n")), "HDF5", "not a safetensors checkpoint")


def test_row8c_the_evaluation_set_is_covered_by_the_metadata_hash(tmp_path):
    from safetensors import safe_open

    from lpa_cli.formats.checkpoint import save_file

    with safe_open(str(MLP), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["config"])
    config["task"]["n_test"] = 3
    edited = tmp_path / "mlp-stripe-lpa.safetensors"
    save_file(tensors, str(edited), metadata=meta | {"config": json.dumps(config)})  # edited, hash not recomputed
    cfg = _config(tmp_path, 'max_error = { "-1" = 5e-5 }\n')
    assert_clean_error(run("audit", edited, "--config", cfg), "metadata hash mismatch")
    old = tmp_path / "old.safetensors"  # a format-1 file (no metadata hash): audited, with a warning case
    save_file(tensors, str(old), metadata={k: v for k, v in meta.items() if k != "meta_sha256"} | {"format_version": "1"})
    cases = {c["rule"]: c for c in json.loads(run("audit", old, "--config", cfg, "--json").stdout)["cases"]}
    assert "not covered by a hash" in cases["metadata hash"]["message"]


def test_row8d_override_patterns_match_file_names_not_substrings_of_paths(tmp_path):
    from analyzers.audit import load_config

    cfg = load_config(_config(tmp_path, 'monotone = true\n[tool.lpa.audit.overrides."gpt-text-lpa.safetensors"]\nmonotone = false\n'))
    assert cfg.for_input("sample_checkpoints/gpt-text-lpa.safetensors")["monotone"] is False
    assert cfg.for_input("renamed-gpt-text-lpa-v2.safetensors")["monotone"] is True
    assert cfg.for_input("gpt-text-lpa.safetensors.d/model.safetensors")["monotone"] is True
    loose = load_config(_config(tmp_path, 'monotone = true\n[tool.lpa.audit.overrides."*gpt-text-lpa*"]\nmonotone = false\n'))
    assert loose.for_input("runs/gpt-text-lpa-sweep/model.safetensors")["monotone"] is True  # a folder's name is not the file's


def test_row8e_a_reference_of_another_task_is_refused(tmp_path):
    cfg = _config(tmp_path, f'max_final_error_ratio = 2.0\nreference = "{DIGITS_E2E}"\n')
    assert_clean_error(run("audit", MLP, "--config", cfg), "compares one data set")


def test_row8f_a_config_that_cannot_be_read_still_writes_a_junit_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[tool.lpa.audit\nmonotone = ")
    junit = tmp_path / "j.xml"
    assert_clean_error(run("audit", MLP, "--config", bad, "--junit", junit), "invalid TOML")
    suites = ET.parse(junit).getroot()
    assert suites.get("errors") == "1" and "invalid TOML" in suites.find(".//error").get("message")


# row 9: JUnit reports parse whatever the file names hold
def test_row9_control_characters_in_names_never_break_the_junit_xml(tmp_path):
    odd = tmp_path / "m\x1b[31m\x01.safetensors"
    shutil.copy(MLP, odd)
    junit = tmp_path / "j.xml"
    r = run("audit", odd, "--config", _config(tmp_path, "monotone = true\n"), "--junit", junit)
    assert r.exit_code in (0, 1), r.output
    case = ET.parse(junit).getroot().find(".//testcase")
    assert "\\x1b" in case.get("classname") and "\x1b" not in junit.read_text()
    assert "\x1b" not in r.stdout  # nor on the terminal (row 12)


# row 10: bounds on every count a file or flag sets
def test_row10_sample_counts_are_bounded(tmp_path):
    assert_clean_error(run("train", *TINY_TRAIN, "--set", "task.n_train=1000000000000", "-o", tmp_path / "m.safetensors"), "task.n_train")
    assert_clean_error(run("train", *TINY_TRAIN, "--set", "task.n_test=1000000000000", "-o", tmp_path / "m.safetensors"), "task.n_test")


# row 11: a CSV header field over csv's limit
def test_row11_a_huge_csv_header_field_is_a_clean_error(tmp_path):
    data = tmp_path / "d.csv"
    data.write_text("x" * 200_000 + ",y\n1,2\n")
    assert_clean_error(run("train", "--data", data, "--steps", "1", "-o", tmp_path / "m.safetensors"), "d.csv")


# row 12: strings from files reach the terminal inert
def test_row12_metadata_strings_are_printed_inert(tmp_path):
    from safetensors import safe_open

    with safe_open(str(MLP), "pt") as f:
        task = json.loads(f.metadata()["task"])
    task["description"] = "\x1b]0;owned\x07\x1b[2J\x1b]8;;http://x\x07click\x1b]8;;\x07"
    ckpt = _resealed(MLP, tmp_path / "m.safetensors", task=json.dumps(task))
    r = run("info", ckpt)
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout and "\\x1b]0;owned" in r.stdout


# row 13: outputs named through /dev or /proc
def test_row13_outputs_leading_into_devices_or_descriptors_are_refused(tmp_path):
    from lpa_core.atomic import check_writable
    from lpa_core.errors import OutputError

    for target in ("/dev/stdout", "/proc/self/fd/1", "/dev/null", "/dev/shm"):
        with pytest.raises(OutputError, match="device or descriptor"):
            check_writable(target, force=True)
    if Path("/dev/shm").is_dir():  # shared memory is an ordinary folder: outputs there are files
        assert check_writable(f"/dev/shm/lpa-test-{os.getpid()}.h5") == Path(f"/dev/shm/lpa-test-{os.getpid()}.h5")
    real = tmp_path / "real.txt"
    real.write_text("KEEP")
    with real.open() as handle:  # a link to a descriptor that resolves to a regular file, as /dev/stdout does when redirected
        link = tmp_path / "m.safetensors"
        link.symlink_to(f"/proc/self/fd/{handle.fileno()}")
        assert_clean_error(run("export", MLP, "--at", "2", "-o", link, "--force"), "device or descriptor")
    assert link.is_symlink() and real.read_text() == "KEEP"


# row 14: a checkpoint that records no data set
def test_row14_a_checkpoint_without_data_asks_for_data_and_takes_it(tmp_path):
    pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    from lpa_cli.data.text import builtin_corpus
    from lpa_cli.integrations.transformers import CHECKPOINT
    from tests.test_hf import bpe_tokenizer, build, save
    from tests.test_trainer_integration import _llama_cfg, step_rows, trainer_run

    path = save(build("llama", bos_token_id=0, eos_token_id=1), tmp_path, "llama")
    bpe_tokenizer(path)
    text = tmp_path / "text.txt"
    text.write_bytes(builtin_corpus()[:20000])
    cfg = _llama_cfg(path, text)
    _, trainer = trainer_run(path, cfg, step_rows(cfg, lm=True), tmp_path / "trainer")
    trainer.save_model(str(tmp_path / "final"))
    ckpt = tmp_path / "final" / CHECKPOINT
    for args in (("monotonicity", ckpt), ("audit", ckpt, "--config", _config(tmp_path, "monotone = true\n")),
                 ("export", ckpt, "--at", "3", "--format", "hf", "-o", tmp_path / "hf")):
        assert_clean_error(run(*args), "records no data set", "--data")
    assert run("monotonicity", ckpt, "--data", text, "--json").exit_code in (0, 1)
    assert run("audit", ckpt, "--data", text, "--config", _config(tmp_path, "monotone = true\n")).exit_code in (0, 1)
    run_json("export", ckpt, "--at", "3", "--format", "hf", "--data", text, "-o", tmp_path / "hf")


# row 15: the HF-cache exemption and the head warm-up
def test_row15_a_snapshot_links_only_into_its_own_repositorys_blobs(tmp_path):
    from lpa_core.errors import UsageError
    from lpa_core.files import readable

    hub = tmp_path / "hub"
    for repo in ("models--a--m", "models--b--n"):
        (hub / repo / "blobs").mkdir(parents=True)
        (hub / repo / "snapshots" / "rev").mkdir(parents=True)
        (hub / repo / "blobs" / "abc").write_text("{}")
    snap = hub / "models--a--m" / "snapshots" / "rev"
    (snap / "config.json").symlink_to(hub / "models--a--m" / "blobs" / "abc")
    assert readable(snap / "config.json", "config", inside=snap) == snap / "config.json"
    (snap / "tokenizer.json").symlink_to(hub / "models--b--n" / "blobs" / "abc")  # another repository's blob
    with pytest.raises(UsageError, match="a link out of"):
        readable(snap / "tokenizer.json", "json", inside=snap)


def test_row15_a_head_warmup_as_long_as_the_run_is_refused(tmp_path):
    for warm in ("20", "100000000000000000000"):
        assert_clean_error(run("train", *TINY_TRAIN, "--head-warmup", warm, "-o", tmp_path / "m.safetensors"), "--head-warmup")
