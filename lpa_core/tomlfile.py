"""TOML parsing on every supported Python: the standard library's tomllib from 3.11, the tomli
package (the same parser, which tomllib was made from) on 3.10."""

from __future__ import annotations

try:
    from tomllib import TOMLDecodeError
    from tomllib import loads as toml_loads
except ModuleNotFoundError:  # Python 3.10
    from tomli import TOMLDecodeError
    from tomli import loads as toml_loads

__all__ = ["TOMLDecodeError", "toml_loads"]
