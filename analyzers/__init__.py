"""Array-side analysis of lpa traces: numpy, scipy and h5py only, never torch.

Everything here takes arrays or HDF5 traces and returns plain result dataclasses, so it can be
used from a notebook, a CI job or the `lpa` command line alike.
"""

from lpa_core.errors import LpaError

__all__ = ["LpaError"]
