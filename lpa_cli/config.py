"""Run configuration as frozen dataclasses, one per concern.

Typer flags, TOML files (``[model]``, ``[task]``, ``[objective]``, ``[train]`` tables) and ``--set
section.key=value`` overrides all produce the same `RunConfig`. Precedence: defaults < TOML < flags <
``--set``. A checkpoint stores ``RunConfig.to_dict()`` so the file alone rebuilds the model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lpa_core.files import readable
from lpa_core.errors import ConfigError, UsageError
from lpa_core.tomlfile import TOMLDecodeError, toml_loads
from lpa_cli.registry import ARCHITECTURES, OBJECTIVES, TASK_HELP, WEIGHTINGS

MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit; larger ones would be folded silently


def flag(default: Any, *names: str, help: str, envvar: str | None = None) -> Any:
    """A setting `lpa train` offers as a flag: its names and help live here, beside its default, and
    the command is generated from them (`lpa_cli.commands.train`). Every other field is reached with
    ``--set section.key=value`` or ``--config``; both go through the same validation."""
    meta = {"flag": names, "help": help, "envvar": envvar}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def flag_fields() -> list[tuple[str, Any]]:
    """(section, dataclass field) of every setting with a flag, in declaration order."""
    return [(section, f) for section, cls in SECTIONS.items() for f in fields(cls) if "flag" in f.metadata]


def _finite(value: float, flag: str, low: float | None = None, high: float | None = None, low_open: bool = False) -> None:
    """A number that must be finite and within bounds (NaN and infinities are never settings)."""
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        lo = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
        hi = "" if high is None else f"<= {high:g}"
        bounds = " and ".join(b for b in (lo, hi) if b)
        raise UsageError(f"{flag} must be a finite number{' ' + bounds if bounds else ''}, got {value!r}")


def _digits(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes other scripts' digits, which then get stored verbatim)."""
    return text.isascii() and text.isdigit()


MAX_SAMPLES = 100_000_000  # task.n_train / n_test: beyond any generated set; a bigger data set is a token file or folder


def _count(value: int, flag: str, low: int = 0, high: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        raise UsageError(f"{flag} must be an integer >= {low}{f' and <= {high}' if high is not None else ''}, got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: ``arch`` names a builder in `lpa_cli.models`; ``options`` are that builder's extras."""

    arch: str = flag("mlp", "--arch", help=f"Architecture: {ARCHITECTURES.help()}.")
    depth: int = flag(8, "--depth", help="Number of residual blocks N.")  # the model has depths 0..N
    width: int = flag(64, "--width", help="Width of the residual stream.")
    zero_init: bool = True  # last layer of every residual branch starts at zero: blocks begin as identity
    options: dict[str, Any] = field(default_factory=dict)  # the architecture's extras (a factory's keyword arguments)
    factory: str = ""  # "package.module:function" returning a ResidualModel (--model); arch is then "custom"
    init: str = flag("", "--init", help="Start from these weights: a Hugging Face model directory (local safetensors) or an lpa checkpoint.")
    reinit: str = flag("", "--reinit", help="With --init: these modules start from fresh weights instead (comma-separated "
                       "names, e.g. head.pooler).")

    def __post_init__(self) -> None:
        _count(self.depth, "--depth", 1, 100_000)
        _count(self.width, "--width", 0 if self.arch == "custom" else 1, 1 << 20)  # 0: a custom model's width is its own


@dataclass(frozen=True)
class TaskConfig:
    """Data: ``name`` is a task spec (``surface:stripe``, ``digits``, ``text:FILE``, ``file:PATH`` ...)."""

    name: str = flag("surface:stripe", "--task", help=f"Task spec: {TASK_HELP}.")
    n_train: int = 0  # 0: the task's default size
    n_test: int = 0
    noise: float = 0.0  # std of Gaussian noise added to regression training targets
    data_seed: int = 0  # fixes the data (and the train/test split) independently of the training seed
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _count(self.n_train, "task.n_train", 0, MAX_SAMPLES)
        _count(self.n_test, "task.n_test", 0, MAX_SAMPLES)
        _finite(self.noise, "task.noise", 0)
        _count(self.data_seed, "task.data_seed", 0, MAX_SEED)


ALIGNMENTS = ("labels", "kl")
HEAD_LOSSES = ("auto", "stacked", "chunked")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What each depth is trained toward. See `lpa_cli.training.objectives`."""

    name: str = flag("lpa", "--objective", help=f"{OBJECTIVES.help()}.")
    weights: str = flag("uniform", "--weights", help=f"LPA depth weights: {WEIGHTINGS.help()}.")
    lpa_lambda: float | None = flag(None, "--lpa-lambda", help="LPA as loss_N + lambda * (sum of other depths).")
    depths: str = flag(":", "--depths", help='Depths to use, as a numpy-slice string over depths 0..N: ":", "1:8:2", "2,4,8".')
    sample_depths: int = flag(0, "--sample-depths", help="Use this many of the selected depths per step (0: all).")  # N always in
    depth_schedule: str = flag("all", "--depth-schedule", help="all; rotation:R (each depth's loss once every R steps) or curriculum:S "
                               "(depths switched on top down, one more every S steps), LayerSkip's schedules.")
    sample_fraction: float = flag(1.0, "--sample-fraction", help="Shallower depths' losses on this fraction of each batch (depth N: all).")
    loss_power: float = flag(1.0, "--loss-power", help="Each depth's term is L_k^p (log at 0); 0.5 balances shallow and deep depths.")
    align: str = flag("labels", "--align", help=f"What depths < N fit: {', '.join(ALIGNMENTS)} (kl: the final depth's detached prediction).")
    align_mix: float = flag(1.0, "--align-mix", help="With --align kl: weight of the alignment term (1 - it on the labels).")
    head_loss: str = flag("auto", "--head-loss", help=f"{', '.join(HEAD_LOSSES)}: chunked never holds every depth's output "
                          "(auto: when it would be large); sampled:K: depths < N read the batch's targets and K sampled vocabulary "
                          "rows (language models; depth N exact).")
    head_chunk_mb: int = flag(0, "--head-chunk-mb", help="MiB of head output the head loss may hold at once: stacked when every "
                              "depth's fits, else chunks of half of it (0: from the device; a CPU 64, a GPU 1/16 of its free memory, "
                              "256-4096).")

    def __post_init__(self) -> None:
        OBJECTIVES.get(self.name)
        _count(self.head_chunk_mb, "--head-chunk-mb", 0, 1 << 24)
        WEIGHTINGS.get(self.weights)
        if self.lpa_lambda is not None:
            _finite(self.lpa_lambda, "--lpa-lambda", 0)
        _count(self.sample_depths, "--sample-depths")
        kind, _, period = self.depth_schedule.partition(":")
        if self.depth_schedule != "all" and (kind not in ("rotation", "curriculum") or not _digits(period) or int(period) < 1):
            raise UsageError(f"--depth-schedule must be all, rotation:R or curriculum:S with R, S >= 1 steps, got {self.depth_schedule!r}")
        if self.depth_schedule != "all" and self.sample_depths:
            raise UsageError("--depth-schedule and --sample-depths both choose each step's depths; give one of them")
        _finite(self.sample_fraction, "--sample-fraction", 0, 1, low_open=True)
        _finite(self.loss_power, "--loss-power", 0, 1)
        if self.align not in ALIGNMENTS:
            raise UsageError(f"unknown --align {self.align!r}; expected one of {', '.join(ALIGNMENTS)}")
        _finite(self.align_mix, "--align-mix", 0, 1)
        kind, _, k = self.head_loss.partition(":")
        if self.head_loss not in HEAD_LOSSES and not (kind == "sampled" and _digits(k) and int(k) >= 1):
            raise UsageError(f"--head-loss must be one of {', '.join(HEAD_LOSSES)} or sampled:K (K >= 1 sampled vocabulary rows), "
                             f"got {self.head_loss!r}")


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")
PARALLEL = ("ddp", "fsdp")
TRAIN_ONLY = ("all", "blocks", "head")
TRACKERS = ("jsonl", "tensorboard", "mlflow")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = flag(2000, "--steps", help="Optimisation steps.")
    batch_size: int = flag(512, "--batch-size", help="Batch size (0: full batch).")
    lr: float = flag(2e-3, "--lr", help="Peak learning rate.")
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | linear (decay to 0, HF Trainer's) | constant
    epochs: float = 0.0  # > 0: this many passes over the training split decide the steps (replacing `steps`)
    warmup: int = 0
    grad_clip: float = flag(0.0, "--clip-grad", help="Clip the gradient norm to this (0: off).")
    eval_every: int = flag(0, "--eval-every", help="Evaluate every N steps (table + log).")  # 0: only at the end
    seed: int = flag(0, "--seed", help="Random seed (everything that samples is seeded).", envvar="LPA_SEED")
    threads: int = flag(0, "--threads", help="CPU threads (fix it for byte-identical runs).", envvar="LPA_THREADS")  # 0: torch's default
    device: str = flag("cpu", "--device", help="auto, cpu or cuda[:i].", envvar="LPA_DEVICE")
    precision: str = flag("auto", "--precision", help=f"{', '.join(PRECISIONS)} (autocast; fp16 with a gradient scaler; "
                          "auto: bf16 on a GPU that has it, else fp32).")
    compile: bool = flag(False, "--compile/--no-compile", help="torch.compile the model and loss.")  # falls back, with a warning
    grad_accum: int = flag(1, "--grad-accum", help="Split each batch into this many micro-batches.")
    activation_checkpointing: bool = flag(False, "--activation-checkpointing/--no-activation-checkpointing",
                                          help="Recompute each block's activations in the backward pass.")
    parallel: str = flag("ddp", "--parallel", help=f"Under torchrun: {', '.join(PARALLEL)}.")  # fsdp: fully_shard per block and on the model
    workers: int = flag(0, "--workers", help="Data-loading worker processes.")  # 0: load in the training process
    eval_samples: int = flag(0, "--eval-samples", help="Evaluate on this many test samples, spread evenly (0: all).")
    head_lr_scale: float = flag(1.0, "--head-lr-scale", help="The head's learning rate as a multiple of --lr (a new classifier "
                                "learns faster, as fine-tuning recipes give it).")
    head_warmup: int = flag(0, "--head-warmup", help="Train the head alone for this many steps first (the body's learning rate is 0).")
    train_only: str = flag("all", "--train-only", help=f"Which parameters train: {', '.join(TRAIN_ONLY)}.")
    lora_rank: int = flag(0, "--lora-rank", help="Train LoRA adapters of this rank on the blocks (peft); merged when saved.")
    lora_alpha: float = 16.0
    log: list[str] = flag(["jsonl"], "--log", help=f"Trackers (repeatable): {', '.join(TRACKERS)}.")

    def __post_init__(self) -> None:
        _count(self.steps, "--steps")
        _count(self.batch_size, "--batch-size")
        _finite(self.lr, "--lr", 0, low_open=True)
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise UsageError(f"unknown optimizer {self.optimizer!r}; expected adam, adamw or sgd")
        _finite(self.weight_decay, "train.weight_decay", 0)
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        _finite(self.epochs, "train.epochs", 0, 10_000)
        _count(self.warmup, "train.warmup")
        _finite(self.grad_clip, "--clip-grad", 0)
        _count(self.eval_every, "--eval-every")
        _count(self.seed, "--seed", 0, MAX_SEED)
        _count(self.threads, "--threads", 0, 4096)
        for name, value, choices in (("--precision", self.precision, PRECISIONS), ("--parallel", self.parallel, PARALLEL),
                                     ("--train-only", self.train_only, TRAIN_ONLY)):
            if value not in choices:
                raise UsageError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")
        _count(self.grad_accum, "--grad-accum", 1, 1 << 16)
        _finite(self.head_lr_scale, "--head-lr-scale", 0, 1e6, low_open=True)
        _count(self.head_warmup, "--head-warmup")
        if self.head_warmup and not self.epochs and self.head_warmup >= self.steps:
            raise UsageError(f"--head-warmup {self.head_warmup} must be below --steps {self.steps} (the body would never train)")
        _count(self.workers, "--workers", 0, 256)
        _count(self.eval_samples, "--eval-samples")
        _count(self.lora_rank, "--lora-rank", 0, 1 << 16)
        _finite(self.lora_alpha, "--lora-alpha", 0, low_open=True)
        unknown = [t for t in self.log if t not in TRACKERS]
        if unknown or not self.log:
            raise UsageError(f"--log takes {', '.join(TRACKERS)}; got {', '.join(map(repr, unknown)) or 'nothing'}")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        if not isinstance(data, dict):
            raise ConfigError("config must be a table/object")
        unknown = set(data) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(sorted(unknown))}")
        parts = {name: _build(SECTIONS[name], data.get(name, {}), name) for name in SECTIONS}
        return cls(**parts)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "task": TaskConfig,
    "objective": ObjectiveConfig,
    "train": TrainConfig,
}


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a value from TOML/JSON against the type of the field's default."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float) or where.endswith("lpa_lambda"):
        if value is None and where.endswith("lpa_lambda"):
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if isinstance(default, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    return value


def _build(cls: type, data: Any, section: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table")
    defaults = cls()
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) in [{section}]: {', '.join(sorted(unknown))}")
    kwargs = {k: _coerce(v, getattr(defaults, k), f"{section}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"[{section}]: {err}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    path = readable(path, "config", error=ConfigError)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from None
    try:
        return toml_loads(text)
    except TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({err})") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML (nested too deeply)") from None


def parse_set(item: str) -> tuple[str, str, Any]:
    """``section.key=value`` (value in TOML syntax, bare words taken as strings) -> (section, key, value)."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise UsageError(f"bad --set {item!r}: expected section.key=value, e.g. model.options.heads=4")
    lhs, raw = item.split("=", 1)
    section, key = lhs.strip().split(".", 1)
    try:
        value = toml_loads(f"v = {raw}")["v"]
    except TOMLDecodeError:
        value = raw
    return section.strip(), key.strip(), value


def merge(base: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Overlay per-section overrides (dotted keys reach into ``options`` tables). Nothing of ``base`` is
    changed: its nested tables are copied (a shared default's ``options`` once took a user's --set)."""
    out = copy.deepcopy(base)
    for section, values in overrides.items():
        table = out.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table")
        for key, value in values.items():
            if value is None:
                continue
            node = table
            *path, last = key.split(".")
            for part in path:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"{section}.{key}: {part} is not a table")
            node[last] = value
    return out


def resolve(toml_path: str | Path | None, flags: dict[str, dict[str, Any]], sets: list[str] = (),
            base: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """defaults < ``base`` (e.g. fine-tuning defaults) < TOML file < flags (None means 'not given') < --set items."""
    toml = load_toml(toml_path) if toml_path else {}
    merged = {k: v for k, v in toml.items()}
    for section, values in (base or {}).items():  # under the file's settings; a malformed section is the file's error
        if isinstance(merged.get(section, {}), dict):
            merged[section] = copy.deepcopy(dict(values)) | merged.get(section, {})
    merged = merge(merged, flags)
    set_overrides: dict[str, dict[str, Any]] = {}
    for item in sets:
        section, key, value = parse_set(item)
        set_overrides.setdefault(section, {})[key] = value
    merged = merge(merged, set_overrides)
    return RunConfig.from_dict(merged)
