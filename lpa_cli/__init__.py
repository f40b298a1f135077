"""lpa: train and audit approximation trajectories of residual networks.

``import lpa_cli`` stays light (no torch): the public names below are imported on first use.
"""

__version__ = "0.2.0"

_LAZY = {
    "LPALoss": "lpa_cli.training.lpa_loss",
    "ResidualModel": "lpa_cli.models.protocol",
    "Batch": "lpa_cli.data.batch",
    "train": "lpa_cli.training.trainer",
    "load_checkpoint": "lpa_cli.models.open",
    "save_model": "lpa_cli.formats.checkpoint",
    "trace_model": "lpa_cli.serving.trace",
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lpa_cli' has no attribute {name!r}")


__all__ = [*_LAZY, "__version__"]
