"""Segmentor spec strings, parsed strictly in one place, and the loader each form names.

Accepted forms (see `ACCEPTED_FORMS`):

    hf:<hub id or local folder>        a Hugging Face model (`ssa.segmentors.hf.HFSegmentor`)
    py:<module or file.py>:<factory>   a Python factory returning a `Segmentor`
    labels:<folder>                    precomputed label maps (`ssa.segmentors.labels`)
    plugin:<name>                      a factory registered under the entry-point group
                                       `ssa.segmentors` by an installed package
    <short name>                       a common checkpoint (`SHORT_NAMES`), e.g. segformer-b5-ade
    <plug-in name>                     a registered plug-in, when no short name has that name

Factory keyword arguments come from `--segmentor-arg KEY=VALUE` (repeatable; values read as YAML
scalars, so `3`, `0.5`, `true` and `null` are typed) or the config's `segmentor_args` mapping.
A factory that takes a `device` keyword gets the run's device unless the arguments name one.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ssa.errors import SSAError

ENTRY_POINT_GROUP = "ssa.segmentors"

# Common checkpoints on the Hugging Face hub, by a short name: <arch>-<size>-<dataset>.
SHORT_NAMES: dict[str, str] = {
    "segformer-b0-ade": "nvidia/segformer-b0-finetuned-ade-512-512",
    "segformer-b5-ade": "nvidia/segformer-b5-finetuned-ade-640-640",
    "segformer-b0-cityscapes": "nvidia/segformer-b0-finetuned-cityscapes-1024-1024",
    "segformer-b5-cityscapes": "nvidia/segformer-b5-finetuned-cityscapes-1024-1024",
    "oneformer-ade-swin-l": "shi-labs/oneformer_ade20k_swin_large",
    "oneformer-cityscapes-swin-l": "shi-labs/oneformer_cityscapes_swin_large",
    "mask2former-ade-swin-l": "facebook/mask2former-swin-large-ade-semantic",
    "mask2former-cityscapes-swin-l": "facebook/mask2former-swin-large-cityscapes-semantic",
    "maskformer-ade-swin-l": "facebook/maskformer-swin-large-ade",
    "upernet-convnext-l-ade": "openmmlab/upernet-convnext-large",
}

KINDS = ("hf", "py", "labels", "plugin")
ACCEPTED_FORMS = (
    "hf:<hub id or local folder> | py:<module or path/to/file.py>:<factory> | "
    "labels:<folder of label maps> | plugin:<entry-point name> | a short name ("
    + ", ".join(SHORT_NAMES)
    + ") | an installed plug-in's name"
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class SegmentorSpec:
    """A parsed spec. kind: one of `KINDS`; target: hub id/folder, module/file, folder or
    plug-in name; factory: the factory's name (`py:` only)."""

    kind: str
    target: str
    factory: str | None = None


def _bad(spec: str, why: str) -> SSAError:
    return SSAError(f"cannot parse --segmentor {spec!r}: {why}; accepted forms: {ACCEPTED_FORMS}")


def plugin_names() -> set[str]:
    """Names registered under the `ssa.segmentors` entry-point group."""
    from importlib.metadata import entry_points

    return {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}


def parse_spec(spec: str, plugins: Iterable[str] | None = None) -> SegmentorSpec:
    """Parse a `--segmentor` string; anything malformed or ambiguous raises SSAError.

    plugins: the registered plug-in names (default: read from the installed entry points).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise _bad(str(spec), "it is empty")
    spec = spec.strip()  # spaces around the spec and its target are a copy-paste accident
    kind, sep, rest = spec.partition(":")
    rest = rest.strip()
    if not sep or (len(kind) == 1 and kind.isalpha()):  # no prefix, or a Windows drive letter
        return _parse_name(spec, plugins)
    if kind not in KINDS:
        raise _bad(spec, f"unknown prefix {kind + ':'!r}{_hint(spec)}")
    if not rest:
        raise _bad(spec, f"nothing after {kind + ':'!r}")
    if kind == "py":
        module, sep, factory = (part.strip() for part in rest.rpartition(":"))
        if not sep or not module:
            raise _bad(spec, "py: needs a module or .py file and a factory, separated by ':'")
        if not _IDENTIFIER.fullmatch(factory):
            raise _bad(spec, f"factory {factory!r} is not a Python identifier")
        if not module.endswith(".py") and not _MODULE.fullmatch(module):
            raise _bad(spec, f"{module!r} is neither a dotted module name nor a .py file")
        return SegmentorSpec("py", module, factory)
    if kind == "plugin":
        names = plugin_names() if plugins is None else set(plugins)
        if rest not in names:
            known = ", ".join(sorted(names)) or "none installed"
            raise _bad(spec, f"no plug-in named {rest!r} (registered: {known})")
    return SegmentorSpec(kind, rest)


def _parse_name(spec: str, plugins: Iterable[str] | None) -> SegmentorSpec:
    names = plugin_names() if plugins is None else set(plugins)
    short = spec in SHORT_NAMES
    if short and spec in names:
        raise _bad(
            spec,
            f"it is both a short name and an installed plug-in; write hf:{SHORT_NAMES[spec]} "
            f"or plugin:{spec}",
        )
    if short:
        return SegmentorSpec("hf", SHORT_NAMES[spec])
    if spec in names:
        return SegmentorSpec("plugin", spec)
    raise _bad(spec, f"{spec!r} is not a known short name or plug-in{_hint(spec)}")


def _hint(spec: str) -> str:
    if spec.endswith(".py") or ".py:" in spec:
        return f" (a Python factory? write py:{spec})"
    if "/" in spec or Path(spec).exists():
        return f" (a hub id or model folder? write hf:{spec})"
    return ""


def parse_segmentor_args(items: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings to keyword arguments; values are YAML scalars (`3` is an int)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not _IDENTIFIER.fullmatch(key):
            raise SSAError(
                f"--segmentor-arg {item!r} is not KEY=VALUE; write e.g. --segmentor-arg crop_size=512"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else raw
    return out


def _call_factory(factory: Any, where: str, device: str, args: Mapping[str, Any]) -> Any:
    """Call a factory with the arguments, refusing unknown keywords with the accepted ones."""
    if not callable(factory):
        raise SSAError(f"{where} is not callable; point the spec at a factory function or class")
    kwargs = dict(args)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if "device" in params and "device" not in kwargs:
        kwargs["device"] = device
    if params and not takes_any:
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            accepted = ", ".join(k for k in params if k != "self") or "none"
            raise SSAError(
                f"{where} takes no argument {unknown[0]!r}; its keyword arguments: {accepted}"
            )
    try:
        return factory(**kwargs)
    except TypeError as exc:
        raise SSAError(f"{where}: {exc}; check --segmentor-arg") from None


def _import_target(target: str) -> Any:
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


def load_segmentor(
    spec: str,
    device: str = "cpu",
    args: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    label_map: Mapping[int, int] | None = None,
    **options: Any,
) -> Any:
    """Build the segmentor a spec string names.

    args: factory keyword arguments (`--segmentor-arg`); `options` are merged into them (older
    callers). classes: the class names a `labels:` folder uses (from `--classes` or the dataset);
    label_map: a `labels:` folder's stored id -> class index mapping (`--label-map`).
    """
    parsed = parse_spec(spec)
    kwargs = {**options, **dict(args or {})}
    if parsed.kind != "labels" and label_map is not None:
        raise SSAError(f"--label-map applies to labels: segmentors only, not {spec!r}")
    if parsed.kind == "hf":
        from ssa.segmentors.hf import HFSegmentor

        return _call_factory(partial(HFSegmentor, parsed.target), f"segmentor {spec}", device, kwargs)
    if parsed.kind == "py":
        module = _import_target(parsed.target)
        factory = getattr(module, parsed.factory or "", None)
        if factory is None:
            public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
            raise SSAError(
                f"py:{parsed.target} has no {parsed.factory!r}; its callables: "
                f"{', '.join(public) or 'none'}"
            )
        return _call_factory(factory, f"segmentor {spec}", device, kwargs)
    if parsed.kind == "labels":
        from ssa.segmentors.labels import LabelsSegmentor

        if classes is None:
            raise SSAError(
                f"segmentor {spec} needs class names: pass --classes FILE (one name per line) "
                f"or a --dataset with classes"
            )
        factory = partial(LabelsSegmentor, parsed.target, list(classes), label_map)
        return _call_factory(factory, f"segmentor {spec}", device, kwargs)
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == parsed.target]
    try:
        factory = found[0].load()
    except Exception as exc:  # noqa: BLE001 - a broken third-party package can raise anything
        raise SSAError(
            f"plug-in {parsed.target!r} ({found[0].value}) fails to load "
            f"({type(exc).__name__}: {exc}); reinstall the package that provides it"
        ) from None
    return _call_factory(factory, f"plug-in {parsed.target!r}", device, kwargs)


def read_classes_file(path: str | Path) -> list[str]:
    """Class names, one per line, in index order (blank lines and `#` comments skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SSAError(f"--classes {path}: cannot read it ({exc}); pass a text file") from None
    except UnicodeDecodeError:
        raise SSAError(
            f"--classes {path} is not UTF-8 text (a binary file?); pass class names, one per line"
        ) from None
    if "\0" in text:
        raise SSAError(f"--classes {path} holds NUL bytes (a binary file?); pass a text file")
    lines = text.splitlines()
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise SSAError(f"--classes {path} holds no class names; write one name per line")
    if len(set(names)) != len(names):
        raise SSAError(f"--classes {path} names a class twice; each name must appear once")
    return names


def read_label_map_file(path: str | Path, classes: Sequence[str]) -> dict[int, int]:
    """A stored id -> class mapping from a JSON or YAML file: `{stored_id: index or name}`.

    Ids absent from the mapping become "no label".
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML reads JSON too
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise SSAError(f"--label-map {path}: cannot read it ({exc}); pass a JSON/YAML mapping") from None
    if not isinstance(data, dict) or not data:
        raise SSAError(f"--label-map {path} must map stored ids to class indices or names")
    index = {name: i for i, name in enumerate(classes)}
    out: dict[int, int] = {}
    for key, value in data.items():
        try:
            stored = int(key)
        except (TypeError, ValueError):
            raise SSAError(f"--label-map {path}: key {key!r} is not an integer id") from None
        if isinstance(value, str) and value in index:
            out[stored] = index[value]
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
            out[stored] = value
        else:
            raise SSAError(
                f"--label-map {path}: {key}: {value!r} is neither a class index 0..{len(classes) - 1} "
                f"nor a class name"
            )
    return out
