"""Depth selections written as numpy-slice strings.

Depth k runs from 0 (the embedding read by the head) to N (the model's ordinary output), so a model
with N blocks has N + 1 depths. Selections: ``":"`` (all), ``"1:8:2"`` (a slice), ``"2,4,8"`` (a list),
``"-1"`` (the last depth), or mixtures such as ``"0,4:"``. Negative numbers count from the end, as in numpy.
"""

from __future__ import annotations

from lpa_core.errors import UsageError


def _int(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"bad depth selection {spec!r}: {text!r} is not an integer") from None


def parse_depths(spec: str | None, n_depths: int) -> list[int]:
    """Resolve `spec` against depths ``0 .. n_depths-1``; sorted, unique, never empty."""
    if spec is None or spec.strip() in ("", ":"):
        return list(range(n_depths))
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        if not part:
            raise UsageError(f"bad depth selection {spec!r}: empty item")
        if ":" in part:
            fields = part.split(":")
            if len(fields) > 3:
                raise UsageError(f"bad depth selection {spec!r}: {part!r} has too many ':'")
            start, stop, step = (_int(f, spec) if f.strip() else None for f in fields + [""] * (3 - len(fields)))
            if step == 0:
                raise UsageError(f"bad depth selection {spec!r}: slice step cannot be zero")
            chosen.update(range(n_depths)[slice(start, stop, step)])
        else:
            k = _int(part, spec)
            if not -n_depths <= k < n_depths:
                raise UsageError(f"bad depth selection {spec!r}: depth {k} is outside 0..{n_depths - 1}")
            chosen.add(k % n_depths)
    if not chosen:
        raise UsageError(f"depth selection {spec!r} selects no depth out of 0..{n_depths - 1}")
    return sorted(chosen)


def select_recorded(spec: str | None, recorded: list[int], n_depths: int | None = None) -> list[int]:
    """Positions (indices into ``recorded``) of the depths ``spec`` selects, read as depth numbers.

    A trace may hold a subset of depths (``lpa trace --depths "0,4:"``); ``spec`` still names depths
    0..N (``n_depths`` = N + 1, default: one past the deepest recorded), never positions. Slices keep the
    recorded depths they cover; a depth listed by number that was not recorded is an error.
    """
    n_depths = n_depths or (max(recorded) + 1)
    chosen = parse_depths(spec, n_depths)
    if spec is not None:
        for part in spec.split(","):
            part = part.strip()
            if part and ":" not in part:
                k = _int(part, spec) % n_depths
                if k not in recorded:
                    raise UsageError(f"depth {k} was not recorded (recorded: {', '.join(map(str, recorded))})")
    positions = [recorded.index(k) for k in chosen if k in recorded]
    if not positions:
        raise UsageError(f"depth selection {spec!r} selects none of the recorded depths ({', '.join(map(str, recorded))})")
    return positions


def spans(depths: list[int]) -> str:
    """Depths as runs, for people: [0, 1, 2, 3, 5] -> "depths 0-3 and 5"; [4] -> "depth 4"."""
    runs: list[list[int]] = []
    for d in sorted(depths):
        if runs and d == runs[-1][-1] + 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    parts = [f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"depth{'s' if len(depths) > 1 else ''} {text}"
