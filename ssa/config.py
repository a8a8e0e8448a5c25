"""One dataclass per run, filled from defaults < `--config` YAML < command-line flags.

The merged values are validated against the dataclass's own type hints by pydantic
(`validated`): numbers from strings ("3") are parsed, booleans from the words pydantic knows
("false", "no", "off", "0" are False; "true", "yes", "on", "1" True; anything else is refused),
and a wrong type or a value out of range is one SSAError line naming the key, the value and
what it should be. Constraints live in the annotations (`PositiveInt`, `Share`), so a field added
later with a plain type hint is checked too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field

from ssa.errors import SSAError
from ssa.precision import Precision

C = TypeVar("C")

VOTE_POLICIES = ("hard", "soft")  # `ssa.voting`'s policies (here so checks need no torch)


def _not_bool(value: Any) -> Any:
    # pydantic's lax mode reads True as 1; `limit: yes` is a mistake, not one image.
    if isinstance(value, bool):
        raise ValueError("a number, not a boolean, is needed")  # noqa: TRY004 - pydantic wants it
    return value


PositiveInt = Annotated[int, BeforeValidator(_not_bool), Field(ge=1)]
Share = Annotated[float, BeforeValidator(_not_bool), Field(ge=0.0, le=1.0)]


@dataclass
class MaskBranchConfig:
    """The mask branch's fields, shared by `RunConfig` and the engine's `EngineConfig`.

    masks: a mask spec (`ssa.specs.masks`: `sam:`, `hf:`, `json:`, `py:`, a plug-in, or a folder
    of SA-1B JSON); None means `sam:<sam_model>[:<sam_checkpoint>]`. amg: `--amg` knobs, checked
    against the source's table when the run starts; amg_preset None: the dataset's preset.
    """

    sam_model: str = "vit_h"
    sam_checkpoint: Path | None = None
    amg_preset: str | None = None
    amg: dict[str, Any] = field(default_factory=dict)
    amg_impl: str = "fast"  # "fast" (ssa.masks.fast_amg) | "stock" (SamAutomaticMaskGenerator)
    masks: str | None = None
    # The networks of every branch (ssa.precision): fp32 exact; bf16/fp16 autocast / model dtype.
    precision: Precision = "fp32"
    compile: bool = False  # torch.compile the mask branch's encoder and decoder


@dataclass
class RunConfig(MaskBranchConfig):
    """Everything `ssa run` needs; `None` means "the dataset's default"."""

    dataset: str = "folder"
    data_dir: Path | None = None
    out_dir: Path | None = None
    split: str | None = None
    segmentor: str | None = None
    segmentor_args: dict[str, Any] = field(default_factory=dict)
    classes: Path | None = None
    label_map: Path | None = None
    prompts: Path | None = None  # SAM 3: YAML/JSON {class name: phrase or [phrases]}
    prompt_batch: PositiveInt | None = None  # SAM 3: phrases per forward pass (None: its default)
    vote: str = "hard"
    min_vote_share: Share = 0.0
    device: str | None = None
    limit: PositiveInt | None = None
    top_k: PositiveInt = 3
    save_branch: bool = False
    save_vis: bool = False
    overwrite: bool = False  # redo images that are done (their JSON exists and parses)
    max_pixels: PositiveInt | None = None  # label larger images downsized to this many pixels
    evaluate: bool = False  # `--eval`: score the outputs once every image is done
    gt_dir: Path | None = None  # ground truth of `folder` datasets, for `evaluate`
    world_size: PositiveInt | None = None  # `--world-size`: workers on this machine
    log_every: float | None = None  # seconds between progress lines off a terminal
    report: bool = False  # `--report`: the HTML report of the out-dir once done

    def resolved_device(self) -> str:
        if self.device is not None and not self.device.startswith("cuda"):
            return self.device  # nothing to ask torch (a CPU run plans without importing it)
        import torch

        if self.device is None:
            return "cuda" if torch.cuda.is_available() else "cpu"
        if not torch.cuda.is_available():
            raise SSAError(f"--device {self.device}: CUDA is not available here; pass --device cpu")
        return self.device


@dataclass
class EngineConfig(MaskBranchConfig):
    """Everything `ssa engine` needs. The mask branch's fields are `MaskBranchConfig`'s
    (amg_preset None: "default"). `models` maps roles (see `ssa.engine.models.ROLES`) to hub
    ids or folders; missing roles take the (light) defaults. Build it with
    `ssa.config.validated(EngineConfig, values)` to have every value type-checked."""

    data_dir: Path | None = None
    out_dir: Path | None = None
    models: dict[str, str | None] = field(default_factory=dict)
    light: bool = False
    top_k: PositiveInt = 3
    batch_size: PositiveInt = 16
    save_vis: bool = False
    device: str | None = None
    limit: PositiveInt | None = None
    use_spacy: bool = True

    def resolved_device(self) -> str:
        return RunConfig(device=self.device).resolved_device()


_DICT_FIELDS = ("amg", "segmentor_args")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file: a mapping of RunConfig fields (dashes or underscores).

    Read by `ssa.userfiles.read_user_yaml`: a file over its size cap, a YAML alias or a key given
    twice is refused with one line naming the key."""
    from ssa.userfiles import read_user_yaml

    path = Path(path)
    if not path.is_file():
        raise SSAError(f"--config {path} does not exist; pass a YAML file such as configs/ade20k.yaml")
    data = read_user_yaml(path, "--config")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SSAError(f"--config {path} must hold a mapping of option: value; fix the file")
    out = {str(k).replace("-", "_"): v for k, v in data.items()}
    valid = field_names()
    for key in out:
        if key not in valid:
            raise SSAError(f"unknown key {key!r} in --config {path}; valid keys: {', '.join(valid)}")
    return out


def build_config(file_values: dict[str, Any] | None, cli_values: dict[str, Any]) -> RunConfig:
    """Defaults, then the config file, then command-line values that were given (not None).

    `amg` and `segmentor_args` dictionaries merge key by key, command line on top.
    """
    merged: dict[str, Any] = {}
    dicts: dict[str, dict[str, Any]] = {name: {} for name in _DICT_FIELDS}
    for source in (file_values or {}, cli_values):
        for key, value in source.items():
            if value is None:
                continue
            if key in dicts:
                if not isinstance(value, dict):
                    raise SSAError(f"{key} must be a mapping of name: value, not {value!r}")
                dicts[key].update(value)
            else:
                merged[key] = value
    if merged.get("masks") is not None:
        merged["masks"] = str(merged["masks"])  # a spec; a YAML/CLI Path is a folder
    return validated(RunConfig, {**merged, **dicts})


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _expected(cls: type, key: str) -> str:
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == key:
            hint = str(f.type)
            for alias, plain in (("PositiveInt", "int >= 1"), ("Share", "float in [0, 1]"),
                                 ("Precision", "fp32 | bf16 | fp16")):
                hint = hint.replace(alias, plain)
            return hint
    return "?"


def validated(cls: type[C], values: dict[str, Any] | None = None, /, **kwargs: Any) -> C:
    """`cls(**values, **kwargs)` for a config dataclass (RunConfig, EngineConfig), every value checked and
    converted by pydantic against the field's type hint ("3" -> 3, "no" -> False, "a/b" ->
    Path); unknown keys and bad values raise one SSAError line naming key, value and type."""
    from pydantic import TypeAdapter, ValidationError

    values = {**(values or {}), **kwargs}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in values:
        if key not in names:
            raise SSAError(f"unknown config key {key!r}; valid keys: {', '.join(sorted(names))}")
    try:
        return TypeAdapter(cls).validate_python(values)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "?"
            detail = ".".join(str(p) for p in err["loc"][1:])
            where = f"{key}{'.' + detail if detail else ''}"
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(
                f"{_flag(key)} {err.get('input')!r} (config key {where}): {msg}, expected "
                f"{_expected(cls, key)}"
            )
        raise SSAError("bad value " + "; ".join(parts) + "; fix the flag or --config") from None
