"""Semantic branch: protocol, Hugging Face adapters, precomputed labels, spec parsing, plug-ins.

The names below load on first use, so `ssa.specs.segmentors` (spec parsing) needs no torch.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "BranchOutput": "base", "Segmentor": "base", "accepts_path": "base",
    "check_num_classes": "base", "class_names": "base",
}

__all__ = [
    "BranchOutput", "Segmentor", "accepts_path", "check_num_classes", "class_names",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'ssa.segmentors' has no attribute {name!r}")
    return getattr(import_module(f"ssa.segmentors.{_HOMES[name]}"), name)
