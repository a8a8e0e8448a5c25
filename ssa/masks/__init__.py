"""The mask branch: the `MaskSource` contract (`ssa.masks.base`), spec strings and loaders
(`ssa.masks.spec`), one module per source family (`sam` for segment-anything, `sa1b` for SA-1B
JSON, `hf` for transformers' SAM-family models), the knob vocabulary (`knobs`) and the fast
post-processing (`fast_amg`, `sam_speedups`).

The names below are re-exported for callers of the former `ssa.masks` module.
"""

from ssa.masks.base import (
    MaskResult,
    MaskSource,
    PromptableMaskSource,
    as_mask_source,
    result_from_records,
)
from ssa.masks.knobs import AMG_PRESETS, VOCABULARY
from ssa.masks.sa1b import JsonMasks, read_sa1b_json
from ssa.masks.sam import (
    AMG_IMPLS,
    CHECKPOINT_FILES,
    CHECKPOINT_URL,
    DEFAULT_CKP_DIR,
    SAM_ENCODERS,
    EncoderConfig,
    SamMaskSource,
    SamPromptSource,
    amg_knobs,
    build_sam_from_config,
    default_checkpoint,
    download_checkpoint,
    ensure_checkpoint,
    infer_encoder_config,
    load_sam,
    parse_amg,
    resolve_amg,
)
from ssa.masks.spec import (
    ENTRY_POINT_GROUP,
    MaskSpec,
    load_mask_source,
    load_prompt_source,
    mask_knobs,
    parse_mask_spec,
    resolve_mask_settings,
    spec_from_config,
)

__all__ = [
    "AMG_IMPLS", "AMG_PRESETS", "CHECKPOINT_FILES", "CHECKPOINT_URL", "DEFAULT_CKP_DIR",
    "ENTRY_POINT_GROUP", "SAM_ENCODERS", "VOCABULARY", "EncoderConfig", "JsonMasks",
    "MaskResult", "MaskSource", "MaskSpec", "PromptableMaskSource",
    "SamMaskSource", "SamPromptSource", "amg_knobs", "as_mask_source", "build_sam_from_config",
    "default_checkpoint", "download_checkpoint", "ensure_checkpoint", "infer_encoder_config",
    "load_mask_source", "load_prompt_source", "load_sam", "mask_knobs", "parse_amg",
    "parse_mask_spec", "read_sa1b_json", "resolve_amg", "resolve_mask_settings",
    "result_from_records", "spec_from_config",
]
