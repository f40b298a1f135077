"""Registries: each name lpa accepts for a choice, with where its implementation lives.

Torch-free on purpose: help texts and error messages are built from these tables, and `lpa --help`,
`lpa --version` and the analysis commands never import torch. An entry's implementation
(``"package.module:attribute"``) is imported on first use. Adding an architecture or an objective is
one entry here plus its module; the tests parametrise over these tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from lpa_core.errors import UsageError


@dataclass(frozen=True)
class Entry:
    summary: str
    target: str = ""  # "package.module:attribute" of the implementation ("" for plain choices)
    options: str = ""  # "package.module:Dataclass" of its extra options (architectures)
    input_kinds: tuple[str, ...] = ()  # architectures: the inputs they take
    kinds: tuple[str, ...] = ()  # architectures: the task kinds they do (the first is what tests train them on)

    def load(self) -> Any:
        return _load(self.target)

    def load_options(self) -> type:
        return _load(self.options)


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


class Registry:
    """Name -> `Entry`, with one way to look a name up and one way to list the choices."""

    def __init__(self, what: str, entries: dict[str, Entry]) -> None:
        self.what = what
        self._entries = dict(entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, name: str) -> Entry:
        return self._entries[name]

    def items(self):
        return self._entries.items()

    def get(self, name: str) -> Entry:
        """The entry, or a one-line UsageError listing the choices."""
        if name not in self._entries:
            raise UsageError(f"unknown {self.what} {name!r}; expected one of {', '.join(self._entries)}")
        return self._entries[name]

    def help(self) -> str:
        """``name (summary), ...`` for a flag's help text."""
        return "; ".join(f"{name} ({e.summary})" for name, e in self._entries.items())


ARCHITECTURES = Registry("architecture", {
    "mlp": Entry("residual MLP", "lpa_cli.models.mlp:build_mlp", "lpa_cli.models.mlp:MLPOptions", ("vector", "image"),
                 ("regression", "classification")),
    "resnet": Entry("constant-width pre-activation ResNet", "lpa_cli.models.resnet:build_resnet",
                    "lpa_cli.models.resnet:ResNetOptions", ("image",), ("classification", "regression")),
    "vit": Entry("Vision Transformer", "lpa_cli.models.vit:build_vit", "lpa_cli.models.vit:ViTOptions", ("image",),
                 ("classification", "regression")),
    "gpt": Entry("byte-level decoder LM", "lpa_cli.models.gpt:build_gpt", "lpa_cli.models.gpt:GPTOptions", ("tokens",), ("lm",)),
    "decoder": Entry("decoder-only transformer, Llama layout (Qwen2/3, Mistral, GPT-2 through options)",
                     "lpa_cli.models.decoder:build_decoder", "lpa_cli.models.decoder:DecoderOptions", ("tokens",),
                     ("lm", "classification")),
    "encoder": Entry("BERT-style encoder for text classification", "lpa_cli.models.encoder:build_encoder",
                     "lpa_cli.models.encoder:EncoderOptions", ("tokens",), ("classification",)),
})

OBJECTIVES = Registry("objective", {
    "e2e": Entry("only depth N's loss", "lpa_cli.training.objectives:E2E"),
    "lpa": Entry("every selected depth's loss", "lpa_cli.training.objectives:LPA"),
    "lpa-local": Entry("as lpa, each block trained only by its own depth", "lpa_cli.training.objectives:LPALocal"),
})

WEIGHTINGS = Registry("depth weighting", {
    "uniform": Entry("equal"),
    "linear": Entry("k + 1"),
    "sqrt": Entry("sqrt(k + 1)"),
    "inv": Entry("1 / (k + 1)"),
})

TASK_HELP = ("surface:NAME (stripe, ripple, saddle, franke), digits, shapes, text[:FILE|DIR], tokens:FILE.bin, "
             "file:PATH (.npz .npy .csv .h5), folder:DIR (images), classify:FILE (.csv .jsonl text + label)")
