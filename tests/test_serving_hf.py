"""Serving in the tools people use: a full-depth `--format hf` export of an LPA-trained decoder runs
transformers' own LayerSkip-style self-speculative decoding (`generate(assistant_early_exit=k)`),
with the draft depth lpa measured written into generation_config.json (issue 26)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.cli_helpers import run_json

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")


def test_assistant_early_exit_output_equals_plain_generate(tmp_path):
    ckpt = tmp_path / "dec.safetensors"
    run_json("train", "--arch", "decoder", "--task", "text", "--depth", "4", "--width", "32", "--steps", "60", "--batch-size", "16",
             "--threads", "1", "--set", "task.options.context=32", "-o", ckpt)
    out = tmp_path / "hf"
    result = run_json("export", ckpt, "--at", "4", "--format", "hf", "-o", out)
    rec = result["assistant_early_exit"]
    k = rec["assistant_early_exit"]
    assert 1 <= k <= 3 and set(rec["acceptance_rate"]) == {"1", "2", "3"}
    best = max(rec["expected_speedup"].values())
    assert rec["expected_speedup"][str(k)] == best and all(0 <= a <= 1 for a in rec["acceptance_rate"].values())
    assert json.loads((out / "generation_config.json").read_text())["assistant_early_exit"] == k
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(out / "tokenizer.json"))
    ids = torch.tensor([tok.encode("This License")])
    assert model.generation_config.assistant_early_exit == k  # what generate() now does by default
    with torch.no_grad():
        model.generation_config.assistant_early_exit = None  # plain decoding, for the reference
        plain = model.generate(ids, max_new_tokens=16, do_sample=False)
        for depth in (1, k, 3):
            fast = model.generate(ids, max_new_tokens=16, do_sample=False, assistant_early_exit=depth)
            assert fast.tolist() == plain.tolist()
    # a prefix export (not the full model) and a classifier get no recommendation
    assert "assistant_early_exit" not in run_json("export", ckpt, "--at", "2", "--format", "hf", "-o", tmp_path / "hf2")
    assert not (tmp_path / "hf2" / "generation_config.json").exists()
    assert "assistant_early_exit" not in run_json("export", ckpt, "--at", "4", "--format", "hf", "--no-assistant-exit", "-o", tmp_path / "hf3")
