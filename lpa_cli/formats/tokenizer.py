"""Tokenizers: bytes, or a Hugging Face ``tokenizer.json`` read locally with the `tokenizers` library.

A tokenizer is stored inside checkpoints (its JSON) and token-file sidecars, so text can be encoded
and generated text decoded with no access to the directory it came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpa_core.files import readable
from lpa_core.errors import CheckpointError, DataError, UsageError

HF_HINT = "reading tokenizer.json needs the optional extra: pip install 'lpa[hf]' (or pip install tokenizers)"


MAX_VOCAB = 1 << 24  # 16.7M ids: far above any real vocabulary (Gemma's 262k), far below an absurd allocation


def _plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Tokenizer:
    """``kind`` is ``bytes`` (UTF-8 bytes are the tokens, vocabulary 256) or ``hf`` (a tokenizer.json)."""

    kind: str
    vocab_size: int
    json_text: str = ""  # the tokenizer.json, for kind hf
    bos_id: int | None = None
    eos_id: int | None = None

    def __post_init__(self) -> None:
        self._tok = None
        if self.kind == "hf":
            self._tok = _hf_from_str(self.json_text)

    @property
    def name(self) -> str:
        return "bytes" if self.kind == "bytes" else "tokenizer.json"

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens (add BOS/EOS yourself where wanted)."""
        if self.kind == "bytes":
            return list(text.encode("utf-8"))
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str], special: bool = False) -> list[list[int]]:
        """Token ids of each text; ``special`` adds the tokenizer's own special tokens (its template)."""
        if self.kind == "bytes":
            return [list(t.encode("utf-8")) for t in texts]
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=special)]

    def decode(self, ids: list[int]) -> str:
        if self.kind == "bytes":
            return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")
        return self._tok.decode(ids, skip_special_tokens=False)

    def hf_json(self) -> str:
        """A ``tokenizer.json`` for Hugging Face's libraries: the stored one, or for bytes a byte-level
        BPE without merges whose token ids are the byte values."""
        if self.kind == "hf":
            return self.json_text
        try:
            from tokenizers import Tokenizer as HFTokenizer
            from tokenizers import decoders, models, pre_tokenizers
        except ImportError:
            raise UsageError(HF_HINT) from None
        vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return tok.to_str()

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "json": self.json_text, "bos_id": self.bos_id, "eos_id": self.eos_id}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tokenizer:
        """A stored tokenizer, validated (it comes from a file's metadata, which its hash does not cover):
        a known kind, a vocabulary of 1 .. 2^24 ids (what a token file's sidecar allows), special ids as
        integers in that range, the JSON as text."""
        if not isinstance(data, dict) or data.get("kind") not in ("bytes", "hf"):
            raise DataError("malformed tokenizer description")
        vocab = data.get("vocab_size")
        if not _plain_int(vocab) or not 1 <= vocab <= MAX_VOCAB or (data["kind"] == "bytes" and vocab != 256):
            raise DataError(f"malformed tokenizer description: vocab_size {str(vocab)[:40]!r} (1 to {MAX_VOCAB:,}; 256 for bytes)")
        for name in ("bos_id", "eos_id"):  # bounded, not by the vocabulary: a config may name ids its tokenizer lacks
            value = data.get(name)
            if value is not None and (not _plain_int(value) or not 0 <= value < MAX_VOCAB):
                raise DataError(f"malformed tokenizer description: {name} {str(value)[:40]!r} is not an id (0 to {MAX_VOCAB - 1:,})")
        if not isinstance(data.get("json", ""), str):
            raise DataError("malformed tokenizer description: its tokenizer.json is not text")
        return cls(data["kind"], vocab, data.get("json", ""), data.get("bos_id"), data.get("eos_id"))


BYTES = Tokenizer("bytes", 256)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map of the 256 byte values to printable characters (the byte-level BPE alphabet)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _hf_from_str(text: str):
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:
        raise UsageError(HF_HINT) from None
    try:
        tok = HFTokenizer.from_str(text)
        tok.no_padding()  # lpa pads (with a mask) and refuses or cuts long texts itself
        tok.no_truncation()
        return tok
    except Exception as err:  # noqa: BLE001 - the Rust side reports malformed files with one exception type
        raise DataError(f"not a usable tokenizer.json ({str(err).splitlines()[0][:200]})") from None


def _special_id(tok, directory: Path, name: str, config: dict[str, Any]) -> int | None:
    """BOS/EOS id from the model's config.json, else tokenizer_config.json's token string."""
    value = config.get(f"{name}_token_id")
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, int):
        return value
    path = directory / "tokenizer_config.json"
    if path.is_file():
        try:
            token = json.loads(readable(path, "json", inside=directory, error=DataError).read_text(encoding="utf-8")).get(f"{name}_token")
        except (ValueError, OSError):
            token = None
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            return tok.token_to_id(token)
    return None


def read_tokenizer(info) -> Tokenizer | None:
    """The tokenizer a token model's checkpoint stores (None for other models); ``info``: a
    `lpa_cli.formats.checkpoint.CheckpointInfo` (its metadata)."""
    raw = info.metadata.get("tokenizer")
    if raw is None:
        return None
    try:
        return Tokenizer.from_dict(json.loads(raw))
    except (ValueError, TypeError, KeyError, RecursionError, DataError) as err:
        raise CheckpointError(f"malformed tokenizer in checkpoint metadata ({err})") from None


def load_tokenizer(spec: str | Path, config: dict[str, Any] | None = None) -> Tokenizer:
    """``bytes``, a ``tokenizer.json`` file, a directory holding one (a Hugging Face model), or an lpa
    checkpoint that stores its tokenizer."""
    if str(spec) in ("bytes", "byte", ""):
        return BYTES
    path = Path(spec)
    if path.suffix == ".safetensors" and path.is_file():
        from lpa_cli.formats.checkpoint import read_info

        tok = read_tokenizer(read_info(path))
        if tok is None:
            raise DataError(f"{path}: this checkpoint stores no tokenizer")
        return tok
    directory = path if path.is_dir() else path.parent
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        others = [n for n in ("tokenizer.model", "vocab.json", "spiece.model") if (directory / n).is_file()]
        hint = f" (found {', '.join(others)}; lpa reads tokenizer.json only)" if others else ""
        raise DataError(f"{directory}: no tokenizer.json{hint}")
    try:
        text = readable(file, "tokenizer", inside=directory, error=DataError).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{file}: cannot read ({err})") from None
    tok = _hf_from_str(text)
    config = config or {}
    if not config and (directory / "config.json").is_file():
        try:
            config = json.loads(readable(directory / "config.json", "config", inside=directory, error=DataError).read_text(encoding="utf-8"))
        except (ValueError, OSError, RecursionError):
            config = {}
    return Tokenizer("hf", tok.get_vocab_size(with_added_tokens=True), text,
                     _special_id(tok, directory, "bos", config), _special_id(tok, directory, "eos", config))
