"""One vocabulary of automatic-generation knobs for every mask source, and the presets.

The names are segment-anything's `SamAutomaticMaskGenerator` keywords (`VOCABULARY`). Each
source family declares the knobs it supports with its own defaults (`knobs()` in its module:
`ssa.masks.sam.knobs`, `ssa.masks.hf.knobs`); `--amg KEY=VALUE` is checked against that table,
so a typo lists the valid keys of the source in use. A preset sets vocabulary knobs; a family
takes those it supports.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ssa.errors import SSAError
from ssa.keyvalue import Knob, check_knobs

VOCABULARY = (
    "points_per_side",  # grid of point prompts per image side (crop layer 0)
    "points_per_batch",  # prompts per decoder call
    "pred_iou_thresh",  # keep masks whose predicted IoU is at least this
    "stability_score_thresh",  # keep masks whose stability score is at least this
    "stability_score_offset",  # logit offset of the stability score
    "box_nms_thresh",  # box IoU of non-maximum suppression within a crop
    "crop_n_layers",  # extra layers of image crops
    "crop_nms_thresh",  # box IoU of the suppression across crops
    "crop_overlap_ratio",  # overlap of neighbouring crops
    "crop_n_points_downscale_factor",  # points per side shrink by this per crop layer
    "min_mask_region_area",  # small holes and islands below this area are removed
)

# The original Semantic Segment Anything settings (its `main_ssa.py`).
AMG_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "ssa": {
        "points_per_side": 64,
        "pred_iou_thresh": 0.86,
        "stability_score_thresh": 0.92,
        "crop_n_layers": 1,
        "crop_n_points_downscale_factor": 2,
        "min_mask_region_area": 100,
    },
}


def resolve_settings(
    table: Mapping[str, Knob],
    defaults: Mapping[str, Any],
    preset: str,
    overrides: Mapping[str, Any] | None,
    where: str,
) -> dict[str, Any]:
    """`defaults`, then the preset's knobs that `table` holds, then the overrides (checked
    against `table`: an unknown key or a value of the wrong type is an SSAError)."""
    if preset not in AMG_PRESETS:
        raise SSAError(f"unknown --amg-preset {preset!r}; choose one of: {', '.join(AMG_PRESETS)}")
    settings = dict(defaults)
    settings.update({k: v for k, v in AMG_PRESETS[preset].items() if k in table})
    settings.update(check_knobs(overrides or {}, table, "--amg", where))
    return settings
