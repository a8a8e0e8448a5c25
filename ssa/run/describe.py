"""What a run runs, in one line for its start: the mask source (spec, checkpoint file, generator,
preset and `--amg` values), the segmentor and the device.

Reads the config only (no model, no torch import), so the line comes before any model loads and
a download that follows is understood.
"""

from __future__ import annotations

from typing import Any

from ssa.datasets import get_dataset
from ssa.errors import SSAError


def describe_masks(cfg: Any, default_preset: str = "default") -> str:
    """`sam:vit_b:ckp/x.pth (fast generator, preset keep-all, points_per_side=8)`, or
    `sam:vit_h (ckp/sam_vit_h_4b8939.pth, ...)` without a file; `json:<dir>` as it is.

    cfg: a `MaskBranchConfig` (`masks`, `sam_model`, `sam_checkpoint`, `amg_preset`, `amg`,
    `amg_impl`); default_preset: the preset when `cfg.amg_preset` is None (the dataset's).
    """
    from ssa.specs.masks import spec_from_config

    spec = spec_from_config(cfg)
    details = []
    if spec.kind == "sam":
        if spec.checkpoint is None:
            from ssa.masks.sam import default_checkpoint

            details.append(str(default_checkpoint(spec.target)))
        details.append(f"{cfg.amg_impl} generator")
    if spec.kind != "json":  # a JSON folder's masks are made already: no knob reaches them
        details.append(f"preset {cfg.amg_preset or default_preset}")
        details += [f"{k}={v}" for k, v in (cfg.amg or {}).items()]
    return f"{spec}" + (f" ({', '.join(details)})" if details else "")


def describe_run(cfg: Any, world_size: int = 1) -> str:
    """`masks sam:vit_b:ckp/x.pth (fast generator, preset keep-all), segmentor hf:ckp/seg,
    device cpu`: the run's mask source, segmentor (the dataset's default where none is given;
    omitted for configs without one, as the engine's) and device (`cfg.device`, else
    `cfg.resolved_device()`), with the worker count when there are several. Parts a config
    lacks are left out (a config with only `resolved_device()` gives `device cpu`)."""
    dataset = get_dataset(getattr(cfg, "dataset", "folder"))
    preset = dataset.default_amg_preset if hasattr(cfg, "dataset") else "default"
    parts = []
    if hasattr(cfg, "masks") and hasattr(cfg, "sam_model"):  # any MaskBranchConfig
        try:
            parts.append(f"masks {describe_masks(cfg, preset)}")
        except SSAError:  # a bad spec: the run's own checks say so, in their words
            parts.append(f"masks {cfg.masks}")
    if hasattr(cfg, "segmentor"):
        parts.append(f"segmentor {cfg.segmentor or dataset.default_segmentor or '(none)'}")
    device = getattr(cfg, "device", None) or cfg.resolved_device()
    if world_size > 1:  # rank 0's own cuda:0 would read as every worker's
        device = f"{device.split(':')[0]} ({world_size} workers)"
    parts.append(f"device {device}")
    return ", ".join(parts)
