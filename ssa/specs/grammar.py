"""The one grammar of spec strings (`--masks`, `--segmentor`), and its error wording.

    <kind>:<target>                 a prefix the option knows (`Grammar.kinds`) and its target
    py:<module or file.py>:<factory>  user code (`ssa.plugins.split_py_target`)
    plugin:<name>                   a factory an installed package registered under the option's
                                    entry-point group
    <bare word or path>             left to the option (`Parsed.kind` None): a folder, a short
                                    name or a plug-in's name

Spaces around the spec and its target are a copy-paste accident and are dropped; a one-letter
prefix is a Windows drive (`C:\\masks`), not a kind. Every malformed spec raises one SSAError
line: `cannot parse <flag> '<spec>': <why>; accepted forms: <forms>`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ssa.errors import SSAError
from ssa.plugins import entry_point_names, split_py_target


@dataclass(frozen=True)
class Parsed:
    """A spec split by the grammar: kind (None for a bare word or path), target, and the
    factory of a `py:` spec."""

    spec: str
    kind: str | None
    target: str
    factory: str | None = None


@dataclass(frozen=True)
class Grammar:
    """One option's vocabulary of the grammar: its flag, its prefixes, the forms its errors
    list, its plug-ins' entry-point group and its hint for a spec that looks like another
    kind's (`hint(spec)` -> " (a Python factory? write py:...)" or "")."""

    flag: str
    kinds: tuple[str, ...]
    forms: str
    group: str
    hint: Callable[[str], str] = field(default=lambda spec: "")

    def bad(self, spec: str, why: str) -> SSAError:
        return SSAError(f"cannot parse {self.flag} {spec!r}: {why}; accepted forms: {self.forms}")

    def plugins(self, given: Iterable[str] | None = None) -> set[str]:
        """The registered plug-in names (`given`, else read from the installed entry points)."""
        return entry_point_names(self.group) if given is None else set(given)

    def split(self, spec: object, plugins: Iterable[str] | None = None) -> Parsed:
        """Split `spec` by the grammar, refusing what is malformed (see the module docstring)."""
        if not isinstance(spec, (str, Path)) or not str(spec).strip():
            raise self.bad(str(spec), "it is empty")
        text = str(spec).strip()
        kind, sep, rest = text.partition(":")
        rest = rest.strip()
        if not sep or (len(kind) == 1 and kind.isalpha()):  # no prefix, or a drive letter
            return Parsed(text, None, text)
        if kind not in self.kinds:
            raise self.bad(text, f"unknown prefix {kind + ':'!r}{self.hint(text)}")
        if not rest:
            raise self.bad(text, f"nothing after {kind + ':'!r}")
        if kind == "py":
            module, factory = split_py_target(rest, lambda why: self.bad(text, why))
            return Parsed(text, "py", module, factory)
        if kind == "plugin":
            names = self.plugins(plugins)
            if rest not in names:
                known = ", ".join(sorted(names)) or "none installed"
                raise self.bad(text, f"no plug-in named {rest!r} (registered: {known})")
        return Parsed(text, kind, rest)
