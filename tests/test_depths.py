import numpy as np
import pytest

from lpa_core.depths import parse_depths
from lpa_core.errors import UsageError


@pytest.mark.parametrize("spec", [":", "1:", ":5", "1:8:2", "::3", "-3:", "::-1", "2:-1", "-1", "0", "8"])
def test_slices_match_numpy(spec):
    n = 9
    if ":" in spec:
        parts = [int(p) if p else None for p in spec.split(":")]
        expected = sorted(set(np.arange(n)[slice(*parts)].tolist()))
    else:
        expected = [int(spec) % n]
    assert parse_depths(spec, n) == expected


def test_lists_and_mixtures():
    assert parse_depths("2,4,8", 9) == [2, 4, 8]
    assert parse_depths("0, 6:", 9) == [0, 6, 7, 8]
    assert parse_depths("8,8,2", 9) == [2, 8]


@pytest.mark.parametrize("spec", ["9", "-10", "a", "1:2:0", "1::2::", "5:2", "1,,2"])
def test_bad_selections_raise_usage_error(spec):
    with pytest.raises(UsageError):
        parse_depths(spec, 9)
