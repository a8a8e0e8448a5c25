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
from ssa.words import did_you_mean

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

KEEP_ALL = "keep-all"

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
    # Every candidate kept: no predicted-IoU or stability filter, no suppression of overlapping
    # boxes. For random or untrained weights (tiny test models, `scripts/tiny_models.py`), whose
    # masks the default filters remove every one of.
    KEEP_ALL: {
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
        "box_nms_thresh": 1.0,
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
        raise SSAError(f"unknown --amg-preset {preset!r}{did_you_mean(preset, AMG_PRESETS)}; "
                       f"choose one of: {', '.join(AMG_PRESETS)}")
    settings = dict(defaults)
    settings.update({k: v for k, v in AMG_PRESETS[preset].items() if k in table})
    settings.update(check_knobs(overrides or {}, table, "--amg", where))
    return settings


# What turns a filter off, by the knob that sets it (the fast generators' `Stats.dropped` keys).
FILTERS_OFF: dict[str, Any] = {
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "box_nms_thresh": 1.0,
    "crop_nms_thresh": 1.0,
    "min_mask_region_area": 0,
}


def _settings(knobs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in knobs.items())


def no_masks_message(filters: Mapping[str, int]) -> str:
    """Why a run kept no mask, as one line: of the generator's candidates, every filter that
    removed some, with its count, in the order they ran (`Stats.dropped`, summed over the
    images: `{"candidates": n, "<knob>": removed, ...}`), the filters left with none to judge,
    and what keeps the candidates: `--amg-preset keep-all`, plus `--amg KEY=VALUE` for a
    filter it leaves on. Without counts (a source that does not count, e.g. the stock
    generator) the preset is the hint."""
    keep_all = AMG_PRESETS[KEEP_ALL]
    preset = f"--amg-preset {KEEP_ALL} keeps every candidate ({_settings(keep_all)})"
    candidates = int(filters.get("candidates", 0))
    steps = [(k, int(v)) for k, v in filters.items() if k != "candidates"]
    if not candidates and not any(v for _, v in steps):
        return (f"no image got a mask and the mask source does not say why; for random or "
                f"untrained weights, {preset}; else check the mask source")
    removed = [(k, v) for k, v in steps if v]
    if not removed:  # hf: sources count candidates, not each filter's share
        return (f"no image got a mask: the filters removed all {candidates} candidates (the "
                f"source does not count each one's share); for random or untrained weights, "
                f"{preset}")
    last = max(i for i, (_, v) in enumerate(steps) if v)
    idle = [k for k, v in steps[last + 1:] if not v and k in FILTERS_OFF]
    parts = [f"{k} removed {v}" if i == 0 else f"{k} {v}" for i, (k, v) in enumerate(removed)]
    text = f"no image got a mask: of {candidates} candidates, {', '.join(parts)}"
    if idle:
        text += f" ({' and '.join(idle)} then had none to judge)"
    extra = {k: FILTERS_OFF[k] for k, _ in removed if k in FILTERS_OFF and k not in keep_all}
    also = f", and --amg {' --amg '.join(f'{k}={v}' for k, v in extra.items())}" if extra else ""
    return f"{text}; for random or untrained weights, {preset}{also}"
