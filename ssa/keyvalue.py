"""`KEY=VALUE` options (`--amg`, `--segmentor-arg`) and typed knob tables, parsed in one place.

Values are read as YAML scalars (`3` is an int, `0.5` a float, `true` a bool, `null` None; any
other text stays a string). Where a source declares its knobs (`Knob`), keys are checked against
the table (an unknown key lists the valid ones) and values against each knob's type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ssa.errors import SSAError
from ssa.plugins import IDENTIFIER
from ssa.words import did_you_mean, with_article


@dataclass(frozen=True)
class Knob:
    """One setting of a mask source: its default (the library's own), its type (`bool`, `int`,
    `float` or `str`) and whether None is accepted."""

    name: str
    default: Any
    type: type
    optional: bool = False

    @classmethod
    def from_default(cls, name: str, default: Any, optional: bool | None = None) -> Knob:
        """A knob typed by its default (None: an optional int, as `points_per_side`)."""
        kind = type(default) if default is not None else int
        if kind not in (bool, int, float, str):
            kind = str
        return cls(name, default, kind, default is None if optional is None else optional)


def parse_scalar(raw: str) -> Any:
    """A YAML scalar (`3`, `0.5`, `true`, `null`); anything else, lists included, as text."""
    import yaml

    if not raw.strip():
        return raw
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return value if isinstance(value, (str, int, float, bool, type(None))) else raw


def parse_key_values(items: Iterable[str], flag: str, example: str) -> dict[str, Any]:
    """Repeated `KEY=VALUE` strings to `{key: scalar}` (dashes in keys read as underscores).

    flag: the option's name for messages (`--amg`); example: a valid item (`points_per_side=32`).
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not IDENTIFIER.fullmatch(key):
            raise SSAError(f"{flag} {item!r} is not KEY=VALUE; write e.g. {flag} {example}")
        out[key] = parse_scalar(raw.strip())
    return out


def check_knob(knob: Knob, value: Any, flag: str = "--amg") -> Any:
    """`value` as the knob's type (an int for a float knob becomes a float; text is parsed as a
    scalar first); a value of another type is an SSAError."""
    if isinstance(value, str) and knob.type is not str:
        value = parse_scalar(value)
    if knob.optional and (value is None or (isinstance(value, str)
                                            and value.lower() in ("none", "null"))):
        return None
    kind = knob.type
    ok = False
    if kind is bool:
        if value in (0, 1) and not isinstance(value, float):
            value, ok = bool(value), True
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    if not ok:
        optional = " or none" if knob.optional else ""
        raise SSAError(
            f"{flag} {knob.name}={value}: {knob.name} takes "
            f"{with_article(kind.__name__)}{optional} (default {knob.default!r})"
        )
    return value


def check_knobs(
    values: Mapping[str, Any], knobs: Mapping[str, Knob], flag: str = "--amg", where: str = ""
) -> dict[str, Any]:
    """Typed values for the keys of `values`, every key a knob of the table."""
    out = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key not in knobs:
            source = f" for {where}" if where else ""
            raise SSAError(
                f"unknown {flag} key {key!r}{source}{did_you_mean(key, knobs)}; valid keys: "
                f"{', '.join(sorted(knobs))}"
            )
        out[key] = check_knob(knobs[key], value, flag)
    return out
