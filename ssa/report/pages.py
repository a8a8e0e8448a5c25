"""Jinja2 templates of the report (autoescape on: class and file names are user text) and the
small JavaScript data files the class filter loads with `<script src>` (a `file://` page may
not `fetch` its neighbours, but it may load scripts beside it)."""

from __future__ import annotations

import json
from typing import Any


def _number(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def _duration(value: float) -> str:
    seconds = round(value)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def environment() -> Any:
    """The templates of `ssa/report/templates`, every value HTML-escaped unless marked safe."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("ssa.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _number
    env.filters["signed"] = _signed
    env.filters["duration"] = _duration
    env.filters["json"] = lambda value: json.dumps(value, ensure_ascii=True)
    return env


def js_call(function: str, payload: Any) -> str:
    """`function(<payload as JSON>);` as a script file: ASCII-only JSON with `<` written as
    `\\u003c`, so no name can end a script or start markup."""
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")
    return f"{function}({text});\n"
