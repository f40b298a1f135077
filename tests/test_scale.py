"""Training at scale, on CPU: gradient accumulation, activation checkpointing, mixed precision,
compilation, FSDP against DDP, and resume with all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lpa_cli.formats.checkpoint import read_info
from lpa_cli.models.open import load_checkpoint
from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
from lpa_cli.training.trainer import train
from tests.cli_helpers import TINY_TRAIN, assert_clean_error, assert_resume_is_exact, run, run_json


def _cfg(**train_settings) -> RunConfig:
    return RunConfig(ModelConfig(arch="gpt", depth=2, width=16, options={"heads": 2}), TaskConfig(name="text", n_train=64, n_test=8,
                                                                                                   options={"context": 16}),
                     ObjectiveConfig(name="lpa"), TrainConfig(**({"steps": 12, "batch_size": 8, "threads": 1} | train_settings)))


def _params(result) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def test_gradient_accumulation_equals_one_big_batch():
    one = _params(train(_cfg()))
    four = _params(train(_cfg(grad_accum=4)))
    for name in one:
        torch.testing.assert_close(four[name], one[name], rtol=1e-4, atol=1e-5)


def test_activation_checkpointing_changes_nothing_but_memory():
    plain = _params(train(_cfg()))
    ckpt = _params(train(_cfg(activation_checkpointing=True)))
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_is_recorded(tmp_path, precision):
    out = tmp_path / "m.safetensors"
    result = train(_cfg(precision=precision, steps=30, lr=3e-3), out)
    assert all(torch.isfinite(torch.tensor(result.metrics["ce"])))
    assert read_info(out).config.train.precision == precision
    fp32 = train(_cfg(steps=30, lr=3e-3))
    assert result.metrics["ce"][-1] == pytest.approx(fp32.metrics["ce"][-1], rel=0.05)  # the same run, up to rounding


def test_resume_is_exact_with_accumulation_and_precision(tmp_path):
    """Interrupted at step 9 (a snapshot at 6), resumed: the same tensors as an uninterrupted run."""
    assert_resume_is_exact(_cfg(grad_accum=2, precision="fp16", steps=12, activation_checkpointing=True), tmp_path)


def test_compile_falls_back_in_one_warning_where_it_cannot(monkeypatch):
    def broken(module, **kwargs):
        def fails(*args, **kw):
            raise RuntimeError("no compiler here\nsecond line")
        return fails

    monkeypatch.setattr(torch, "compile", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = _params(train(_cfg(compile=True)))
    messages = [str(w.message) for w in caught if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    eager = _params(train(_cfg()))
    for name in eager:
        assert torch.equal(compiled[name], eager[name])


@pytest.mark.slow
def test_compiled_training_matches_eager():
    compiled = _params(train(_cfg(compile=True, steps=4)))
    eager = _params(train(_cfg(steps=4)))
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5)


def _torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "lpa_cli", "train", *args, "--json"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)


def test_fsdp_equals_ddp_equals_one_process(tmp_path):
    """Two CPU processes (gloo) split each global batch: DDP gives one process's model, and FSDP gives
    DDP's, to float tolerance, saved as one ordinary file; only rank 0 prints and writes."""
    args = [*TINY_TRAIN, "--arch", "gpt", "--task", "text", "--set", "model.options.heads=2", "--set", "task.options.context=16"]
    ddp = _torchrun(tmp_path, *args, "--parallel", "ddp", "-o", str(tmp_path / "ddp.safetensors"))
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    fsdp = _torchrun(tmp_path, *args, "--parallel", "fsdp", "-o", str(tmp_path / "fsdp.safetensors"), "--snapshot-every", "10")
    assert fsdp.returncode == 0, fsdp.stderr[-2000:]
    a, b = load_checkpoint(tmp_path / "ddp.safetensors"), load_checkpoint(tmp_path / "fsdp.safetensors")
    report = json.loads(fsdp.stdout)  # one JSON document: rank 1 printed nothing
    assert report["training"]["world_size"] == 2 and report["training"]["parameters"] == sum(p.numel() for p in b.model.parameters())
    single = tmp_path / "single.safetensors"
    run_json("train", *args, "-o", single)
    c = load_checkpoint(single)
    for name, value in a.model.state_dict().items():
        torch.testing.assert_close(b.model.state_dict()[name], value, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c.model.state_dict()[name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fsdp_resumes_after_sigkill(tmp_path):
    """An FSDP run killed (SIGKILL, both ranks) after a snapshot, resumed: the uninterrupted run's tensors."""
    import signal
    import time

    args = ["--depth", "3", "--width", "32", "--steps", "400", "--batch-size", "32", "--threads", "1", "--set", "task.n_train=512",
            "--set", "task.n_test=64", "--snapshot-every", "25", "--parallel", "fsdp", "--quiet"]
    full = _torchrun(tmp_path, *args, "-o", str(tmp_path / "full.safetensors"))
    assert full.returncode == 0, full.stderr[-2000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    out, snap = tmp_path / "cut.safetensors", tmp_path / "cut.safetensors.snapshot"
    proc = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "lpa_cli", "train", *args, "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"OMP_NUM_THREADS": "1"},
                            cwd=tmp_path, start_new_session=True)
    deadline = time.time() + 120
    while not snap.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    subprocess.run(["pkill", "-9", "-f", str(out)])  # torchrun starts its workers in sessions of their own
    proc.wait()
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-f", str(out)], capture_output=True).returncode == 0 and time.time() < deadline:
        time.sleep(0.05)
    assert snap.exists() and not out.exists(), "the run finished before it could be killed; raise --steps"
    resumed = _torchrun(tmp_path, *args, "-o", str(out), "--resume")
    assert resumed.returncode == 0, [line for line in resumed.stderr.splitlines() if line.startswith("error")]
    a, b = load_checkpoint(tmp_path / "full.safetensors").model.state_dict(), load_checkpoint(out).model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_bad_scale_settings_exit_2(tmp_path):
    out = tmp_path / "m.safetensors"
    for flag, value, needle in (("--precision", "fp8", "--precision"), ("--grad-accum", "0", "--grad-accum"),
                                ("--parallel", "tp", "--parallel"), ("--clip-grad", "nan", "--clip-grad"), ("--head-loss", "fast", "--head-loss")):
        assert_clean_error(run("train", *TINY_TRAIN, flag, value, "-o", out), needle)
    assert not out.exists()
