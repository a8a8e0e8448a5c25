"""Mask source spec strings (`--masks SPEC`), parsed strictly in one place, and their loaders.

Accepted forms (see `ACCEPTED_FORMS`):

    sam:<vit_h|vit_l|vit_b>[:<file.pth>]  segment-anything's SAM (`ssa.masks.sam`); without a
                                         file, the official checkpoint in ckp/ (downloaded)
    hf:<hub id or local folder>          a transformers SAM-family model (`ssa.masks.hf`)
    json:<folder>                        SA-1B-style JSON, one file per image (`ssa.masks.sa1b`)
    py:<module or file.py>:<factory>     a Python factory returning a mask source
    plugin:<name>                        a factory registered under the entry-point group
                                         `ssa.mask_sources` by an installed package
    <existing folder>                    the same as json:<folder>
    <plug-in name>                       the same as plugin:<name>

`--sam-model`/`--sam-checkpoint` are shorthands for `sam:` (`spec_from_config`). A factory gets
the run's device (when it takes a `device` keyword) and the `--amg KEY=VALUE` values as keyword
arguments; it may return a `MaskSource` or any object whose `generate(image)` returns a list of
records with `HW bool` (or RLE) `segmentation`, which is wrapped (`ssa.masks.base.as_mask_source`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssa.errors import SSAError
from ssa.specs.grammar import Grammar

if TYPE_CHECKING:
    from ssa.config import MaskBranchConfig

ENTRY_POINT_GROUP = "ssa.mask_sources"
KINDS = ("sam", "hf", "json", "py", "plugin")
SAM_MODELS = ("vit_h", "vit_l", "vit_b")  # = ssa.masks.sam.SAM_ENCODERS (checked by a test)
ACCEPTED_FORMS = (
    "sam:<vit_h|vit_l|vit_b>[:<checkpoint.pth>] | hf:<hub id or local folder> | "
    "json:<folder of SA-1B JSON> | py:<module or path/to/file.py>:<factory> | "
    "plugin:<entry-point name> | an existing folder (= json:) | an installed plug-in's name"
)


@dataclass(frozen=True)
class MaskSpec:
    """A parsed mask spec. kind: one of `KINDS`; target: SAM model type, hub id or folder, JSON
    folder, module or file, or plug-in name; factory: `py:` only; checkpoint: `sam:` only; flag: the option the
    checkpoint came from (`--masks`, or `--sam-checkpoint` where `spec_from_config` took it from
    there), named in its errors."""

    kind: str
    target: str
    factory: str | None = None
    checkpoint: str | None = None
    flag: str = field(default="--masks", compare=False, repr=False)

    def __str__(self) -> str:
        if self.kind == "py":
            return f"py:{self.target}:{self.factory}"
        if self.kind == "sam" and self.checkpoint is not None:
            return f"sam:{self.target}:{self.checkpoint}"
        return f"{self.kind}:{self.target}"


def _hint(spec: str) -> str:
    bare = spec.partition(":")[2] if ":" in spec else spec
    if bare in SAM_MODELS or spec in SAM_MODELS:
        return f" (segment-anything's SAM? write sam:{bare or spec})"
    if spec.endswith(".pth"):
        return f" (a SAM checkpoint? write sam:vit_h:{spec})"
    if spec.endswith(".py") or ".py:" in spec:
        return f" (a Python factory? write py:{spec})"
    if "/" in spec:
        return f" (a hub id or model folder? write hf:{spec}; SA-1B JSON? write json:{spec})"
    return ""


GRAMMAR = Grammar("--masks", KINDS, ACCEPTED_FORMS, ENTRY_POINT_GROUP, _hint)
_bad = GRAMMAR.bad


def plugin_names() -> set[str]:
    """Names registered under the `ssa.mask_sources` entry-point group."""
    return GRAMMAR.plugins()


def parse_mask_spec(spec: str, plugins: Iterable[str] | None = None) -> MaskSpec:
    """Parse a `--masks` string (`ssa.specs.grammar`); anything malformed or ambiguous raises
    SSAError. plugins: the registered plug-in names (default: the installed entry points)."""
    parsed = GRAMMAR.split(spec, plugins)
    if parsed.kind is None:
        return _parse_bare(parsed.spec, plugins)
    if parsed.kind == "sam":
        model, sep, checkpoint = (part.strip() for part in parsed.target.partition(":"))
        if model not in SAM_MODELS:
            raise _bad(parsed.spec, f"unknown SAM model {model!r}; choose one of "
                                    f"{', '.join(SAM_MODELS)}")
        if sep and not checkpoint:
            raise _bad(parsed.spec, "nothing after the model's ':'; write "
                                    "sam:<model>:<checkpoint.pth>")
        return MaskSpec("sam", model, checkpoint=checkpoint or None)
    return MaskSpec(parsed.kind, parsed.target, parsed.factory)


def _parse_bare(spec: str, plugins: Iterable[str] | None) -> MaskSpec:
    names = plugin_names() if plugins is None else set(plugins)
    folder = Path(spec).expanduser().is_dir()
    if folder and spec in names:
        raise _bad(spec, f"it is both a folder and an installed plug-in; write json:{spec} or "
                         f"plugin:{spec}")
    if folder:
        return MaskSpec("json", spec)
    if spec in names:
        return MaskSpec("plugin", spec)
    raise _bad(spec, f"{spec!r} is neither an existing folder nor a plug-in{_hint(spec)}")


def spec_from_config(cfg: MaskBranchConfig) -> MaskSpec:
    """The mask spec of a run: `cfg.masks` when set, else `sam:<sam_model>[:<sam_checkpoint>]`.

    cfg: anything with `masks`, `sam_model` and `sam_checkpoint` (`ssa.config.MaskBranchConfig`).
    A `sam:` spec without a file takes `sam_checkpoint`; two different files are an error.
    """
    checkpoint = str(cfg.sam_checkpoint) if cfg.sam_checkpoint is not None else None
    if cfg.masks is None:
        parsed = parse_mask_spec(f"sam:{cfg.sam_model}" + (f":{checkpoint}" if checkpoint else ""))
        return MaskSpec("sam", parsed.target, checkpoint=parsed.checkpoint,
                        flag="--sam-checkpoint")
    parsed = parse_mask_spec(str(cfg.masks))
    if parsed.kind == "sam" and checkpoint is not None:
        if parsed.checkpoint is None:
            return MaskSpec("sam", parsed.target, checkpoint=checkpoint, flag="--sam-checkpoint")
        if Path(parsed.checkpoint) != Path(checkpoint):
            raise SSAError(
                f"--masks {cfg.masks} and --sam-checkpoint {checkpoint} name two checkpoints; "
                f"give one of them"
            )
    return parsed


def _as_spec(spec: MaskSpec | str) -> MaskSpec:
    return spec if isinstance(spec, MaskSpec) else parse_mask_spec(spec)


def hf_module() -> Any:
    """`ssa.masks.hf` (transformers' SAM-family models), or an SSAError when it is not there."""
    try:
        from ssa.masks import hf
    except ModuleNotFoundError as exc:
        if exc.name not in ("ssa.masks.hf", "transformers"):
            raise
        raise SSAError(
            f"hf: mask sources need the module {exc.name}, which this installation lacks; "
            f"update ssa (and install transformers), or use --masks sam:<model>"
        ) from None
    return hf


def mask_knobs(spec: MaskSpec | str, impl: str = "fast") -> dict[str, Any] | None:
    """The `--amg` knob table (`{name: ssa.keyvalue.Knob}`) of a source family; None where the
    factory's own signature decides (`py:`, plug-ins); empty for `json:` (nothing to set).

    `hf:` takes `ssa.masks.hf.knobs()` when that module declares it, else the shared vocabulary
    (`ssa.masks.knobs.VOCABULARY`, typed as segment-anything types them) with the model's own
    defaults.
    """
    from ssa.keyvalue import Knob
    from ssa.masks.knobs import VOCABULARY

    parsed = _as_spec(spec)
    if parsed.kind == "sam":
        from ssa.masks.sam import knobs

        return knobs(impl)
    if parsed.kind == "hf":
        module = hf_module()
        if hasattr(module, "knobs"):
            table = module.knobs()
            return {k: v if isinstance(v, Knob) else Knob.from_default(k, v) for k, v in
                    table.items()}
        from ssa.masks.sam import knobs

        stock = knobs("stock")
        return {k: Knob(k, None, stock[k].type, optional=True) for k in VOCABULARY}
    if parsed.kind == "json":
        return {}
    return None


def resolve_mask_settings(
    spec: MaskSpec | str,
    preset: str,
    overrides: Mapping[str, Any] | None = None,
    impl: str = "fast",
) -> dict[str, Any]:
    """The settings a source is built with: for `sam:` every generator keyword (library default,
    then the preset, then `--amg`); for `hf:` the preset's knobs it supports and `--amg` (the
    model's defaults for the rest); for `py:`/plug-ins the `--amg` values as given (the factory
    checks them); for `json:` none (an `--amg` knob is refused). Bad keys or values raise SSAError."""
    from ssa.masks.knobs import resolve_settings

    parsed = _as_spec(spec)
    if parsed.kind == "sam":
        from ssa.masks.sam import AMG_IMPLS, resolve_amg

        if impl not in AMG_IMPLS:
            raise SSAError(f"unknown --amg-impl {impl!r}; choose one of: {', '.join(AMG_IMPLS)}")
        return resolve_amg(preset, dict(overrides or {}), impl)
    if parsed.kind == "json":
        if overrides:  # saved masks have no knob: a typed one is a mistake, not a no-op
            raise SSAError(
                f"--amg {', '.join(sorted(overrides))}: --masks {parsed} reads saved masks, "
                f"which take no --amg knobs; leave --amg out"
            )
        return {}
    table = mask_knobs(parsed, impl)
    if table is None:
        return resolve_settings({}, {}, preset, {}, str(parsed)) | dict(overrides or {})
    return resolve_settings(table, {}, preset, overrides, str(parsed))


def check_mask_source(spec: MaskSpec | str) -> None:
    """The checks that need no model: an explicit SAM checkpoint exists (the official one too
    when downloads are off), a JSON folder exists, the `hf:` module is installed."""
    parsed = _as_spec(spec)
    if parsed.kind == "sam":
        from ssa.masks.sam import check_checkpoint

        check_checkpoint(parsed.target, parsed.checkpoint, parsed.flag)  # downloads come later
    elif parsed.kind == "json" and not Path(parsed.target).expanduser().is_dir():
        raise SSAError(
            f"--masks {parsed} is not a folder; pass the folder of <stem>.json files"
        )
    elif parsed.kind == "hf":
        hf_module()


def prepare_mask_source(
    spec: MaskSpec | str, progress: Callable[[int, int | None], None] | None = None
) -> None:
    """Fetch what a source needs on disk before its ranks load it (once per machine): the
    official SAM checkpoint for `sam:` without a file; nothing for the others."""
    parsed = _as_spec(spec)
    if parsed.kind == "sam":
        from ssa.masks.sam import ensure_checkpoint

        ensure_checkpoint(parsed.target, parsed.checkpoint, progress, parsed.flag)


def _factory(parsed: MaskSpec) -> tuple[Any, str]:
    from ssa.plugins import load_entry_point, load_py_factory

    if parsed.kind == "py":
        return load_py_factory(parsed.target, parsed.factory or ""), f"mask source {parsed}"
    return load_entry_point(ENTRY_POINT_GROUP, parsed.target), f"plug-in {parsed.target!r}"


def load_mask_source(
    spec: MaskSpec | str,
    device: str,
    settings: Mapping[str, Any],
    progress: Callable[[int, int | None], None] | None = None,
    impl: str = "fast",
    precision: str = "fp32",
    compile: bool = False,
) -> Any:
    """Build the `MaskSource` a spec names. settings: from `resolve_mask_settings`; progress:
    `(bytes_done, bytes_total)` of a checkpoint download; impl: `sam:`'s `--amg-impl`;
    precision/compile: `--precision`/`--compile` (`ssa.precision`) for `sam:` (fast generator;
    `--amg precision=...` wins) and `hf:` (precision); `json:`, `py:` and plug-ins make their
    own masks (precision does not reach them; `--compile` is refused)."""
    from ssa.masks.base import as_mask_source
    from ssa.plugins import call_factory

    parsed = _as_spec(spec)
    if parsed.kind == "sam":
        from ssa.masks.sam import load_sam_source

        settings = dict(settings)
        if precision != "fp32" or compile:
            if impl != "fast":
                raise SSAError(f"--precision {precision} / --compile need --amg-impl fast "
                               f"(the stock generator runs as segment-anything ships it)")
            settings.setdefault("precision", precision)
            settings.setdefault("compile", compile)
        return load_sam_source(parsed.target, parsed.checkpoint, device, settings, impl,
                               progress, parsed.flag)
    if parsed.kind == "hf":
        extra: dict[str, Any] = {"precision": precision} if precision != "fp32" else {}
        if compile:
            extra["compile"] = True  # the shared-image decoder's networks (ssa.masks.hf)
        return hf_module().load_hf_mask_source(parsed.target, device, dict(settings), **extra)
    if compile:
        raise SSAError(f"--compile applies to sam: and hf: mask sources; {parsed} makes its "
                       f"own masks: leave --compile off")
    if parsed.kind == "json":
        from ssa.masks.sa1b import JsonMasks

        return JsonMasks(parsed.target)
    factory, where = _factory(parsed)
    return as_mask_source(call_factory(factory, where, device, settings, "--amg"), where)


def load_prompt_source(
    spec: MaskSpec | str,
    device: str,
    progress: Callable[[int, int | None], None] | None = None,
    precision: str = "fp32",
    compile: bool = False,
) -> Any:
    """Build the `PromptableMaskSource` a spec names (`ssa predict`): `sam:` (SamPredictor),
    `hf:` (`ssa.masks.hf.load_hf_prompt_source`), or a factory whose object has `set_image` and
    `predict`. precision/compile as for `load_mask_source` (`--compile`: `sam:` only)."""
    from ssa.plugins import call_factory

    parsed = _as_spec(spec)
    if compile and parsed.kind != "sam":
        raise SSAError(f"--compile applies to sam: mask sources, not {parsed}; leave it off")
    if parsed.kind == "sam":
        from ssa.masks.sam import load_sam_prompt_source

        return load_sam_prompt_source(parsed.target, parsed.checkpoint, device, progress,
                                      precision, compile, parsed.flag)
    if parsed.kind == "json":
        raise SSAError(f"--masks {parsed}: JSON masks cannot answer prompts; use sam: or hf:")
    if parsed.kind == "hf":
        module = hf_module()
        if not hasattr(module, "load_hf_prompt_source"):
            raise SSAError(f"--masks {parsed}: this ssa's hf: source takes no prompts; use sam:")
        return module.load_hf_prompt_source(parsed.target, device, precision)
    if precision != "fp32":
        raise SSAError(f"--precision {precision} applies to sam: and hf: mask sources, not "
                       f"{parsed}; pass --precision fp32")
    factory, where = _factory(parsed)
    source = call_factory(factory, where, device, {}, "--amg")
    if not all(callable(getattr(source, m, None)) for m in ("set_image", "predict")):
        raise SSAError(
            f"{where} gives a {type(source).__name__} without set_image/predict; prompts need a "
            f"PromptableMaskSource (ssa.masks.base)"
        )
    return source
