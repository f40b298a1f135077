"""The toolkit's error types.

Every error a user can cause by bad input is an `LpaError`; the command line turns one into a single
line on stderr and exit code 2. Anything else escaping is a bug in lpa.
"""

from __future__ import annotations


class LpaError(Exception):
    """Base class: bad usage or bad input. Exit code 2 on the command line."""

    exit_code = 2


class UsageError(LpaError):
    """A flag, option value or config entry is invalid."""


class ConfigError(UsageError):
    """A TOML config file cannot be read or has invalid contents."""


class CheckpointError(LpaError):
    """A checkpoint file is missing, corrupt, foreign or from an unsupported version."""


class TraceError(LpaError):
    """A trace file is missing, corrupt, incomplete, foreign or from an unsupported version."""


class DataError(LpaError):
    """A data file or task specification cannot be used."""


class OutputExistsError(LpaError):
    """An output file exists and `--force` was not given."""


class OutputError(LpaError):
    """An output file could not be written (permissions, disk full, ...)."""


class TrustError(LpaError):
    """A file names code (a model factory) that the user has not allowed lpa to import or call."""
