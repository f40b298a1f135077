"""The precision matrix (issue 39): every objective form x every head-loss path x fp32 / bf16 / fp16
autocast on the CPU x every model kind. Each case runs one step and checks it against the fp32 stacked
step on the same model and batch: per-depth losses and gradients within the precision's tolerance, and
every gradient in its parameter's dtype. CPU autocast runs the code paths CUDA autocast runs (the same
dispatch, other kernels), which is where the chunked head loss used to stop.

The default suite runs a slice that covers every row and every column at least once in bf16 and fp16
(every form on the fused chunked path, every model kind chunked and stacked, every path on the decoder;
fp32 chunked against stacked on every architecture is `tests/test_head_loss.py`'s); ``-m slow`` runs
the whole product, fp32 included.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from lpa_cli.config import ObjectiveConfig
from lpa_cli.training import head_loss
from lpa_cli.training.chunked_head import _Layout
from lpa_cli.training.evaluate import autocast
from lpa_cli.training.objectives import build_objective
from tests.conftest import tiny_model

FORMS = {
    "e2e": {"name": "e2e"},
    "lpa": {},
    "lpa-local": {"name": "lpa-local"},
    "lambda": {"lpa_lambda": 0.1},
    "loss power": {"loss_power": 0.5},
    "kl": {"align": "kl", "align_mix": 0.7},
    "depth sampling": {"sample_depths": 2},
    "rotation": {"depth_schedule": "rotation:2"},
    "curriculum": {"depth_schedule": "curriculum:1"},
}
PATHS = ["stacked", "chunked", "auto", "sampled:8"]
PRECISIONS = ["fp32", "bf16", "fp16"]
LOCAL = ["gpt", "decoder", "encoder", "mlp", "resnet", "vit"]  # gpt on tokens is the byte GPT
MODELS = LOCAL + ["hf-llama", "hf-gpt2"]
LM = {"gpt", "decoder", "hf-llama", "hf-gpt2"}
SCALE = 2.0**16  # GradScaler's initial factor
# (losses' relative error, gradients' cosine to fp32, gradient norm's relative error)
TOLERANCE = {"fp32": (1e-5, 1 - 1e-6, 1e-4), "bf16": (3e-2, 0.99, 0.08), "fp16": (5e-3, 0.999, 0.02)}


def _model(name: str):
    if not name.startswith("hf-"):
        return tiny_model(name, depth=3, width=16)
    transformers = pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    from lpa_cli.data.batch import Batch
    from lpa_cli.integrations.transformers import lpa_model

    torch.manual_seed(0)
    if name == "hf-gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=300, n_positions=32, n_embd=32, n_layer=3, n_head=4))
    else:
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32))
    model = lpa_model(hf, context=16, tokenizer="bytes").model  # through the adapter, as `lpa train --init` reads it
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 300, (5, 13), generator=g)
    return model, Batch(x[:, :-1], x[:, 1:]), "lm"


def _step(model, batch, kind, settings: dict, path: str, precision: str, device: str = "cpu"):
    """(objective output, {name: grad}) of one step. fp16 scales the loss as `torch.amp.GradScaler` does:
    from 2^16, halved while any gradient overflows, then unscaled."""
    obj = build_objective(ObjectiveConfig(**({"name": "lpa"} | settings | {"head_loss": path})), model.num_blocks, kind)
    scale = SCALE if precision == "fp16" else 1.0
    while True:
        model.zero_grad(set_to_none=True)
        with autocast(torch.device(device), precision):
            out = obj(model, batch, step=1, generator=torch.Generator().manual_seed(3))
        (out.loss * scale).backward()
        params = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
        if all(torch.isfinite(p.grad).all() for _, p in params) or scale < 1:
            break
        scale /= 2
    for n, p in params:
        assert p.grad.dtype == p.dtype, (n, p.grad.dtype, p.dtype)
        assert torch.isfinite(p.grad).all(), n
    return out, {n: p.grad.detach() / scale for n, p in params}


def _flat(grads: dict, names) -> torch.Tensor:
    return torch.cat([grads[n].flatten().double() for n in names])


def check_case(model_name: str, form: str, path: str, precision: str, monkeypatch, device: str = "cpu") -> None:
    """One case of the matrix on ``device`` (tests/test_cuda.py runs a slice of it on a GPU)."""
    if path.startswith("sampled") and model_name not in LM:
        pytest.skip("the sampled loss reads a vocabulary projection (language models only)")
    model, batch, kind = _model(model_name)
    model, batch = model.to(device), batch.to(device)
    settings = FORMS[form]
    ref, g_ref = _step(model, batch, kind, settings, "stacked", "fp32", device)
    chunks = []
    if path in ("chunked", "auto"):  # a budget of one row a chunk: many chunks even on tiny heads
        monkeypatch.setattr(head_loss, "CPU_BUDGET", 8)
        monkeypatch.setattr(head_loss, "GPU_BUDGET_RANGE", (8, 8))
        real = _Layout.chunks
        monkeypatch.setattr(_Layout, "chunks", lambda self: (chunks.append(c) or c for c in real(self)))
    out, grads = _step(model, batch, kind, settings, path, precision, device)
    if path in ("chunked", "auto"):
        assert len(chunks) >= 3, len(chunks)
    loss_tol, cos_tol, norm_tol = TOLERANCE[precision]
    if path.startswith("sampled"):  # an estimate below depth N: its own fp32 run is the reference
        ref, g_ref = _step(model, batch, kind, settings, path, "fp32", device)
    assert out.depths == ref.depths
    torch.testing.assert_close(out.losses.float(), ref.losses.float(), rtol=loss_tol, atol=loss_tol)
    assert set(grads) == set(g_ref)
    names = sorted(g_ref)
    a, b = _flat(grads, names), _flat(g_ref, names)
    cos = float(a @ b / (a.norm() * b.norm()).clamp_min(1e-30))
    assert cos >= cos_tol, (cos, model_name, form, path, precision)
    assert abs(float(a.norm() / b.norm()) - 1) <= norm_tol, (float(a.norm()), float(b.norm()))


def _in_default_slice(model: str, form: str, path: str) -> bool:
    return (model == "gpt" and path == "chunked") or (form == "lpa" and path in ("chunked", "stacked")) or (model == "decoder" and form == "lpa")


CASES = [c for c in itertools.product(MODELS, FORMS, PATHS, PRECISIONS) if not (c[2].startswith("sampled") and c[0] not in LM)]
DEFAULT = [c for c in CASES if _in_default_slice(*c[:3]) and c[3] != "fp32"]  # fp32 chunked = stacked: tests/test_head_loss.py


@pytest.mark.parametrize("model_name,form,path,precision", DEFAULT)
def test_precision_slice(model_name, form, path, precision, monkeypatch):
    check_case(model_name, form, path, precision, monkeypatch)


@pytest.mark.slow
@pytest.mark.parametrize("model_name,form,path,precision", [c for c in CASES if c not in DEFAULT])
def test_precision_matrix(model_name, form, path, precision, monkeypatch):
    check_case(model_name, form, path, precision, monkeypatch)


def _big_lm():
    """A decoder whose all-depth mean gives each token a weight of 1/4,096: times a softmax probability
    of 1/512 that is 5e-7, in fp16's subnormal range (its smallest normal number is 6e-5)."""
    from lpa_cli.config import ModelConfig
    from lpa_cli.data.batch import Batch
    from lpa_cli.models import build_model

    torch.manual_seed(0)
    vocab, T, B = 512, 128, 32
    model = build_model(ModelConfig(arch="decoder", depth=2, width=16, zero_init=False, options={"heads": 2, "kv_heads": 2, "vocab": vocab}),
                        (T,), vocab, "tokens", "lm")
    g = torch.Generator().manual_seed(1)
    return model, Batch(torch.randint(0, vocab, (B, T), generator=g), torch.randint(0, vocab, (B, T), generator=g)), "lm"


def _errors(grads: dict, ref: dict) -> dict[str, float]:
    return {n: float((grads[n] - ref[n]).norm() / ref[n].norm()) for n in ref}


def test_fp16_under_a_loss_scaler_keeps_the_small_gradients_the_stacked_path_keeps(monkeypatch):
    """The chunked path takes its gradients inside the forward pass, before the scaler's factor: its error
    against fp32 is the stacked path's, parameter by parameter; without the power-of-two guard it is
    several times larger (measured: 3-13x) because the logits' gradients fall into fp16's subnormals."""
    from lpa_cli.training import chunked_head

    model, batch, kind = _big_lm()
    _, g32 = _step(model, batch, kind, {}, "stacked", "fp32")
    _, g_stacked = _step(model, batch, kind, {}, "stacked", "fp16")
    monkeypatch.setattr(head_loss, "CPU_BUDGET", 1 << 20)  # 3 depths x 4,096 rows x 512 logits = 24 MiB: many chunks
    _, g_chunked = _step(model, batch, kind, {}, "chunked", "fp16")
    stacked, chunked = _errors(g_stacked, g32), _errors(g_chunked, g32)
    for name in g32:
        assert chunked[name] <= 1.5 * stacked[name] + 2e-4, (name, chunked[name], stacked[name])
    monkeypatch.setattr(chunked_head, "fp16_guard", lambda row_scale: (torch.ones(()), torch.ones(())))
    _, g_bare = _step(model, batch, kind, {}, "chunked", "fp16")
    bare = _errors(g_bare, g32)
    assert sum(bare.values()) > 3 * sum(chunked.values()), (bare, chunked)  # the guard is what keeps them


def test_lpa_trainer_trains_in_bf16_on_the_chunked_loss(tmp_path, monkeypatch):
    """`TrainingArguments(bf16=True)`: the Trainer's own autocast around lpa's objective, the head loss cut
    into many chunks; per-depth losses follow the fp32 run step by step and the weights stay fp32."""
    pytest.importorskip("transformers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    pytest.importorskip("tokenizers", reason="the hf extra is not installed (pip install 'lpa[hf]')")
    from lpa_cli.data.text import builtin_corpus
    from tests.test_hf import bpe_tokenizer, build, save
    from tests.test_trainer_integration import _llama_cfg, step_rows, trainer_run

    path = save(build("llama", bos_token_id=0, eos_token_id=1), tmp_path, "llama")
    bpe_tokenizer(path)
    text = tmp_path / "text.txt"
    text.write_bytes(builtin_corpus()[:20000])
    cfg = _llama_cfg(path, text, head_loss="chunked")
    rows = step_rows(cfg, lm=True)
    monkeypatch.setattr(head_loss, "CPU_BUDGET", 8 << 10)  # 3 rows of 300 logits a chunk
    chunks = []
    real = _Layout.chunks
    monkeypatch.setattr(_Layout, "chunks", lambda self: (chunks.append(c) or c for c in real(self)))
    fp32, _ = trainer_run(path, cfg, rows, tmp_path / "fp32", head_loss="chunked")
    assert len(chunks) >= 3 * cfg.train.steps
    bf16, trainer = trainer_run(path, cfg, rows, tmp_path / "bf16", training={"bf16": True}, head_loss="chunked")
    assert len(fp32) == len(bf16) == cfg.train.steps
    for a, b in zip(fp32, bf16):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 3e-2 * abs(a[k]), (k, a[k], b[k])
    assert any(abs(bf16[0][k] - bf16[-1][k]) > 1e-3 for k in bf16[0])  # it trained
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
