"""Loading user code named by a spec string, shared by both branches' spec parsers.

`py:<module or file.py>:<factory>` targets, entry-point groups (`ssa.segmentors`,
`ssa.mask_sources`) and the call of a factory with keyword arguments that are checked against
its signature.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ssa.errors import SSAError
from ssa.words import did_you_mean

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def split_py_target(rest: str, bad: Callable[[str], Exception]) -> tuple[str, str]:
    """`<module or file.py>:<factory>` -> (module, factory); `bad(why)` builds the error."""
    module, sep, factory = (part.strip() for part in rest.rpartition(":"))
    if not sep or not module:
        raise bad("py: needs a module or .py file and a factory, separated by ':'")
    if not IDENTIFIER.fullmatch(factory):
        raise bad(f"factory {factory!r} is not a Python identifier")
    if not module.endswith(".py") and not MODULE.fullmatch(module):
        raise bad(f"{module!r} is neither a dotted module name nor a .py file")
    return module, factory


def entry_point_names(group: str) -> set[str]:
    """Names registered under an entry-point group by installed packages."""
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group=group)}


def load_entry_point(group: str, name: str) -> Any:
    """The object a registered entry point names; a package that fails to load is an SSAError."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=group) if ep.name == name]
    if not found:
        known = ", ".join(sorted(entry_point_names(group))) or "none installed"
        raise SSAError(f"no plug-in named {name!r} in {group} (registered: {known})")
    try:
        return found[0].load()
    except Exception as exc:  # noqa: BLE001 - a broken third-party package can raise anything
        raise SSAError(
            f"plug-in {name!r} ({found[0].value}) fails to load "
            f"({type(exc).__name__}: {exc}); reinstall the package that provides it"
        ) from None


def import_target(target: str) -> Any:
    """Import a dotted module name, or a `.py` file by path (registered in `sys.modules`)."""
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_file():
            raise SSAError(f"py:{target}: no such file; pass the path of a .py file")
        name = f"ssa_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise SSAError(f"py:{target}: cannot import this file; pass a Python source file")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        module_spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise SSAError(
            f"py:{target}: cannot import module ({exc}); install it, add it to PYTHONPATH, "
            f"or pass a path/to/file.py"
        ) from None


def load_py_factory(target: str, factory: str) -> Any:
    """The attribute `factory` of the module or file `target`; a missing one lists the callables."""
    module = import_target(target)
    found = getattr(module, factory, None)
    if found is None:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise SSAError(
            f"py:{target} has no {factory!r}; its callables: {', '.join(public) or 'none'}"
        )
    return found


def factory_parameters(factory: Any) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of a factory, or None when it takes `**kwargs` or has no signature."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p for k, p in params.items() if k != "self"}


def call_factory(
    factory: Any, where: str, device: str, args: Mapping[str, Any], flag: str = "--segmentor-arg"
) -> Any:
    """Call a factory with the arguments, refusing unknown keywords with the accepted ones.

    A factory that takes a `device` keyword gets `device` unless the arguments name one.
    """
    if not callable(factory):
        raise SSAError(f"{where} is not callable; point the spec at a factory function or class")
    kwargs = dict(args)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "device" in params and "device" not in kwargs:
        kwargs["device"] = device
    if params and not takes_any:
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            accepted = ", ".join(k for k in params if k != "self") or "none"
            hint = did_you_mean(unknown[0], [k for k in params if k != "self"])
            raise SSAError(
                f"{where} takes no argument {unknown[0]!r}{hint}; its keyword arguments: "
                f"{accepted}"
            )
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise SSAError(f"{where}: {exc}; check {flag}") from None


def accepts_path(fn: Any) -> bool:
    """Whether a callable takes a `path` keyword (then it is given the image's relative path)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("path")
    return param is not None and param.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )
