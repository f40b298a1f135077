"""Run configuration as frozen dataclasses, one per concern.

Typer flags, TOML files (``[model]``, ``[task]``, ``[objective]``, ``[train]`` tables) and ``--set
section.key=value`` overrides all produce the same `RunConfig`. Precedence: defaults < TOML < flags <
``--set``. A checkpoint stores ``RunConfig.to_dict()`` so the file alone rebuilds the model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from analyzers.errors import ConfigError, UsageError


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: ``arch`` names a builder in `lpa_cli.models`; ``options`` are that builder's extras."""

    arch: str = "mlp"
    depth: int = 8  # number of residual blocks N; the model has depths 0..N
    width: int = 64  # width of the residual stream
    zero_init: bool = True  # last layer of every residual branch starts at zero: blocks begin as identity
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise UsageError(f"--depth must be at least 1, got {self.depth}")
        if self.width < 1:
            raise UsageError(f"--width must be at least 1, got {self.width}")


@dataclass(frozen=True)
class TaskConfig:
    """Data: ``name`` is a task spec (``surface:stripe``, ``digits``, ``text:FILE``, ``file:PATH`` ...)."""

    name: str = "surface:stripe"
    n_train: int = 0  # 0: the task's default size
    n_test: int = 0
    noise: float = 0.0  # std of Gaussian noise added to regression training targets
    data_seed: int = 0  # fixes the data (and the train/test split) independently of the training seed
    options: dict[str, Any] = field(default_factory=dict)


OBJECTIVES = ("e2e", "lpa", "lpa-local")
WEIGHTINGS = ("uniform", "linear", "sqrt", "inv")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What each depth is trained toward. See `lpa_cli.objectives`."""

    name: str = "lpa"
    weights: str = "uniform"
    lpa_lambda: float | None = None  # set: loss_N + lambda * (sum of the other selected depths)
    depths: str = ":"  # depths that get a loss term (numpy-slice string over 0..N)
    sample_depths: int = 0  # >0: each step uses this many of the selected depths (always including N)
    sample_fraction: float = 1.0  # <1: shallower depths' terms use this fraction of each batch (N uses all)
    loss_power: float = 1.0  # each depth's term is L_k ** p (log L_k at 0): p < 1 balances shallow and deep depths

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise UsageError(f"unknown objective {self.name!r}; expected one of {', '.join(OBJECTIVES)}")
        if self.weights not in WEIGHTINGS:
            raise UsageError(f"unknown depth weighting {self.weights!r}; expected one of {', '.join(WEIGHTINGS)}")
        if self.lpa_lambda is not None and not self.lpa_lambda >= 0:
            raise UsageError(f"--lpa-lambda must be >= 0, got {self.lpa_lambda}")
        if self.sample_depths < 0:
            raise UsageError("--sample-depths must be >= 0")
        if not 0 < self.sample_fraction <= 1:
            raise UsageError(f"--sample-fraction must be in (0, 1], got {self.sample_fraction}")
        if not 0 <= self.loss_power <= 1:
            raise UsageError(f"--loss-power must be between 0 and 1, got {self.loss_power}")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 512  # 0: full batch
    lr: float = 2e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    schedule: str = "cosine"  # cosine | constant
    warmup: int = 0
    grad_clip: float = 0.0  # 0: off
    eval_every: int = 0  # 0: evaluate only at the end
    seed: int = 0
    threads: int = 0  # 0: leave torch's default; fixed threads make runs byte-reproducible
    device: str = "cpu"  # auto | cpu | cuda[:i]

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise UsageError(f"--steps must be >= 0, got {self.steps}")
        if self.batch_size < 0:
            raise UsageError(f"--batch-size must be >= 0, got {self.batch_size}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise UsageError(f"unknown optimizer {self.optimizer!r}; expected adam, adamw or sgd")
        if self.schedule not in ("cosine", "constant"):
            raise UsageError(f"unknown schedule {self.schedule!r}; expected cosine or constant")


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
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config ({err})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
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
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section.strip(), key.strip(), value


def merge(base: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Overlay per-section overrides (dotted keys reach into ``options`` tables)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
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


def resolve(toml_path: str | Path | None, flags: dict[str, dict[str, Any]], sets: list[str] = ()) -> RunConfig:
    """defaults < TOML file < flags (None means 'not given') < --set items."""
    base = load_toml(toml_path) if toml_path else {}
    merged = merge(base, flags)
    set_overrides: dict[str, dict[str, Any]] = {}
    for item in sets:
        section, key, value = parse_set(item)
        set_overrides.setdefault(section, {})[key] = value
    merged = merge(merged, set_overrides)
    return RunConfig.from_dict(merged)
