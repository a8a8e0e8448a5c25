"""Semantic branch: the segmentor protocol, Hugging Face adapters and spec parsing."""

from ssa.segmentors.base import BranchOutput, Segmentor, check_num_classes, class_names
from ssa.segmentors.spec import load_segmentor, parse_spec

__all__ = [
    "BranchOutput",
    "Segmentor",
    "check_num_classes",
    "class_names",
    "load_segmentor",
    "parse_spec",
]
