"""Real early exit and self-speculative decoding: same answers as the full model where promised."""

from __future__ import annotations

import csv

import pytest
import torch

from lpa_cli.config import ModelConfig
from lpa_cli.serving.generate import generate
from lpa_cli.serving.predict import ExitRule, predict
from lpa_cli.models import build_model
from lpa_cli.registry import ARCHITECTURES
from lpa_cli.data.splits import TensorSplit
from lpa_cli.formats.tokenizer import BYTES
from tests.cli_helpers import assert_clean_error, run, run_json
from tests.conftest import small_options

LM_ARCHS = [a for a, e in ARCHITECTURES.items() if "lm" in e.kinds]
SAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "sample_checkpoints"


def lm(arch: str, depth: int = 4, context: int = 48, seed: int = 0):
    torch.manual_seed(seed)
    options = {k: v for k, v in small_options(arch).items() if k != "vocab"}
    model = build_model(ModelConfig(arch=arch, depth=depth, width=32, zero_init=False, options=options), (context,), 256, "tokens", "lm")
    return model.eval()


def reference_greedy(model, prompt: str, n: int) -> list[int]:
    """Greedy decoding without any cache: the whole sequence through the model at every step."""
    ids = list(prompt.encode())
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids]))[0, -1]
            out.append(int(logits.argmax()))
            ids.append(out[-1])
    return out


@pytest.mark.parametrize("arch", LM_ARCHS)
def test_cached_decoding_equals_recomputation(arch):
    model = lm(arch)
    assert generate(model, BYTES, "The licence", max_new_tokens=20).tokens == reference_greedy(model, "The licence", 20)


@pytest.mark.parametrize("arch", LM_ARCHS)
@pytest.mark.parametrize("draft_depth,speculate", [(1, 3), (2, 4), (3, 2)])
def test_greedy_self_speculation_is_token_identical(arch, draft_depth, speculate):
    model = lm(arch)
    full = generate(model, BYTES, "Permission is granted", max_new_tokens=24)
    spec = generate(model, BYTES, "Permission is granted", max_new_tokens=24, strategy="self-speculative",
                    draft_depth=draft_depth, speculate=speculate)
    assert spec.tokens == full.tokens
    assert spec.drafted > 0 and 0 <= spec.accepted <= spec.drafted and spec.rounds > 0


def test_self_speculation_on_a_hugging_face_derived_model(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    from lpa_cli.models.hf.load import load_model
    from tests.test_hf import build, save

    path = save(build("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=1), tmp_path, "qwen2")
    model, _, _ = load_model(path, context=64)
    full = generate(model, BYTES, "abc", max_new_tokens=20)
    spec = generate(model, BYTES, "abc", max_new_tokens=20, strategy="self-speculative", draft_depth=1, speculate=3)
    assert spec.tokens == full.tokens
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        ref = hf.generate(torch.tensor([list(b"abc")]), max_new_tokens=20, do_sample=False)[0, 3:].tolist()
    assert full.tokens == ref  # transformers' own greedy decoding, sliding window and all


def test_exit_decoding_with_an_unreachable_threshold_is_full_decoding():
    model = lm("gpt")
    full = generate(model, BYTES, "GNU", max_new_tokens=16)
    never = generate(model, BYTES, "GNU", max_new_tokens=16, strategy="exit", threshold=1.0)
    assert never.tokens == full.tokens and never.mean_exit_depth == model.num_blocks
    early = generate(model, BYTES, "GNU", max_new_tokens=16, strategy="exit", threshold=1e-6, min_exit_depth=1)
    assert early.mean_exit_depth == 1  # every token leaves at the first depth read


def test_sampling_is_seeded_and_speculation_keeps_working():
    model = lm("decoder")
    a = generate(model, BYTES, "x", max_new_tokens=12, temperature=1.0, seed=3)
    b = generate(model, BYTES, "x", max_new_tokens=12, temperature=1.0, seed=3)
    assert a.tokens == b.tokens
    s = generate(model, BYTES, "x", max_new_tokens=12, temperature=0.8, top_k=20, seed=3, strategy="self-speculative", draft_depth=2)
    assert len(s.tokens) == 12


def test_predict_exits_rows_for_real():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", depth=4, width=16, zero_init=False), (3,), 5, "vector", "classification").eval()
    x = torch.randn(200, 3)
    split = TensorSplit(x, torch.zeros(200, dtype=torch.long))
    full = predict(model, split, ExitRule("depth", 4), "classification")
    with torch.no_grad():
        assert torch.equal(full.outputs, model(x).argmax(-1))
    assert (full.exit_depth == 4).all()
    for rule in (ExitRule("confidence", 0.25), ExitRule("entropy", 1.55), ExitRule("patience", 1)):
        p = predict(model, split, rule, "classification", batch_size=64)
        with torch.no_grad():
            preds = model.predictions(x)
        for i in range(200):  # each row's answer is its exit depth's prediction
            assert int(p.outputs[i]) == int(preds[int(p.exit_depth[i])][i].argmax())
        assert p.exit_depth.float().mean() < 4


def test_generate_and_predict_commands(tmp_path):
    gpt = SAMPLES / "gpt-text-lpa.safetensors"
    data = run_json("generate", gpt, "--prompt", "This License", "--max-new-tokens", "12", "--strategy", "self-speculative",
                    "--draft-depth", "2")
    assert len(data["tokens"]) == 12 and data["acceptance_rate"] is not None
    text = run("generate", gpt, "--prompt", "This License", "--max-new-tokens", "8")
    assert text.exit_code == 0 and text.stdout.startswith("This License") and "tokens/s" in text.stderr
    out = tmp_path / "preds.csv"
    result = run_json("predict", SAMPLES / "resnet-digits-lpa.safetensors", "--exit", "confidence:0.9", "-o", out)
    assert result["n"] == 360 and result["accuracy"] > 0.9 and result["mean_exit_depth"] < 6
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 360 and {"row", "prediction", "exit_depth", "target", "correct"} <= set(rows[0])
    assert_clean_error(run("predict", SAMPLES / "resnet-digits-lpa.safetensors", "--exit", "confidence:0.9", "-o", out), "already exists")


def test_bad_generation_inputs(tmp_path):
    gpt = SAMPLES / "gpt-text-lpa.safetensors"
    assert_clean_error(run("generate", SAMPLES / "mlp-stripe-lpa.safetensors", "--prompt", "x"), "not a language model")
    assert_clean_error(run("generate", gpt, "--prompt", "x", "--strategy", "self-speculative", "--draft-depth", "8"), "between 1 and 7")
    assert_clean_error(run("generate", gpt, "--prompt", ""), "empty")
    assert_clean_error(run("generate", gpt, "--prompt", "x" * 140), "at most 128 positions")
    assert_clean_error(run("predict", gpt, "--exit", "depth:2"), "lpa generate")
    assert_clean_error(run("predict", SAMPLES / "mlp-stripe-lpa.safetensors", "--exit", "confidence:0.5"), "regression has no confidence")
    assert_clean_error(run("predict", SAMPLES / "resnet-digits-lpa.safetensors", "--exit", "speed:1"), "expected confidence")
