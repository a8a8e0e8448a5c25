"""The mask branch: the `MaskSource` contract (`ssa.masks.base`), spec strings and loaders
(`ssa.specs.masks`), one module per source family (`sam` for segment-anything, `sa1b` for SA-1B
JSON, `hf` for transformers' SAM-family models), the knob vocabulary (`knobs`) and the fast
post-processing (`fast_amg`, `sam_speedups`).

The names below are re-exported for callers of the former `ssa.masks` module; they load on
first use, so that spec parsing needs no torch.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "MaskResult": "base",
    "MaskSource": "base",
    "PromptableMaskSource": "base",
    "as_mask_source": "base",
    "result_from_records": "base",
    "AMG_PRESETS": "knobs",
    "VOCABULARY": "knobs",
    "JsonMasks": "sa1b",
    "read_sa1b_json": "sa1b",
    "AMG_IMPLS": "sam",
    "CHECKPOINT_FILES": "sam",
    "CHECKPOINT_URL": "sam",
    "DEFAULT_CKP_DIR": "sam",
    "SAM_ENCODERS": "sam",
    "EncoderConfig": "sam",
    "SamMaskSource": "sam",
    "SamPromptSource": "sam",
    "amg_knobs": "sam",
    "build_sam_from_config": "sam",
    "default_checkpoint": "sam",
    "download_checkpoint": "sam",
    "ensure_checkpoint": "sam",
    "infer_encoder_config": "sam",
    "load_sam": "sam",
    "parse_amg": "sam",
    "resolve_amg": "sam",
}

__all__ = [
    "AMG_IMPLS", "AMG_PRESETS", "CHECKPOINT_FILES", "CHECKPOINT_URL", "DEFAULT_CKP_DIR", "SAM_ENCODERS", "VOCABULARY", "EncoderConfig", "JsonMasks",
    "MaskResult", "MaskSource", "PromptableMaskSource",
    "SamMaskSource", "SamPromptSource", "amg_knobs", "as_mask_source", "build_sam_from_config",
    "default_checkpoint", "download_checkpoint", "ensure_checkpoint", "infer_encoder_config", "load_sam", "parse_amg", "read_sa1b_json", "resolve_amg",
    "result_from_records",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'ssa.masks' has no attribute {name!r}")
    return getattr(import_module(f"ssa.masks.{_HOMES[name]}"), name)
