"""An lpa model (cut at any depth) back into a directory that transformers' from_pretrained loads."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from lpa_core.atomic import atomic_path, write_text
from lpa_core.errors import CheckpointError, UsageError
from lpa_cli.models.hf.directory import EXPORT_FILES, hf_block
from lpa_cli.models.hf.families import FAMILIES, Family
from lpa_cli.models import resolve_options
from lpa_cli.models.decoder import DecoderOptions, mlp_hidden
from lpa_cli.formats.checkpoint import save_file
from lpa_cli.formats.tokenizer import read_tokenizer


# Keys through which transformers imports code or changes how weights are read: `auto_map` names a
# repository's Python module (trust_remote_code), a quantization config picks a loader. A checkpoint's
# metadata is data, so an export never carries them, wherever in a JSON file they stand.
CODE_KEYS = frozenset({"auto_map", "quantization_config", "custom_pipelines", "trust_remote_code"})


def inert(value: Any) -> Any:
    """``value`` (parsed JSON) without `CODE_KEYS` at any depth."""
    if isinstance(value, dict):
        return {k: inert(v) for k, v in value.items() if k not in CODE_KEYS}
    if isinstance(value, list):
        return [inert(v) for v in value]
    return value


def _inert_file(ckpt, name: str, text: str) -> str:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{ckpt.path}: its stored {name} is not JSON") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{ckpt.path}: its stored {name} is not a JSON object")
    return json.dumps(inert(data), indent=2, sort_keys=True)


def _family_for(ckpt) -> tuple[Family, dict[str, Any], dict[str, str]]:
    """The family and base config of a checkpoint: those it started from, or (a decoder trained in lpa)
    the family whose layout its options have."""
    if "hf" in ckpt.metadata:
        family, config, files = hf_block(ckpt.metadata["hf"], str(ckpt.path), FAMILIES)
        return FAMILIES[family], config, files
    m = ckpt.config.model
    if m.arch != "decoder":
        raise UsageError(f"{ckpt.path}: --format hf exports decoder models and models started from a Hugging Face directory "
                         f"(this is a {m.arch} model)")

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
    return mlp_hidden(width, DecoderOptions(**options))


def export_hf(ckpt, small, output: Path, force: bool = False, generation: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``small`` (a prefix of ``ckpt``'s model) as a Hugging Face model directory: config.json with
    its number of layers, model.safetensors, tokenizer files; ``generation`` settings go into
    generation_config.json (with the source directory's own, if it had one)."""
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
        raise UsageError(f"{ckpt.path}: mean pooling (LPA's default on encoders) has no Hugging Face classification class "
                         "(BERT's reads [CLS] through its pooler); export without --format hf, or train with "
                         "--set model.options.pool=cls to export it")
    if kind == "lm" and not family.lm_class:
        raise UsageError(f"{ckpt.path}: {family.name} has no language-model class")
    depth = small.num_blocks
    try:
        opts = family.translate(config, Path(str(ckpt.path))).options if "hf" in ckpt.metadata else config_options(ckpt)
    except (KeyError, TypeError, ValueError, AttributeError) as err:  # a config edited into something no model has
        raise CheckpointError(f"{ckpt.path}: its Hugging Face config cannot describe a {family.name} model ({type(err).__name__}: "
                              f"{str(err)[:80]})") from None
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
    config = inert(config)
    vocab = small.input_vocab
    for where in (config, config.get("text_config")):
        if isinstance(where, dict) and "vocab_size" in where and vocab is not None and where["vocab_size"] != vocab:
            raise CheckpointError(f"{ckpt.path}: its config says vocab_size {where['vocab_size']!r} but the weights have "
                                  f"{vocab} rows; the file was edited")
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
            if name not in EXPORT_FILES:  # config.json and the weights are lpa's own, written above
                raise CheckpointError(f"{ckpt.path}: stored file name {name!r} is not one lpa exports")
            write_text(output / name, _inert_file(ckpt, name, text) if name.endswith(".json") else text, force=True)
            written.append(name)
    return {"files": written, "family": family.name, "class": config["architectures"][0]}


def config_options(ckpt) -> dict[str, Any]:
    return dataclasses.asdict(resolve_options(ckpt.config.model))
