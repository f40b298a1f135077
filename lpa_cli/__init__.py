"""lpa: train and audit approximation trajectories of residual networks."""

__version__ = "0.1.0"
