"""Semantic branch: protocol, Hugging Face adapters, precomputed labels, spec parsing, plug-ins."""

from ssa.segmentors.base import (
    BranchOutput,
    Segmentor,
    accepts_path,
    check_num_classes,
    class_names,
)
from ssa.segmentors.spec import (
    ACCEPTED_FORMS,
    SHORT_NAMES,
    SegmentorSpec,
    load_segmentor,
    parse_segmentor_args,
    parse_spec,
)

__all__ = [
    "ACCEPTED_FORMS",
    "SHORT_NAMES",
    "BranchOutput",
    "Segmentor",
    "SegmentorSpec",
    "accepts_path",
    "check_num_classes",
    "class_names",
    "load_segmentor",
    "parse_segmentor_args",
    "parse_spec",
]
