"""Validation of checkpoint state read back by the routing objects: own keys only, typed, in range.

A checkpoint may come from another run or another person, so ``load_state_dict`` checks it like a
config: every error names the key, the value and what is allowed, and nothing is assigned before
the whole state has been checked.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


def check_state_keys(where: str, state: Any, keys: Iterable[str]) -> Mapping[str, Any]:
    """``state`` must be a mapping holding exactly ``keys``; returns it."""
    keys = tuple(keys)
    if not isinstance(state, Mapping):
        raise TypeError(f"{where} state must be a mapping with keys {list(keys)}, got {type(state).__name__}.")
    unknown = [key for key in state if key not in keys]
    if unknown:
        hints = {key: difflib.get_close_matches(str(key), keys, n=1) for key in unknown}
        suggestion = "".join(f" ({key!r}: did you mean {hint[0]!r}?)" for key, hint in hints.items() if hint)
        raise ValueError(f"{where} state has unknown keys {unknown}{suggestion}; allowed keys: {list(keys)}.")
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"{where} state is missing {missing}; expected keys {list(keys)}.")
    return state


def state_int(where: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` must be an int (not a bool, float or None) in ``[low, high]``; returns it."""
    allowed = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where} state: {key}={value!r} ({type(value).__name__}) must be {allowed}.")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{where} state: {key}={value} must be {allowed}.")
    return value
