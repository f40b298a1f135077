"""Hugging Face model families: how each supported family's config keys and weight names map onto lpa's models.

lpa does not run Hugging Face's model classes. A supported family's ``config.json`` is translated into
one of lpa's own architectures (``decoder`` for GPT-2, Llama, Qwen2, Qwen3 and Mistral; ``encoder``
for BERT), and its safetensors weights are renamed into that model. So every lpa feature (objectives,
chunked losses, FSDP, tracing, KV-cache decoding) works on them unchanged, ``transformers`` is not
needed at run time, and the tests compare the result with ``transformers``' own forward pass.

A config feature the translation does not implement (a rotary scaling type, logit soft-capping,
cross-attention, ...) is refused with a one-line error naming it, never approximated. Loading reads
local safetensors files only: no hub, no pickles, no code from the directory.

This module holds the families (config translation and weight names); `directory` reads the files,
`load` brings a directory in and `save` (``export_hf``) writes an lpa model back out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lpa_core.errors import CheckpointError, LpaError
from lpa_cli.config import ModelConfig
from lpa_cli.models.hf.directory import read_config, refuse, weight_files
from lpa_cli.models import build_model

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
               "relu": "relu"}


ROPE_TYPES = ("default", "linear", "llama3")


# --- families --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Translation:
    """A Hugging Face config as an lpa model."""

    arch: str
    depth: int
    width: int
    options: dict[str, Any]
    positions: int  # how many positions the model can read


def _int(config: dict, key: str, directory: Path, default: Any = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{directory}/config.json: {key} must be a positive integer, got {value!r}")
    return value


def _rope(config: dict, directory: Path) -> tuple[float, dict]:
    """(theta, scaling) from either the old (rope_theta, rope_scaling) or the new (rope_parameters) keys."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and params and "rope_type" not in params and all(isinstance(v, dict) for v in params.values()):
        raise refuse(directory, "per-layer rotary parameters are not implemented")
    params = dict(params) if isinstance(params, dict) else {}
    theta = float(params.pop("rope_theta", config.get("rope_theta", 10000.0)))
    scaling = dict(config.get("rope_scaling") or {}) | params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise refuse(directory, f"rotary scaling {kind!r} is not implemented (lpa implements {', '.join(ROPE_TYPES)})")
    if float(scaling.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise refuse(directory, "partial rotary embeddings (partial_rotary_factor) are not implemented")
    if kind == "default":
        return theta, {}
    keep = {"factor"} | ({"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"} if kind == "llama3" else set())
    missing = keep - set(scaling)
    if missing:
        raise CheckpointError(f"{directory}/config.json: rotary scaling {kind!r} lacks {', '.join(sorted(missing))}")
    return theta, {"rope_type": kind} | {k: scaling[k] for k in keep}


def _activation(name: Any, directory: Path) -> str:
    if name not in ACTIVATIONS:
        raise refuse(directory, f"activation {name!r} is not implemented (lpa implements {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _common_refusals(config: dict, directory: Path) -> None:
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if config.get(key) not in (None, 0, 0.0):
            raise refuse(directory, f"{key} (logit soft-capping) is not implemented")
    if config.get("add_cross_attention") or config.get("is_encoder_decoder"):
        raise refuse(directory, "cross-attention is not implemented")
    if config.get("query_pre_attn_scalar") is not None:
        raise refuse(directory, "query_pre_attn_scalar (a non-standard attention scale) is not implemented")


def _llama_options(config: dict, directory: Path) -> Translation:
    family = config["model_type"]
    _common_refusals(config, directory)
    width = _int(config, "hidden_size", directory)
    heads = _int(config, "num_attention_heads", directory)
    depth = _int(config, "num_hidden_layers", directory)
    kv = _int(config, "num_key_value_heads", directory, heads)
    head_dim = config.get("head_dim") or width // heads
    theta, scaling = _rope(config, directory)
    layer_types, window = [], 0
    if family in ("qwen2", "qwen3", "mistral"):
        window = config.get("sliding_window") or 0
        if family in ("qwen2", "qwen3"):
            if not config.get("use_sliding_window", False):
                window = 0
        types = config.get("layer_types")
        if window and isinstance(types, list):
            unknown = sorted(set(types) - {"full_attention", "sliding_attention"})
            if unknown or len(types) != depth:
                raise refuse(directory, f"layer_types {unknown or types} is not implemented")
            layer_types = ["sliding" if t == "sliding_attention" else "full" for t in types]
        elif window and family in ("qwen2", "qwen3"):
            first = config.get("max_window_layers", depth)
            layer_types = ["sliding" if i >= first else "full" for i in range(depth)]
        if window and layer_types and "sliding" not in layer_types:
            window, layer_types = 0, []
    elif config.get("sliding_window"):
        raise refuse(directory, "sliding_window on a llama model is not implemented")
    qkv_bias = bool(config.get("attention_bias", family == "qwen2"))
    out_bias = bool(config.get("attention_bias", False))
    options = {
        "heads": heads, "kv_heads": kv, "head_dim": head_dim, "hidden": _int(config, "intermediate_size", directory), "gated": True,
        "activation": _activation(config.get("hidden_act", "silu"), directory), "norm": "rmsnorm",
        "norm_eps": float(config.get("rms_norm_eps", 1e-6)), "positions": "rope", "rope_theta": theta, "rope_scaling": scaling,
        "qkv_bias": qkv_bias, "out_bias": out_bias, "mlp_bias": bool(config.get("mlp_bias", False)), "qk_norm": family == "qwen3",
        "window": int(window), "layer_types": layer_types, "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
        "vocab": _int(config, "vocab_size", directory),
    }
    positions = _int(config, "max_position_embeddings", directory, 2048)
    return Translation("decoder", depth, width, options | {"max_positions": positions}, positions)


def _gpt2_options(config: dict, directory: Path) -> Translation:
    _common_refusals(config, directory)
    if config.get("scale_attn_by_inverse_layer_idx"):
        raise refuse(directory, "scale_attn_by_inverse_layer_idx is not implemented")
    if config.get("scale_attn_weights") is False:
        raise refuse(directory, "scale_attn_weights = false (unscaled attention) is not implemented")
    width = _int(config, "n_embd", directory)
    positions = _int(config, "n_positions", directory)
    options = {
        "heads": _int(config, "n_head", directory), "hidden": config.get("n_inner") or 4 * width, "gated": False,
        "activation": _activation(config.get("activation_function", "gelu_new"), directory), "norm": "layernorm",
        "norm_eps": float(config.get("layer_norm_epsilon", 1e-5)), "positions": "learned", "max_positions": positions,
        "qkv_bias": True, "out_bias": True, "mlp_bias": True, "tie_embeddings": bool(config.get("tie_word_embeddings", True)),
        "vocab": _int(config, "vocab_size", directory),
    }
    return Translation("decoder", _int(config, "n_layer", directory), width, options, positions)


def _bert_options(config: dict, directory: Path) -> Translation:
    _common_refusals(config, directory)
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise refuse(directory, f"position_embedding_type {config.get('position_embedding_type')!r} is not implemented")
    if config.get("is_decoder"):
        raise refuse(directory, "a BERT used as a decoder is not implemented")
    positions = _int(config, "max_position_embeddings", directory)
    options = {
        "heads": _int(config, "num_attention_heads", directory), "hidden": _int(config, "intermediate_size", directory),
        "activation": _activation(config.get("hidden_act", "gelu"), directory), "norm_eps": float(config.get("layer_norm_eps", 1e-12)),
        "norm_position": "post", "max_positions": positions, "type_vocab": _int(config, "type_vocab_size", directory, 2),
        "pool": "cls", "pooler": True, "vocab": _int(config, "vocab_size", directory),
    }
    return Translation("encoder", _int(config, "num_hidden_layers", directory), _int(config, "hidden_size", directory), options, positions)


# Weight names: lpa's name -> the Hugging Face name, per family (for a model of `depth` blocks and a task kind).


def _llama_names(depth: int, opts: dict, kind: str) -> dict[str, str]:
    names = {"embed.tok.weight": "model.embed_tokens.weight", "head.norm.weight": "model.norm.weight"}
    if kind == "classification":
        names["head.score.weight"] = "score.weight"
    else:
        names["head.proj.weight"] = "lm_head.weight"
    for i in range(depth):
        a, h = f"blocks.{i}.", f"model.layers.{i}."
        names |= {a + "norm1.weight": h + "input_layernorm.weight", a + "norm2.weight": h + "post_attention_layernorm.weight"}
        for p in ("q", "k", "v", "o"):
            names[f"{a}attn.{p}_proj.weight"] = f"{h}self_attn.{p}_proj.weight"
            if (opts["qkv_bias"] and p != "o") or (opts["out_bias"] and p == "o"):
                names[f"{a}attn.{p}_proj.bias"] = f"{h}self_attn.{p}_proj.bias"
        if opts["qk_norm"]:
            names |= {a + "attn.q_norm.weight": h + "self_attn.q_norm.weight", a + "attn.k_norm.weight": h + "self_attn.k_norm.weight"}
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            names[f"{a}mlp.{ours}.weight"] = f"{h}mlp.{theirs}.weight"
            if opts["mlp_bias"]:
                names[f"{a}mlp.{ours}.bias"] = f"{h}mlp.{theirs}.bias"
    return names


def _bert_names(depth: int, opts: dict, kind: str) -> dict[str, str]:
    names = {"embed.tok.weight": "bert.embeddings.word_embeddings.weight", "embed.pos.weight": "bert.embeddings.position_embeddings.weight",
             "embed.types.weight": "bert.embeddings.token_type_embeddings.weight", "embed.norm.weight": "bert.embeddings.LayerNorm.weight",
             "embed.norm.bias": "bert.embeddings.LayerNorm.bias", "head.fc.weight": "classifier.weight", "head.fc.bias": "classifier.bias"}
    if opts.get("pooler"):
        names |= {"head.pooler.weight": "bert.pooler.dense.weight", "head.pooler.bias": "bert.pooler.dense.bias"}
    for i in range(depth):
        a, h = f"blocks.{i}.", f"bert.encoder.layer.{i}."
        for ours, theirs in (("attn.q_proj", "attention.self.query"), ("attn.k_proj", "attention.self.key"), ("attn.v_proj", "attention.self.value"),
                             ("attn.o_proj", "attention.output.dense"), ("norm1", "attention.output.LayerNorm"), ("up", "intermediate.dense"),
                             ("down", "output.dense"), ("norm2", "output.LayerNorm")):
            for p in ("weight", "bias"):
                names[f"{a}{ours}.{p}"] = f"{h}{theirs}.{p}"
    return names


# GPT-2 layer tensors other than the fused q/k/v: (lpa name, GPT-2 name, stored as a Conv1D, i.e. transposed)
_GPT2_LAYER = [("attn.o_proj", "attn.c_proj", True), ("mlp.up", "mlp.c_fc", True), ("mlp.down", "mlp.c_proj", True),
               ("norm1", "ln_1", False), ("norm2", "ln_2", False)]


def _gpt2_to_lpa(hf: dict[str, Tensor], depth: int, opts: dict, kind: str) -> dict[str, Tensor]:
    """GPT-2 keeps q, k and v in one Conv1D (weights stored as (in, out)): split and transpose."""
    out = {"embed.tok.weight": hf["transformer.wte.weight"], "embed.pos.weight": hf["transformer.wpe.weight"],
           "head.norm.weight": hf["transformer.ln_f.weight"], "head.norm.bias": hf["transformer.ln_f.bias"]}
    if kind == "classification":
        if "score.weight" in hf:
            out["head.score.weight"] = hf["score.weight"]
    else:
        out["head.proj.weight"] = hf.get("lm_head.weight", hf["transformer.wte.weight"])
    width = hf["transformer.wte.weight"].shape[1]
    for i in range(depth):
        h, a = f"transformer.h.{i}.", f"blocks.{i}."
        qkv_w, qkv_b = hf[h + "attn.c_attn.weight"], hf[h + "attn.c_attn.bias"]
        for j, p in enumerate("qkv"):
            out[f"{a}attn.{p}_proj.weight"] = qkv_w[:, j * width : (j + 1) * width].t().contiguous()
            out[f"{a}attn.{p}_proj.bias"] = qkv_b[j * width : (j + 1) * width].contiguous()
        for ours, theirs, conv1d in _GPT2_LAYER:
            out[f"{a}{ours}.weight"] = hf[f"{h}{theirs}.weight"].t().contiguous() if conv1d else hf[f"{h}{theirs}.weight"]
            out[f"{a}{ours}.bias"] = hf[f"{h}{theirs}.bias"]
    return out


def _gpt2_to_hf(ours: dict[str, Tensor], depth: int, opts: dict, kind: str) -> dict[str, Tensor]:
    hf = {"transformer.wte.weight": ours["embed.tok.weight"], "transformer.wpe.weight": ours["embed.pos.weight"],
          "transformer.ln_f.weight": ours["head.norm.weight"], "transformer.ln_f.bias": ours["head.norm.bias"]}
    if kind == "classification":
        hf["score.weight"] = ours["head.score.weight"]
    elif not opts.get("tie_embeddings"):
        hf["lm_head.weight"] = ours["head.proj.weight"]
    for i in range(depth):
        h, a = f"transformer.h.{i}.", f"blocks.{i}."
        hf[h + "attn.c_attn.weight"] = torch.cat([ours[f"{a}attn.{p}_proj.weight"] for p in "qkv"], dim=0).t().contiguous()
        hf[h + "attn.c_attn.bias"] = torch.cat([ours[f"{a}attn.{p}_proj.bias"] for p in "qkv"])
        for mine, theirs, conv1d in _GPT2_LAYER:
            hf[f"{h}{theirs}.weight"] = ours[f"{a}{mine}.weight"].t().contiguous() if conv1d else ours[f"{a}{mine}.weight"]
            hf[f"{h}{theirs}.bias"] = ours[f"{a}{mine}.bias"]
    return hf


@dataclass(frozen=True)
class Family:
    name: str
    translate: Callable[[dict, Path], Translation]
    prefix: str  # the base model's prefix in a *ForCausalLM / *ForSequenceClassification checkpoint
    lm_class: str
    classifier_class: str
    names: Callable[[int, dict, str], dict[str, str]] | None = None  # lpa name -> HF name (a plain renaming)
    to_lpa: Callable[[dict, int, dict, str], dict] | None = None  # or a conversion, both ways
    to_hf: Callable[[dict, int, dict, str], dict] | None = None


FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", _gpt2_options, "transformer.", "GPT2LMHeadModel", "GPT2ForSequenceClassification",
                   to_lpa=_gpt2_to_lpa, to_hf=_gpt2_to_hf),
    "llama": Family("llama", _llama_options, "model.", "LlamaForCausalLM", "LlamaForSequenceClassification", _llama_names),
    "qwen2": Family("qwen2", _llama_options, "model.", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification", _llama_names),
    "qwen3": Family("qwen3", _llama_options, "model.", "Qwen3ForCausalLM", "Qwen3ForSequenceClassification", _llama_names),
    "mistral": Family("mistral", _llama_options, "model.", "MistralForCausalLM", "MistralForSequenceClassification", _llama_names),
    "bert": Family("bert", _bert_options, "bert.", "", "BertForSequenceClassification", _bert_names),
}


IGNORED = (".rotary_emb.inv_freq", "position_ids", ".attn.bias", ".attn.masked_bias")  # buffers some checkpoints carry


def family_of(config: dict, directory: Path) -> Family:
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(f"{directory}: model_type {model_type!r} is not supported; supported: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def translate(directory: Path) -> tuple[Family, dict[str, Any], Translation]:
    """The directory's family, config and lpa model; a config lpa cannot build a model from is refused
    here, naming the file, before anything is allocated."""
    config = read_config(directory)
    weight_files(directory)
    family = family_of(config, directory)
    t = family.translate(config, directory)
    try:
        with torch.device("meta"):  # allocates nothing, whatever sizes the file claims
            build_model(ModelConfig(arch=t.arch, depth=t.depth, width=t.width, zero_init=False, options=t.options), (min(t.positions, 8),),
                        int(t.options.get("vocab") or 2), "tokens", "lm" if t.arch == "decoder" else "classification")
    except LpaError as err:
        raise CheckpointError(f"{directory}/config.json describes a model lpa cannot build ({err})") from None
    return family, config, t


def canonical(hf: dict[str, Tensor], family: Family, directory: Path) -> dict[str, Tensor]:
    """Checkpoints of a base model (BertModel, LlamaModel) lack the prefix; old ones use gamma/beta.
    Every weight must be finite floating point: integer or NaN weights would trace and train into
    garbage without a word."""
    out = {}
    for key, value in hf.items():
        if any(key.endswith(s) for s in IGNORED):
            continue
        if not value.is_floating_point():
            raise CheckpointError(f"{directory}: weight {key!r} is {str(value.dtype).removeprefix('torch.')}; lpa reads floating-point weights only")
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{directory}: weight {key!r} is not finite (it holds NaN or infinity)")
        key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        head = key.split(".")[0]
        if not key.startswith(family.prefix) and head not in ("lm_head", "score", "classifier"):
            key = family.prefix + key
        out[key] = value
    return out


# --- into lpa ----------------------------------------------------------------------------------------


# --- tracing a directory -------------------------------------------------------------------------------


# --- back to Hugging Face ------------------------------------------------------------------------------


