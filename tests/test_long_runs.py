"""Evaluation logs, resume after SIGKILL, torchrun, devices."""

import json
import signal
import subprocess
import time

import pytest
import torch

from lpa_core.errors import UsageError
from lpa_cli.models.open import load_checkpoint
from lpa_cli.runtime import resolve_device
from tests.cli_helpers import TINY_TRAIN, assert_clean_error, lpa_executable, run, run_json

RESUME_ARGS = ["--depth", "3", "--width", "32", "--steps", "600", "--batch-size", "32", "--threads", "1",
               "--set", "task.n_train=512", "--set", "task.n_test=64", "--snapshot-every", "25", "--quiet"]


def test_eval_every_writes_json_lines(tmp_path):
    out = tmp_path / "m.safetensors"
    run_json("train", *TINY_TRAIN, "--eval-every", "5", "-o", out)
    every = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [r["step"] for r in every] == list(range(1, 21))  # training losses every step of 20 (about 100 a run), tests every 5
    records = [r for r in every if r["test"]]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    assert all(len(r["test"]["mse"]) == 4 for r in records)
    assert records[-1]["test"] == load_checkpoint(out).metrics
    assert set(records[0]["train_loss_per_depth"]) == {"0", "1", "2", "3"}


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    full = tmp_path / "full.safetensors"
    assert run("train", *RESUME_ARGS, "-o", full).exit_code == 0
    out = tmp_path / "killed.safetensors"
    snap = tmp_path / "killed.safetensors.snapshot"
    proc = subprocess.Popen([lpa_executable(), "train", *RESUME_ARGS, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not snap.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.15)  # let it run past the snapshot, into the middle of later steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert snap.exists() and not out.exists(), "the run finished before it could be killed; raise --steps"
    # a plain rerun refuses to silently discard the interrupted run
    assert_clean_error(run("train", *RESUME_ARGS, "-o", out), "--resume")
    result = run("train", *RESUME_ARGS, "-o", out, "--resume")
    assert result.exit_code == 0, result.output
    assert not snap.exists()
    assert out.read_bytes() == full.read_bytes()
    steps = [json.loads(line)["step"] for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 600


def test_resume_with_changed_settings_is_refused(tmp_path):
    out = tmp_path / "m.safetensors"
    proc = subprocess.Popen([lpa_executable(), "train", *RESUME_ARGS, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    snap = tmp_path / "m.safetensors.snapshot"
    deadline = time.time() + 60
    while not snap.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert_clean_error(run("train", *RESUME_ARGS, "--lr", "0.1", "-o", out, "--resume"), "different settings")


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="not available"):
            resolve_device("cuda")
