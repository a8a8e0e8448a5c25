"""One dataclass per run, filled from defaults < `--config` YAML < command-line flags."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssa.errors import SSAError


@dataclass
class MaskBranchConfig:
    """The mask branch's fields, shared by `RunConfig` and the engine's `EngineConfig`.

    masks: a mask spec (`ssa.masks.spec`: `sam:`, `hf:`, `json:`, `py:`, a plug-in, or a folder
    of SA-1B JSON); None means `sam:<sam_model>[:<sam_checkpoint>]`. amg: `--amg` knobs, checked
    against the source's table when the run starts; amg_preset None: the dataset's preset.
    """

    sam_model: str = "vit_h"
    sam_checkpoint: Path | None = None
    amg_preset: str | None = None
    amg: dict[str, Any] = field(default_factory=dict)
    amg_impl: str = "fast"  # "fast" (ssa.masks.fast_amg) | "stock" (SamAutomaticMaskGenerator)
    masks: str | None = None


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
    prompt_batch: int | None = None  # SAM 3: phrases per forward pass (None: its default)
    vote: str = "hard"
    min_vote_share: float = 0.0
    device: str | None = None
    limit: int | None = None
    top_k: int = 3
    save_branch: bool = False
    save_vis: bool = False
    overwrite: bool = False  # redo images that are done (their JSON exists and parses)
    max_pixels: int | None = None  # label larger images downsized to this many pixels
    evaluate: bool = False  # `--eval`: score the outputs once every image is done
    gt_dir: Path | None = None  # ground truth of `folder` datasets, for `evaluate`

    def resolved_device(self) -> str:
        import torch

        if self.device is None:
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise SSAError(f"--device {self.device}: CUDA is not available here; pass --device cpu")
        return self.device


_PATH_FIELDS = {
    "data_dir", "out_dir", "sam_checkpoint", "classes", "label_map", "prompts", "gt_dir"
}
_DICT_FIELDS = ("amg", "segmentor_args")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(RunConfig)]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config file: a mapping of RunConfig fields (dashes or underscores)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SSAError(f"--config {path} does not exist; pass a YAML file such as configs/ade20k.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SSAError(f"--config {path} is not valid YAML ({exc}); fix the file") from None
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
    for key in _PATH_FIELDS & merged.keys():
        merged[key] = Path(merged[key])
    if "masks" in merged:
        merged["masks"] = str(merged["masks"])  # a spec; a YAML/CLI Path is a folder
    return RunConfig(**merged, **dicts)
