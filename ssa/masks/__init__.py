"""The mask branch: the `MaskSource` contract (`ssa.masks.base`) and its sources.

`ssa.masks.sam` holds segment-anything's SAM (checkpoints, the automatic generator's knobs and
presets) and SA-1B JSON masks; the names below are re-exported for callers of the former
`ssa.masks` module.
"""

from ssa.masks.base import MaskResult, MaskSource
from ssa.masks.sam import (
    AMG_IMPLS,
    AMG_PRESETS,
    CHECKPOINT_FILES,
    CHECKPOINT_URL,
    DEFAULT_CKP_DIR,
    SAM_ENCODERS,
    EncoderConfig,
    JsonMasks,
    MaskGenerator,
    amg_knobs,
    build_sam_from_config,
    default_checkpoint,
    download_checkpoint,
    ensure_checkpoint,
    infer_encoder_config,
    load_sam,
    parse_amg,
    read_sa1b_json,
    resolve_amg,
)

__all__ = [
    "AMG_IMPLS", "AMG_PRESETS", "CHECKPOINT_FILES", "CHECKPOINT_URL", "DEFAULT_CKP_DIR",
    "SAM_ENCODERS", "EncoderConfig", "JsonMasks", "MaskGenerator", "MaskResult", "MaskSource",
    "amg_knobs", "build_sam_from_config", "default_checkpoint", "download_checkpoint",
    "ensure_checkpoint", "infer_encoder_config", "load_sam", "parse_amg", "read_sa1b_json",
    "resolve_amg",
]
