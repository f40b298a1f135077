"""Hugging Face decoder-only models as `ResidualModel`s: the only module that knows HF internals.

Depth k is the residual stream after decoder layer k, read through the model's own final norm and LM
head (the logit lens), with the norm recomputed at every depth. Supported families:

- GPT-2 (``model_type`` gpt2): ``transformer.wte + wpe`` / ``transformer.h`` / ``ln_f + lm_head``.
- Llama-style (llama, qwen2, qwen3, mistral, ...): ``model.embed_tokens`` / ``model.layers`` (with
  rotary position embeddings from ``model.rotary_emb``) / ``model.norm + lm_head``.

Adding a family means adding an entry to `FAMILIES`. Loading is local only (no hub access), from
safetensors weights only, and never runs code from the model directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from analyzers.errors import CheckpointError, DataError, UsageError
from lpa_cli.models.protocol import ResidualModel, linear_op, norm_op

INSTALL_HINT = "Hugging Face support needs the optional extra: pip install 'lpa[hf]' (or pip install transformers)"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    transformers.utils.logging.set_verbosity_error()  # our progress bar is the only one
    transformers.utils.logging.disable_progress_bar()
    return transformers


class _GPT2Embed(nn.Module):
    def __init__(self, wte: nn.Module, wpe: nn.Module) -> None:
        super().__init__()
        self.wte, self.wpe = wte, wpe

    def forward(self, ids: Tensor) -> Tensor:  # (B, T) -> (B, T, C)
        return self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))


class _Layer(nn.Module):
    """An HF decoder layer as a protocol block: h -> h', causal, no cache."""

    def __init__(self, layer: nn.Module, rotary: nn.Module | None) -> None:
        super().__init__()
        self.layer = layer
        self.rotary = rotary

    def forward(self, h: Tensor) -> Tensor:  # (B, T, C)
        kwargs: dict[str, Any] = {"attention_mask": None, "use_cache": False}
        if self.rotary is not None:
            positions = torch.arange(h.shape[1], device=h.device)[None]
            kwargs["position_ids"] = positions
            kwargs["position_embeddings"] = self.rotary(h, positions)
        out = self.layer(h, **kwargs)
        return out[0] if isinstance(out, tuple) else out


class _Head(nn.Module):
    def __init__(self, norm: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.norm, self.lm_head = norm, lm_head

    def forward(self, h: Tensor) -> Tensor:  # (B, T, C) -> (B, T, vocab)
        return self.lm_head(self.norm(h))

    def numpy_ops(self):
        norm, p1 = norm_op(self.norm, "head.norm")
        proj, p2 = linear_op(self.lm_head, "head.lm_head")
        return {"feature_axis": -1, "ops": norm + proj}, p1 | p2


def _gpt2(model: nn.Module) -> ResidualModel:
    t = model.transformer
    blocks = [_Layer(layer, None) for layer in t.h]
    return ResidualModel(_GPT2Embed(t.wte, t.wpe), blocks, _Head(t.ln_f, model.lm_head), "ln_f, lm_head (logit lens)")


def _llama(model: nn.Module) -> ResidualModel:
    m = model.model
    blocks = [_Layer(layer, m.rotary_emb) for layer in m.layers]
    return ResidualModel(m.embed_tokens, blocks, _Head(m.norm, model.lm_head), "final RMSNorm, lm_head (logit lens)")


FAMILIES: dict[str, Callable[[nn.Module], ResidualModel]] = {
    "gpt2": _gpt2,
    "llama": _llama,
    "qwen2": _llama,
    "qwen3": _llama,
    "mistral": _llama,
}


def weights_sha256(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.glob("*.safetensors")):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_hf(directory: str | Path, device: str | torch.device = "cpu") -> tuple[ResidualModel, nn.Module, dict[str, Any]]:
    """(protocol model, the HF model itself, its config dict) from a local model directory."""
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a Hugging Face model directory (no config.json)")
    if not list(directory.glob("*.safetensors")):
        raise CheckpointError(f"{directory}: no *.safetensors weights (lpa never loads pickled .bin weights)")
    try:
        config = json.loads((directory / "config.json").read_text())
    except (ValueError, OSError) as err:
        raise CheckpointError(f"{directory}/config.json: not valid JSON ({err})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in FAMILIES:
        raise CheckpointError(f"{directory}: model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}")
    transformers = _transformers()
    try:
        # local files only, safetensors only, never code from the directory
        model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True,
                                                                  use_safetensors=True, trust_remote_code=False, attn_implementation="sdpa")
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{directory}: cannot load model ({str(err).splitlines()[0]})") from None
    model.to(device).eval()
    return FAMILIES[model_type](model), model, config


def _tokens(directory: Path, text: str | None, vocab: int) -> Tensor:
    from lpa_cli.tasks.text import builtin_corpus

    if text is None:
        raw = builtin_corpus().decode("utf-8")
    else:
        try:
            raw = Path(text).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"{text}: text file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"{text}: cannot read UTF-8 text ({err})") from None
    has_tokenizer = any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer.model"))
    if has_tokenizer:
        tok = _transformers().AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
        ids = tok(raw, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    else:
        if vocab < 256:
            raise DataError(f"{directory}: no tokenizer files and a vocabulary of {vocab} < 256, so bytes cannot be used as tokens")
        ids = torch.frombuffer(bytearray(raw.encode("utf-8")), dtype=torch.uint8).long()
    return ids


def trace_hf(directory: str | Path, output: str | Path | None, *, text: str | None = None, context: int = 128, device: str = "cpu", **kwargs: Any):
    """Trace a local HF decoder-only model on a text (default: the built-in corpus)."""
    from lpa_cli.trace import trace_model

    directory = Path(directory)
    model, hf_model, config = load_hf(directory, device)
    vocab = int(config.get("vocab_size", 0))
    ids = _tokens(directory, text, vocab)
    limit_ctx = int(config.get("n_positions") or config.get("max_position_embeddings") or context)
    context = min(context, limit_ctx)
    n = (ids.numel() - 1) // context
    if n < 1:
        raise DataError(f"text of {ids.numel()} tokens is too short for context {context}")
    windows = ids[: n * context + 1]
    x = torch.stack([windows[i * context : (i + 1) * context] for i in range(n)])
    y = torch.stack([windows[i * context + 1 : (i + 1) * context + 1] for i in range(n)])
    output = Path(output) if output else directory.with_name(directory.name + ".trace.h5")
    attrs = {
        "source": "hf",
        "checkpoint_path": str(directory),
        "checkpoint_sha256": weights_sha256(directory),
        "config": json.dumps({"model": {"arch": config["model_type"], "depth": model.num_blocks}, "objective": {"name": "pretrained"}, "hf_config": config}, sort_keys=True, default=str),
        "task": json.dumps({"name": f"text:{text or 'builtin'}", "kind": "lm", "in_shape": [context], "out_dim": vocab}, sort_keys=True),
        "objective": "pretrained",
        "split": "text",
    }
    return trace_model(model, x, y, "lm", output, attrs=attrs, **kwargs)
