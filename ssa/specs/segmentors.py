"""Segmentor spec strings, parsed strictly in one place, and the loader each form names.

Accepted forms (see `ACCEPTED_FORMS`):

    hf:<hub id or local folder>        a Hugging Face model (`ssa.segmentors.hf.HFSegmentor`),
                                       or SAM 3 prompted with the class names
                                       (`ssa.segmentors.sam3`), recognised from its config
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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ssa.errors import SSAError
from ssa.plugins import call_factory as _call_factory
from ssa.plugins import load_entry_point, load_py_factory
from ssa.specs.grammar import Grammar

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


@dataclass(frozen=True)
class SegmentorSpec:
    """A parsed spec. kind: one of `KINDS`; target: hub id/folder, module/file, folder or
    plug-in name; factory: the factory's name (`py:` only)."""

    kind: str
    target: str
    factory: str | None = None


def _hint(spec: str) -> str:
    if spec.endswith(".py") or ".py:" in spec:
        return f" (a Python factory? write py:{spec})"
    if "/" in spec or Path(spec).exists():
        return f" (a hub id or model folder? write hf:{spec})"
    return ""


GRAMMAR = Grammar("--segmentor", KINDS, ACCEPTED_FORMS, ENTRY_POINT_GROUP, _hint)
_bad = GRAMMAR.bad


def plugin_names() -> set[str]:
    """Names registered under the `ssa.segmentors` entry-point group."""
    return GRAMMAR.plugins()


def parse_spec(spec: str, plugins: Iterable[str] | None = None) -> SegmentorSpec:
    """Parse a `--segmentor` string (`ssa.specs.grammar`); anything malformed or ambiguous
    raises SSAError. plugins: the registered plug-in names (default: the installed ones)."""
    parsed = GRAMMAR.split(spec, plugins)
    if parsed.kind is None:
        return _parse_name(parsed.spec, plugins)
    return SegmentorSpec(parsed.kind, parsed.target, parsed.factory)


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


def parse_segmentor_args(items: Iterable[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings to keyword arguments; values are YAML scalars (`3` is an int)."""
    from ssa.keyvalue import parse_key_values

    return parse_key_values(items, "--segmentor-arg", "crop_size=512")


def load_segmentor(
    spec: str,
    device: str = "cpu",
    args: Mapping[str, Any] | None = None,
    classes: Sequence[str] | None = None,
    label_map: Mapping[int, int] | None = None,
    prompts: Mapping[str, Sequence[str]] | None = None,
    **options: Any,
) -> Any:
    """Build the segmentor a spec string names.

    args: factory keyword arguments (`--segmentor-arg`); `options` are merged into them (older
    callers). classes: the class names a `labels:` folder uses and a SAM 3 `hf:` model prompts
    (from `--classes` or the dataset); label_map: a `labels:` folder's stored id -> class index
    mapping (`--label-map`); prompts: a SAM 3 model's `{class: [phrases]}` (`--prompts`).
    """
    parsed = parse_spec(spec)
    kwargs = {**options, **dict(args or {})}
    if parsed.kind != "labels" and label_map is not None:
        raise SSAError(f"--label-map applies to labels: segmentors only, not {spec!r}")
    if parsed.kind != "hf" and prompts:
        raise SSAError(f"--prompts applies to SAM 3 (hf:) segmentors only, not {spec!r}")
    if parsed.kind == "hf":
        from ssa.segmentors.hf import hf_factory

        factory = hf_factory(parsed.target, classes, prompts)
        return _call_factory(factory, f"segmentor {spec}", device, kwargs)
    if parsed.kind == "py":
        factory = load_py_factory(parsed.target, parsed.factory or "")
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
    factory = load_entry_point(ENTRY_POINT_GROUP, parsed.target)
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
    from ssa.userfiles import read_user_yaml

    path = Path(path)
    data = read_user_yaml(path, "--label-map")  # YAML reads JSON too; aliases, repeats refused
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
