"""`lpa train`'s settings flags are declared once, on the config fields: the command is generated from
them, and a flag sets exactly what ``--set section.key=value`` sets."""

from __future__ import annotations

import dataclasses

import pytest

from lpa_cli.commands.train import settings_from, train_command
from lpa_cli.config import RunConfig, flag_fields, resolve
from tests.cli_helpers import run

# A valid value other than the default for each flag's type (choices where the field has them).
VALUES = {"arch": "gpt", "name": None, "weights": "sqrt", "align": "kl", "head_loss": "chunked", "precision": "bf16", "parallel": "fsdp",
          "train_only": "blocks", "device": "auto", "depths": "1:3", "depth_schedule": "rotation:2", "init": "", "log": ["tensorboard"],
          "reinit": "head.pooler"}


def _value(section: str, f):
    if f.name in VALUES:
        return VALUES[f.name] if VALUES[f.name] is not None else {"task": "digits", "objective": "e2e"}[section]
    default = f.default
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1 if f.name != "sample_depths" else 2
    if isinstance(default, float) or default is None:
        return 0.5
    raise AssertionError(f"no test value for {section}.{f.name}")


def test_the_command_is_generated_from_the_flagged_fields():
    import inspect

    params = inspect.signature(train_command).parameters
    for section, f in flag_fields():
        assert f"{section}_{f.name}" in params, f.name
    text = " ".join(run("train", "--help").stdout.split())
    for _, f in flag_fields():
        for name in f.metadata["flag"]:
            assert name.split("/")[0] in text


@pytest.mark.parametrize("section, field", [(s, f) for s, f in flag_fields() if f.name != "init"], ids=lambda x: getattr(x, "name", x))
def test_a_flag_sets_what_set_sets(section, field):
    value = _value(section, field)
    by_flag = resolve(None, settings_from({f"{section}_{field.name}": value}))
    literal = ("[" + ", ".join(f'"{v}"' for v in value) + "]") if isinstance(value, list) else (
        str(value).lower() if isinstance(value, bool) else f'"{value}"' if isinstance(value, str) else str(value))
    by_set = resolve(None, settings_from({}), [f"{section}.{field.name}={literal}"])
    assert by_flag == by_set
    assert getattr(getattr(by_flag, section), field.name) == value != getattr(getattr(RunConfig(), section), field.name)


def test_every_other_field_is_reached_with_set():
    flagged = {(s, f.name) for s, f in flag_fields()}
    others = [(s, f.name) for s, cls in (("model", type(RunConfig().model)), ("train", type(RunConfig().train)))
              for f in dataclasses.fields(cls) if (s, f.name) not in flagged]
    assert ("train", "weight_decay") in others and ("model", "zero_init") in others
    cfg = resolve(None, settings_from({}), ["train.weight_decay=0.1", "model.zero_init=false"])
    assert cfg.train.weight_decay == 0.1 and cfg.model.zero_init is False
