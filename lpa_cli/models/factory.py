"""Models built by a user's own function, and the one rule for when lpa may call such a function.

A checkpoint or a TOML config can *name* a factory (``"package.module:function"``), but a name in a
file is not permission to run it: anyone can edit a checkpoint's metadata without touching the
tensors its hash covers. lpa imports a factory only when the user names the same one on the command
line (``--model package.module:function``; ``factory=`` in Python) or allows the recorded one
(``--trust-factory``, ``LPA_TRUST_FACTORY=1``; ``trust_factory=True`` in Python). Everything that
builds a model from a file goes through `check_factory` first (docs/security.md).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

from lpa_core.errors import TrustError, UsageError
from lpa_cli.config import RunConfig
from lpa_cli.models import build_model, zero_init_branches
from lpa_cli.models.protocol import ResidualModel

TRUST_ENV = "LPA_TRUST_FACTORY"


def check_factory(recorded: str, source: str | Path, factory: str = "", trust_factory: bool = False) -> None:
    """Allow building the model ``source`` describes, or raise a one-line `TrustError`.

    ``recorded``: the factory the file names ("" for a registered architecture); ``factory``: the one
    the user named; ``trust_factory``: the user allows whatever the file names.
    """
    if factory and factory != recorded:
        names = f"names factory {recorded!r}" if recorded else "names no factory (a registered architecture)"
        raise TrustError(f"{source}: --model {factory} does not match the model it describes: the file {names}")
    if recorded and not factory and not trust_factory:
        raise TrustError(f"{source}: its model is built by the factory {recorded!r} (not imported: lpa runs no code a file names); "
                         f"if that is your code, pass --model {recorded} or --trust-factory ({TRUST_ENV}=1)")


def load_factory(target: str) -> Callable[..., ResidualModel]:
    """``package.module:function``, imported from the Python path, the working directory first (as
    ``python -m`` would find a file beside the user). Only ever called for a factory the user named or
    allowed, so only then does the working directory join the path."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise UsageError(f"--model {target!r}: expected package.module:function")
    # the working directory joins the path only while the named module is imported, and behind the standard
    # library and installed packages: a planted statistics.py (or PIL.py) beside it is never imported instead
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise UsageError(f"--model {target!r}: cannot import module {module!r} ({err}; it must be importable from the "
                         "working directory or the Python path)") from None
    except AttributeError:
        raise UsageError(f"--model {target!r}: module {module!r} has no {name!r}") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    if not callable(fn):
        raise UsageError(f"--model {target!r}: {name!r} is not a function")
    return fn


def build_from_config(cfg: RunConfig, in_shape: tuple[int, ...], out_dim: int, input_kind: str, kind: str) -> ResidualModel:
    """The untrained model ``cfg.model`` describes: a user factory's, or a registered architecture's.
    The caller vouches for ``cfg`` (it is the caller's own, or `check_factory` passed on it)."""
    m = cfg.model
    if m.factory:
        fn = load_factory(m.factory)
        try:
            model = fn(**m.options)
        except TypeError as err:
            raise UsageError(f"--model {m.factory}: {err}") from None
        if not isinstance(model, ResidualModel):
            raise UsageError(f"--model {m.factory} returned a {type(model).__name__}, not a ResidualModel "
                             "(wrap your modules: ResidualModel(embed, blocks, head))")
        if m.zero_init and all(hasattr(b, "branch_outputs") for b in model.blocks):
            zero_init_branches(model)
        return model
    return build_model(m, in_shape, out_dim, input_kind, kind)
