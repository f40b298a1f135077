"""Hugging Face model directories: the only module that knows their config keys and weight names.

lpa does not run Hugging Face's model classes. A supported family's ``config.json`` is translated into
one of lpa's own architectures (``decoder`` for GPT-2, Llama, Qwen2, Qwen3 and Mistral; ``encoder``
for BERT), and its safetensors weights are renamed into that model. So every lpa feature (objectives,
chunked losses, FSDP, tracing, KV-cache decoding) works on them unchanged, ``transformers`` is not
needed at run time, and the tests compare the result with ``transformers``' own forward pass.

A config feature the translation does not implement (a rotary scaling type, logit soft-capping,
cross-attention, ...) is refused with a one-line error naming it, never approximated. Loading reads
local safetensors files only: no hub, no pickles, no code from the directory.

``export_hf`` goes the other way: an lpa model (cut at any depth) back into a directory that
``transformers``' ``from_pretrained`` loads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from analyzers.atomic import atomic_path, write_text
from analyzers.errors import CheckpointError, DataError, LpaError, UsageError
from lpa_cli.config import ModelConfig, RunConfig
from lpa_cli.tasks.base import first_id_at_or_above

log = logging.getLogger(__name__)

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
               "relu": "relu"}
ROPE_TYPES = ("default", "linear", "llama3")
DEFAULT_CONTEXT_CAP = 2048  # language-model windows default to the model's positions, at most this many
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json")


def _refuse(directory: Path | str, what: str) -> CheckpointError:
    return CheckpointError(f"{directory}: {what}; lpa refuses rather than approximate it")


# --- reading a directory ------------------------------------------------------------------------


def is_hf_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


def read_config(directory: Path) -> dict[str, Any]:
    if not (directory / "config.json").is_file():
        raise CheckpointError(f"{directory}: not a Hugging Face model directory (no config.json)")
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{directory}/config.json: not valid JSON ({err})") from None
    except RecursionError:
        raise CheckpointError(f"{directory}/config.json: nested too deeply to be a model config") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory}/config.json: not a JSON object")
    return config


def weight_files(directory: Path) -> list[Path]:
    """The directory's safetensors files; pickled weights alone are refused, never opened."""
    files = sorted(directory.glob("*.safetensors"))
    for f in files:
        _inside(directory, f)
    if not files:
        pickled = [p.name for p in directory.glob("*.bin")] + [p.name for p in directory.glob("*.pt")]
        hint = f" (found {', '.join(pickled)})" if pickled else ""
        raise CheckpointError(f"{directory}: no *.safetensors weights{hint}; lpa never loads pickled weights")
    return files


def _inside(directory: Path, path: Path) -> Path:
    """``path``, unless it is a symlink that leads out of ``directory``: only the blob store of a
    Hugging Face cache (``models--*/blobs/``, where a snapshot's files link to) is followed."""
    target = path.resolve()
    if path.is_symlink() and not target.is_relative_to(directory.resolve()):
        cache_blob = target.parent.name == "blobs" and target.parent.parent.name.startswith("models--")
        if not cache_blob:
            raise CheckpointError(f"{path}: is a symlink to {target}, outside the model directory (only a Hugging Face cache's "
                                  "blobs are followed); copy the file into the directory")
    return path


def read_weights(directory: Path) -> dict[str, Tensor]:
    """Every tensor of the directory's safetensors files (shards included), as float32."""
    files = weight_files(directory)
    tensors: dict[str, Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), "pt") as handle:
                for key in handle.keys():
                    t = handle.get_tensor(key)
                    tensors[key] = t.float() if t.is_floating_point() else t
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{f}: cannot read safetensors ({str(err).splitlines()[0]})") from None
    return tensors


def weights_sha256(directory: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(directory.glob("*.safetensors")):
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


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
        raise _refuse(directory, "per-layer rotary parameters are not implemented")
    params = dict(params) if isinstance(params, dict) else {}
    theta = float(params.pop("rope_theta", config.get("rope_theta", 10000.0)))
    scaling = dict(config.get("rope_scaling") or {}) | params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise _refuse(directory, f"rotary scaling {kind!r} is not implemented (lpa implements {', '.join(ROPE_TYPES)})")
    if float(scaling.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))) != 1.0:
        raise _refuse(directory, "partial rotary embeddings (partial_rotary_factor) are not implemented")
    if kind == "default":
        return theta, {}
    keep = {"factor"} | ({"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"} if kind == "llama3" else set())
    missing = keep - set(scaling)
    if missing:
        raise CheckpointError(f"{directory}/config.json: rotary scaling {kind!r} lacks {', '.join(sorted(missing))}")
    return theta, {"rope_type": kind} | {k: scaling[k] for k in keep}


def _activation(name: Any, directory: Path) -> str:
    if name not in ACTIVATIONS:
        raise _refuse(directory, f"activation {name!r} is not implemented (lpa implements {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def _common_refusals(config: dict, directory: Path) -> None:
    for key in ("final_logit_softcapping", "attn_logit_softcapping"):
        if config.get(key) not in (None, 0, 0.0):
            raise _refuse(directory, f"{key} (logit soft-capping) is not implemented")
    if config.get("add_cross_attention") or config.get("is_encoder_decoder"):
        raise _refuse(directory, "cross-attention is not implemented")
    if config.get("query_pre_attn_scalar") is not None:
        raise _refuse(directory, "query_pre_attn_scalar (a non-standard attention scale) is not implemented")


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
                raise _refuse(directory, f"layer_types {unknown or types} is not implemented")
            layer_types = ["sliding" if t == "sliding_attention" else "full" for t in types]
        elif window and family in ("qwen2", "qwen3"):
            first = config.get("max_window_layers", depth)
            layer_types = ["sliding" if i >= first else "full" for i in range(depth)]
        if window and layer_types and "sliding" not in layer_types:
            window, layer_types = 0, []
    elif config.get("sliding_window"):
        raise _refuse(directory, "sliding_window on a llama model is not implemented")
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
        raise _refuse(directory, "scale_attn_by_inverse_layer_idx is not implemented")
    if config.get("scale_attn_weights") is False:
        raise _refuse(directory, "scale_attn_weights = false (unscaled attention) is not implemented")
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
        raise _refuse(directory, f"position_embedding_type {config.get('position_embedding_type')!r} is not implemented")
    if config.get("is_decoder"):
        raise _refuse(directory, "a BERT used as a decoder is not implemented")
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
    from lpa_cli.models import build_model

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


def _canonical(hf: dict[str, Tensor], family: Family, directory: Path) -> dict[str, Tensor]:
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


def resolve_init(cfg: RunConfig, directory: Path) -> RunConfig:
    """The run config with the model a Hugging Face directory describes, its tokenizer for text tasks,
    and its context (capped at `DEFAULT_CONTEXT_CAP`) unless the task sets one."""
    family, _, t = translate(directory)
    options = dict(t.options) | {k: v for k, v in cfg.model.options.items() if k in ("pool", "dropout")}
    model = ModelConfig(arch=t.arch, depth=t.depth, width=t.width, zero_init=False, options=options, init=str(directory))
    task = cfg.task
    spec = task.name.partition(":")[0]
    opts = dict(task.options)
    if spec in ("text", "classify") and "tokenizer" not in opts:
        opts["tokenizer"] = str(directory)
    if spec in ("text", "tokens"):
        opts.setdefault("context", min(t.positions, DEFAULT_CONTEXT_CAP))
    context = opts.get("context")
    if isinstance(context, int) and context > t.positions:
        raise UsageError(f"context {context} is longer than the {t.positions} positions {directory} can read")
    if spec not in ("text", "tokens", "classify"):
        raise UsageError(f"--init {directory}: a {family.name} model reads text; give --data a text file, token file or classification file")
    return dataclasses.replace(cfg, model=model, task=dataclasses.replace(task, options=opts))


def load_weights(model, directory: Path) -> None:
    """Copy a directory's weights into ``model`` (built from `resolve_init`'s config). A classifier the
    checkpoint lacks (a language model fine-tuned for classification) starts fresh."""
    family, config, t = translate(directory)
    kind = "classification" if not model.tokenwise_head else "lm"
    hf = _canonical(read_weights(directory), family, directory)
    ours = model.state_dict()
    if family.to_lpa is not None:
        try:
            state = family.to_lpa(hf, model.num_blocks, t.options, kind)
        except KeyError as err:
            raise CheckpointError(f"{directory}: weight {err.args[0]!r} is missing") from None
    else:
        names = family.names(model.num_blocks, t.options, kind)
        if t.options.get("tie_embeddings") and kind == "lm":
            names.pop("head.proj.weight", None)
        missing = [theirs for mine, theirs in names.items() if theirs not in hf and not _fresh_head(mine, kind, family)]
        if missing:
            raise CheckpointError(f"{directory}: weights {', '.join(missing[:3])} are missing")
        state = {mine: hf[theirs] for mine, theirs in names.items() if theirs in hf}
        used = set(names.values())
        extra = sorted(k for k in hf if k not in used and not k.startswith(("lm_head", "score", "classifier")))
        if kind == "classification" and family.name != "bert":
            extra = [k for k in extra if k != "lm_head.weight"]
        if extra:
            raise _refuse(directory, f"weights lpa has no place for ({', '.join(extra[:3])})")
    fresh = sorted(k for k in ours if k not in state and not (t.options.get("tie_embeddings") and k == "head.proj.weight"))
    if any(not k.startswith("head.") for k in fresh):
        raise CheckpointError(f"{directory}: no weights for {', '.join(fresh[:3])}")
    for key, value in state.items():
        if key in ours and tuple(value.shape) != tuple(ours[key].shape):
            raise CheckpointError(f"{directory}: weight for {key} has shape {tuple(value.shape)}, the config says {tuple(ours[key].shape)}")
    if fresh:
        log.warning("%s: a new %s head (%s) starts from random weights", directory, kind, ", ".join(fresh))
    model.load_state_dict(state, strict=False)


def _fresh_head(name: str, kind: str, family: Family) -> bool:
    return kind == "classification" and name.startswith(("head.score", "head.fc"))


def checkpoint_metadata(directory: Path) -> dict[str, str]:
    """What a checkpoint trained from ``directory`` keeps for `export_hf`: family, config, tokenizer files."""
    config = read_config(directory)
    files = {}
    for name in TOKENIZER_FILES:
        path = directory / name
        if path.is_file() and path.stat().st_size < 1 << 20:
            files[name] = path.read_text(encoding="utf-8", errors="replace")
    return {"hf": json.dumps({"family": config["model_type"], "config": config, "files": files}, sort_keys=True)}


def load_model(directory: str | Path, device: str | torch.device = "cpu", context: int | None = None):
    """(protocol model, tokenizer, translation) of a Hugging Face LM directory, for tracing."""
    from lpa_cli.models import build_model

    directory = Path(directory)
    family, config, t = translate(directory)
    if t.arch != "decoder":
        raise UsageError(f"{directory}: a {family.name} model is an encoder; trace it after fine-tuning: lpa train --init {directory} --data FILE")
    window = min(context or t.positions, t.positions)
    cfg = ModelConfig(arch="decoder", depth=t.depth, width=t.width, zero_init=False, options=t.options)
    model = build_model(cfg, (window,), t.options["vocab"], "tokens", "lm")
    load_weights(model, directory)
    return model.to(device).eval(), _tokenizer(directory, config, t.options["vocab"]), t


def _tokenizer(directory: Path, config: dict, vocab: int):
    """The directory's tokenizer.json; without any tokenizer files, bytes (when the vocabulary has room)."""
    from lpa_cli.tokenizer import BYTES, load_tokenizer

    if not any((directory / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")):
        if vocab < 256:
            raise DataError(f"{directory}: no tokenizer files and a vocabulary of {vocab} < 256, so bytes cannot be used as tokens")
        log.warning("%s: no tokenizer files; reading text as UTF-8 bytes (token ids 0-255)", directory)
        return BYTES
    return load_tokenizer(directory, config)


# --- tracing a directory -------------------------------------------------------------------------------


def _tokens(text: str | None, tokenizer) -> Tensor:
    from lpa_cli.tasks.text import read_text

    raw = read_text(text or "")[0]
    return torch.tensor(tokenizer.encode(raw), dtype=torch.long)


def trace_hf(directory: str | Path, output: str | Path | None, *, text: str | None = None, context: int | None = None, bos: bool = False,
             device: str = "cpu", **kwargs: Any):
    """Trace a local Hugging Face decoder on a text (default: the built-in corpus) through the logit lens.

    Windows of ``context`` tokens, tokenised without special tokens; ``bos`` starts every window with
    the tokenizer's BOS token instead (the model then predicts the window's first text token from it).
    """
    from lpa_cli.trace import trace_model

    directory = Path(directory)
    family, config, t = translate(directory)
    context = min(128, t.positions) if context is None else context
    if context < 2:
        raise UsageError(f"--context must be at least 2, got {context}")
    if context > t.positions:
        raise UsageError(f"--context {context} is longer than the {t.positions} positions {directory} can read")
    model, tokenizer, _ = load_model(directory, device, context)
    ids = _tokens(text, tokenizer)
    bad = first_id_at_or_above(ids, model.input_vocab or ids.max().item() + 1)
    if bad is not None:
        raise DataError(f"{text or 'the built-in corpus'}: token id {bad[1]} at position {bad[0]} is outside the vocabulary of "
                        f"{model.input_vocab:,} ids of {directory} (its tokenizer has {tokenizer.vocab_size:,} ids)")
    if bos and tokenizer.bos_id is None:
        raise UsageError(f"{directory}: --bos, but the model's tokenizer has no BOS token")
    span = context if bos else context + 1  # text tokens per window
    n = ids.numel() // span if bos else (ids.numel() - 1) // context
    if n < 1:
        raise DataError(f"text of {ids.numel()} tokens is too short for context {context}")
    if bos:
        w = ids[: n * span].view(n, span)
        x = torch.cat([torch.full((n, 1), tokenizer.bos_id), w[:, :-1]], dim=1)
        y = w
    else:
        starts = torch.arange(n) * context
        idx = starts[:, None] + torch.arange(context + 1)[None, :]
        w = ids[idx]
        x, y = w[:, :-1], w[:, 1:]
    output = Path(output) if output else directory.with_name(directory.name + ".trace.h5")
    attrs = {
        "source": "hf",
        "checkpoint_path": str(directory),
        "checkpoint_sha256": weights_sha256(directory),
        "config": json.dumps({"model": {"arch": config["model_type"], "depth": t.depth}, "objective": {"name": "pretrained"}, "hf_config": config},
                             sort_keys=True, default=str),
        "task": json.dumps({"name": f"text:{text or 'builtin'}", "kind": "lm", "in_shape": [context], "out_dim": t.options["vocab"],
                            "bos": bos}, sort_keys=True),
        "objective": "pretrained",
        "split": "text",
        "data_id": json.dumps({"text": text or "builtin", "context": context, "bos": bos}),
    }
    return trace_model(model, x, y, "lm", output, attrs=attrs, **kwargs)


# --- back to Hugging Face ------------------------------------------------------------------------------


def _family_for(ckpt) -> tuple[Family, dict[str, Any], dict[str, str]]:
    """The family and base config of a checkpoint: those it started from, or (a decoder trained in lpa)
    the family whose layout its options have."""
    if "hf" in ckpt.metadata:
        meta = json.loads(ckpt.metadata["hf"])
        return FAMILIES[meta["family"]], dict(meta["config"]), meta.get("files", {})
    m = ckpt.config.model
    if m.arch != "decoder":
        raise UsageError(f"{ckpt.path}: --format hf exports decoder models and models started from a Hugging Face directory "
                         f"(this is a {m.arch} model)")
    from lpa_cli.models import resolve_options

    o = dataclasses.asdict(resolve_options(m))
    llama_like = o["norm"] == "rmsnorm" and o["positions"] == "rope" and o["gated"] and not o["mlp_bias"]
    if not llama_like or o["out_bias"] or (o["qkv_bias"] and o["qk_norm"]):
        raise UsageError(f"{ckpt.path}: its decoder layout matches no Hugging Face family lpa exports (llama, qwen2, qwen3, mistral)")
    name = "qwen3" if o["qk_norm"] else "qwen2" if o["qkv_bias"] else "mistral" if o["window"] else "llama"
    vocab = o["vocab"] or ckpt.task["out_dim"]
    context = int(ckpt.task["in_shape"][0])
    config = {"model_type": name, "hidden_size": m.width, "num_hidden_layers": m.depth, "num_attention_heads": o["heads"],
              "num_key_value_heads": o["kv_heads"] or o["heads"], "head_dim": o["head_dim"] or m.width // o["heads"],
              "intermediate_size": _hidden(m.width, o), "hidden_act": o["activation"], "rms_norm_eps": o["norm_eps"],
              "max_position_embeddings": context, "rope_theta": o["rope_theta"], "rope_scaling": o["rope_scaling"] or None,
              "vocab_size": vocab, "tie_word_embeddings": o["tie_embeddings"], "attention_bias": False, "mlp_bias": False}
    if o["window"]:
        config |= {"sliding_window": o["window"], "use_sliding_window": True}
    return FAMILIES[name], config, {}


def _hidden(width: int, options: dict) -> int:
    from lpa_cli.models.decoder import DecoderOptions, mlp_hidden

    return mlp_hidden(width, DecoderOptions(**options))


def export_hf(ckpt, small, output: Path, force: bool = False, generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``small`` (a prefix of ``ckpt``'s model) as a Hugging Face model directory: config.json with
    its number of layers, model.safetensors, tokenizer files; ``generation`` settings go into
    generation_config.json (with the source directory's own, if it had one)."""
    from lpa_cli.checkpoint import save_file
    from lpa_cli.tokenizer import read_tokenizer

    family, config, files = _family_for(ckpt)
    kind = ckpt.kind
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not force:
            raise UsageError(f"{output}: already exists (use --force to replace its files)")
        if not output.is_dir():
            raise UsageError(f"{output}: is a file; --format hf writes a directory")
    if kind == "classification" and family.name == "bert" and not (ckpt.config.model.options.get("pool", "cls") == "cls"
                                                                  and ckpt.config.model.options.get("pooler", True)):
        raise UsageError(f"{ckpt.path}: mean pooling has no Hugging Face classification class; train with "
                         "--set model.options.pool=cls to export it")
    if kind == "lm" and not family.lm_class:
        raise UsageError(f"{ckpt.path}: {family.name} has no language-model class")
    depth = small.num_blocks
    opts = family.translate(config, Path(str(ckpt.path))).options if "hf" in ckpt.metadata else config_options(ckpt)
    ours = {k: v.detach().cpu().contiguous() for k, v in small.state_dict().items()}
    if family.to_hf is not None:
        hf = family.to_hf(ours, depth, opts, kind)
    else:
        names = family.names(depth, opts, kind)
        hf = {theirs: ours[mine] for mine, theirs in names.items() if mine in ours}
        if opts.get("tie_embeddings") and kind == "lm":
            hf.pop("lm_head.weight", None)
    hf = {k: v.clone() for k, v in hf.items()}  # tied tensors: safetensors wants one owner per buffer
    config = dict(config)
    config["num_hidden_layers" if family.name != "gpt2" else "n_layer"] = depth
    if config.get("layer_types"):
        config["layer_types"] = config["layer_types"][:depth]
    if kind == "classification":
        classes = ckpt.task.get("meta", {}).get("classes") or [str(i) for i in range(ckpt.task["out_dim"])]
        config |= {"architectures": [family.classifier_class], "num_labels": len(classes),
                   "id2label": {str(i): str(c) for i, c in enumerate(classes)}, "label2id": {str(c): i for i, c in enumerate(classes)}}
    else:
        config["architectures"] = [family.lm_class]
    config["torch_dtype"] = "float32"
    config.pop("transformers_version", None)
    # Every file through the atomic writer: a file in the folder that is a symlink is replaced, never written through.
    with atomic_path(output / "model.safetensors", force=True) as tmp:
        save_file(hf, tmp, metadata={"format": "pt"})
    write_text(output / "config.json", json.dumps(config, indent=2, sort_keys=True), force=True)
    tokenizer = read_tokenizer(ckpt.info)
    written = ["config.json", "model.safetensors"]
    if tokenizer is not None:
        files = {"tokenizer.json": tokenizer.hf_json()} | dict(files)
        files.setdefault("tokenizer_config.json", json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    if generation:
        files = dict(files)
        try:
            settings = json.loads(files.get("generation_config.json", "{}"))
        except (ValueError, RecursionError):
            settings = {}
        files["generation_config.json"] = json.dumps((settings if isinstance(settings, dict) else {}) | generation, indent=2, sort_keys=True)
    if tokenizer is not None or generation:
        for name, text in files.items():
            if Path(name).name != name:
                raise CheckpointError(f"{ckpt.path}: stored tokenizer file name {name!r} is not a plain file name")
            write_text(output / name, text, force=True)
            written.append(name)
    return {"files": written, "family": family.name, "class": config["architectures"][0]}


def config_options(ckpt) -> dict[str, Any]:
    from lpa_cli.models import resolve_options

    return dataclasses.asdict(resolve_options(ckpt.config.model))


__all__ = ["FAMILIES", "export_hf", "load_model", "load_weights", "resolve_init", "trace_hf"]
