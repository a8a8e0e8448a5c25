"""What a run runs, in one line for its start: the mask source (spec, checkpoint file, generator,
preset and `--amg` values), the segmentor and the device.

Reads the plan only (no model, no torch import), so the line comes before any model loads and a
download that follows is understood.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssa.datasets import get_dataset


def describe_masks(masks: Any, preset: str | None = None,
                   overrides: Mapping[str, Any] | None = None) -> str:
    """`sam:vit_b:ckp/x.pth (fast generator, preset keep-all, points_per_side=8)`, or
    `sam:vit_h (ckp/sam_vit_h_4b8939.pth, ...)` without a file; `json:<dir>` as it is.

    masks: a `ssa.plan.MaskBranch` (`spec`, `impl`); preset: the `--amg-preset` in force;
    overrides: the `--amg` values as given.
    """
    spec = masks.spec
    details = []
    if spec.kind == "sam":
        if spec.checkpoint is None:
            from ssa.masks.sam import default_checkpoint

            details.append(str(default_checkpoint(spec.target)))
        details.append(f"{masks.impl} generator")
    if spec.kind != "json":  # a JSON folder's masks are made already: no knob reaches them
        if preset:
            details.append(f"preset {preset}")
        details += [f"{k}={v}" for k, v in (overrides or {}).items()]
    return f"{spec}" + (f" ({', '.join(details)})" if details else "")


def describe_run(plan: Any, world_size: int = 1) -> str:
    """`masks sam:vit_b:ckp/x.pth (fast generator, preset keep-all), segmentor hf:ckp/seg,
    device cpu`: the mask source, the segmentor and the device of a `ssa.plan.RunPlan` (or an
    `EnginePlan`: no segmentor), with the worker count when there are several. The preset is
    the plan's recorded `amg_preset`, else the dataset's; parts a plan lacks are left out."""
    settings = getattr(plan, "settings", None) or {}
    parts = []
    masks = getattr(plan, "masks", None)
    if masks is not None and hasattr(masks, "spec"):
        images = getattr(plan, "images", None)
        dataset = getattr(images, "dataset", None) if hasattr(plan, "semantic") else None
        preset = settings.get("amg_preset") or (
            get_dataset(dataset).default_amg_preset if dataset else "default")
        parts.append(f"masks {describe_masks(masks, preset, settings.get('amg'))}")
    semantic = getattr(plan, "semantic", None)
    if semantic is not None:
        parts.append(f"segmentor {semantic.spec}")
    device = str(plan.device)
    if world_size > 1:  # rank 0's own cuda:0 would read as every worker's
        device = f"{device.split(':')[0]} ({world_size} workers)"
    parts.append(f"device {device}")
    return ", ".join(parts)
