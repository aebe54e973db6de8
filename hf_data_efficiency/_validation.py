"""A small schema checker for configuration inputs.

Every config value (our dataclasses, DeepSpeed blocks, nested ``schedule_config`` mappings, flags) goes through
these helpers, so every refusal is a ``ValueError`` that names the field path, the bad value and what is allowed,
instead of a raw ``TypeError``/``AttributeError`` later. Booleans are not numbers, non-integral floats are not
integers, NaN and infinity are not numbers, and unknown keys come with a close-match suggestion.

A dataclass field declares its rule once with :func:`setting`; :func:`check_fields` applies the rules in
``__post_init__``, and the Trainer flags are generated from the same rules (type, choices and help text).

JSON state files (checkpoint state, metric summaries) are read through :func:`read_json`, with bounded size and
nesting, so a damaged or hostile file gives an error naming the file instead of a ``RecursionError`` or a crash.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

#: Value kinds a :class:`Rule` can check.
KINDS = ("int", "number", "bool", "str", "int_list", "str_list", "mapping")
#: Largest JSON state file :func:`read_json` reads by default, in bytes (a streaming curriculum's checkpoint state
#: holds its sample buffer, so this is generous).
MAX_JSON_BYTES = 4 * 2**30
#: Deepest nesting :func:`read_json` accepts by default (our state files nest fewer than 16 levels).
MAX_JSON_DEPTH = 64


def close_match(name: Any, allowed: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The allowed name closest to ``name`` (difflib similarity >= ``cutoff``), or ``None``."""
    match = difflib.get_close_matches(str(name), list(allowed), n=1, cutoff=cutoff)
    return match[0] if match else None


def did_you_mean(name: Any, allowed: Iterable[str], cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` for the closest allowed name, or ``""``."""
    match = close_match(name, allowed, cutoff)
    return f" (did you mean {match!r}?)" if match else ""


def check_keys(given: Mapping[str, Any], allowed: Iterable[str], path: str, required: Iterable[str] = ()) -> None:
    """Refuse keys outside ``allowed`` (with a suggestion) and missing ``required`` keys."""
    allowed = sorted(allowed)
    for key in given:
        if key not in allowed:
            raise ValueError(
                f"{path}: unknown key {key!r}{did_you_mean(key, allowed)}; allowed keys: {', '.join(allowed)}."
            )
    for key in required:
        if key not in given:
            raise ValueError(f"{path} is missing the required key {key!r}.")


def expect_mapping(value: Any, path: str) -> Mapping[str, Any]:
    """``value`` if it is a mapping with string keys, else a ``ValueError`` naming ``path``."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}={_show(value)} must be a mapping (a JSON object), got {type(value).__name__}.")
    return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _fail(path: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{path}={_show(value)} is not allowed; allowed: {allowed}.")


def check_int(value: Any, path: str, *, minimum: float | None = None) -> int:
    """An integer (integral floats such as ``8.0`` are accepted as ``8``; booleans are refused)."""
    bound = "" if minimum is None else f" >= {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(path, value, f"an integer{bound}")
    if isinstance(value, float) and not value.is_integer():
        raise _fail(path, value, f"an integer{bound} (not a fraction, NaN or infinity)")
    value = int(value)
    if minimum is not None and value < minimum:
        raise _fail(path, value, f"an integer{bound}")
    return value


def check_number(
    value: Any, path: str, *, minimum: float | None = None, above: float | None = None, maximum: float | None = None
) -> int | float:
    """A finite int or float (booleans, NaN and infinity are refused); integral floats become ints."""
    parts = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else ""]
    parts.append(f"<= {maximum:g}" if maximum is not None else "")
    bound = " and ".join(p for p in parts if p)
    allowed = f"a finite number{' ' + bound if bound else ''}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(path, value, allowed)
    if (
        (minimum is not None and value < minimum)
        or (above is not None and value <= above)
        or (maximum is not None and value > maximum)
    ):
        raise _fail(path, value, allowed)
    return int(value) if isinstance(value, float) and value.is_integer() else value


def check_bool(value: Any, path: str) -> bool:
    """``True`` or ``False`` (not ``0``/``1``/``"true"``)."""
    if not isinstance(value, bool):
        raise _fail(path, value, "true or false")
    return value


def check_str(value: Any, path: str, choices: Iterable[str] | None = None) -> str:
    """A string, one of ``choices`` when given."""
    if choices is not None:
        choices = tuple(choices)
        if value not in choices or not isinstance(value, str):
            hint = did_you_mean(value, choices) if isinstance(value, str) else ""
            raise ValueError(f"{path}={_show(value)} is not supported{hint}; allowed values: {', '.join(choices)}.")
        return value
    if not isinstance(value, str):
        raise _fail(path, value, "a string")
    return value


def check_list(value: Any, path: str, item: Callable[[Any, str], Any], *, nonempty: bool = False) -> list[Any]:
    """A list (or tuple) whose items each pass ``item(value, path[i])``."""
    if not isinstance(value, (list, tuple)):
        raise _fail(path, value, "a list" + (" (non-empty)" if nonempty else ""))
    if nonempty and not value:
        raise _fail(path, value, "a non-empty list")
    return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]


def check_same_geometry(state: Mapping[str, Any], path: str, run: Any, keys: Iterable[str]) -> None:
    """Refuse a sampler state whose ``keys`` (seed, data size, batch geometry) differ from ``run``'s attributes,
    naming the first that does."""
    for key in keys:
        if state[key] != getattr(run, key):
            raise ValueError(
                f"{path}.{key}={state[key]!r} but this run has {key}={getattr(run, key)!r}; resume with the same "
                "seed, dataset and batch geometry."
            )


def check_state_keys(where: str, state: Any, keys: Iterable[str]) -> Mapping[str, Any]:
    """A checkpoint state read back: a mapping holding exactly ``keys`` (a ``TypeError`` when not a mapping);
    returns it. States are checked like configs, but strictly: they are written by this package."""
    keys = tuple(keys)
    if not isinstance(state, Mapping):
        raise TypeError(f"{where} state must be a mapping with keys {list(keys)}, got {type(state).__name__}.")
    unknown = [key for key in state if key not in keys]
    if unknown:
        hints = {key: close_match(key, keys) for key in unknown}
        suggestion = "".join(f" ({key!r}: did you mean {hint!r}?)" for key, hint in hints.items() if hint)
        raise ValueError(f"{where} state has unknown keys {unknown}{suggestion}; allowed keys: {list(keys)}.")
    missing = [key for key in keys if key not in state]
    if missing:
        raise ValueError(f"{where} state is missing {missing}; expected keys {list(keys)}.")
    return state


def check_state_int(value: Any, path: str, low: int, high: int | None = None) -> int:
    """A value read back from a checkpoint state: an int (not a bool, float or None; a ``TypeError``) in
    ``[low, high]`` (a ``ValueError``); returns it."""
    allowed = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{path}={value!r} ({type(value).__name__}) must be {allowed}.")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{path}={value} must be {allowed}.")
    return value


def state_int(where: str, key: str, value: Any, low: int, high: int | None = None) -> int:
    """:func:`check_state_int` of ``key`` in the state of ``where``."""
    return check_state_int(value, f"{where} state: {key}", low, high)


@dataclass(frozen=True)
class Rule:
    """How one config field is checked and how its flag looks.

    ``kind`` is one of :data:`KINDS`; ``minimum`` bounds integers (and ``int_list`` items) and numbers, ``above``
    bounds numbers (exclusive), ``maximum`` numbers (inclusive); ``nullable`` allows ``None``; ``flag=False`` keeps
    the field out of the generated Trainer flags.
    """

    kind: str
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    nullable: bool = False
    flag: bool = True

    def __post_init__(self) -> None:
        check_str(self.kind, "Rule.kind", KINDS)

    def check(self, value: Any, path: str) -> Any:
        """The checked (and normalised) value, or a ``ValueError`` naming ``path``."""
        if value is None and self.nullable:
            return None
        if self.kind == "int":
            return check_int(value, path, minimum=self.minimum)
        if self.kind == "number":
            return check_number(value, path, minimum=self.minimum, above=self.above, maximum=self.maximum)
        if self.kind == "bool":
            return check_bool(value, path)
        if self.kind == "str":
            return check_str(value, path, self.choices)
        if self.kind == "int_list":
            return check_list(value, path, lambda v, p: check_int(v, p, minimum=self.minimum))
        if self.kind == "str_list":
            return check_list(value, path, check_str, nonempty=True)
        return dict(expect_mapping(value, path))  # "mapping"


def setting(default: Any = MISSING, *, default_factory: Any = MISSING, compare: bool = True, **rule: Any) -> Any:
    """A dataclass field carrying its :class:`Rule` (checked by :func:`check_fields`, used for flags and docs)."""
    return field(
        default=default,
        default_factory=default_factory,
        compare=compare,
        repr=compare,
        metadata={"rule": Rule(**rule)},
    )


def rule_of(f: Any) -> Rule | None:
    """The :class:`Rule` of a dataclass field, if it has one."""
    return f.metadata.get("rule")


def check_fields(obj: Any, path: str) -> None:
    """Check and normalise every ruled field of the dataclass instance ``obj`` in place."""
    for f in fields(obj):
        rule = rule_of(f)
        if rule is not None:
            object.__setattr__(obj, f.name, rule.check(getattr(obj, f.name), f"{path}.{f.name}"))


def required_fields(cls: type) -> list[str]:
    """The fields the dataclass ``cls`` must be given: its init fields without a default."""
    return [f.name for f in fields(cls) if f.init and f.default is MISSING and f.default_factory is MISSING]


def from_mapping(cls: type, data: Any, path: str, **extra: Any) -> Any:
    """Build the dataclass ``cls`` from a mapping after refusing unknown and missing keys."""
    data = dict(expect_mapping(data, path))
    names = [f.name for f in fields(cls) if f.init and f.name not in extra]
    check_keys(data, names, path, [name for name in required_fields(cls) if name not in extra])
    return cls(**data, **extra)


class UnreadableFileError(ValueError):
    """A file that cannot be read as what it should hold: the message is ``"<path>: <reason>"``, and ``reason``
    alone says why (for callers that name the file themselves)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


_JSON_CONTAINERS = frozenset((dict, list))


def deeper_than(value: Any, limit: int) -> bool:
    """Whether the JSON object or array ``value`` (level 1) holds containers deeper than level ``limit``; walked
    without recursion, visiting each value once."""
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if not _JSON_CONTAINERS.intersection(map(type, children)):  # leaves only (C speed: long token lists)
            continue
        if level >= limit:
            return True
        stack.extend((c, level + 1) for c in children if type(c) in _JSON_CONTAINERS)
    return False


def read_json(
    path: str | os.PathLike,
    *,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    parse: Callable[[str], Any] = json.loads,
) -> Any:
    """The JSON value stored in ``path`` (UTF-8 text of at most ``max_bytes`` bytes, nested at most ``max_depth``
    levels). Anything else, or a file that cannot be opened, raises :class:`UnreadableFileError` naming the file and
    the reason (too large, the offending byte, the JSON error and its line, the nesting limit). ``parse`` reads the
    text (config files may be YAML); it may raise :class:`UnreadableFileError` itself."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise UnreadableFileError(path, f"{size} bytes; allowed: at most {max_bytes} bytes")
            raw = f.read()
    except OSError as e:
        raise UnreadableFileError(path, f"cannot be read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnreadableFileError(
            path, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); the file must be UTF-8"
        ) from None
    too_deep = f"nested more than {max_depth} levels deep; allowed: at most {max_depth} levels"
    try:
        data = parse(text)
    except json.JSONDecodeError as e:
        raise UnreadableFileError(path, f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:  # the parser gives up far deeper than max_depth
        raise UnreadableFileError(path, too_deep) from None
    if isinstance(data, (dict, list)) and deeper_than(data, max_depth):
        raise UnreadableFileError(path, too_deep)
    return data
