"""Segmentor spec strings (`hf:<hub id or folder>`), parsed strictly in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ssa.errors import SSAError

ACCEPTED_FORMS = "hf:<hub id or local folder>"


@dataclass(frozen=True)
class SegmentorSpec:
    kind: str
    target: str


def parse_spec(spec: str) -> SegmentorSpec:
    kind, sep, target = spec.partition(":")
    if not sep or not target.strip() or kind != "hf":
        raise SSAError(f"cannot parse --segmentor {spec!r}; accepted forms: {ACCEPTED_FORMS}")
    return SegmentorSpec(kind=kind, target=target.strip())


def load_segmentor(spec: str, device: str = "cpu", **options: Any):
    """Build the segmentor a spec string names."""
    parsed = parse_spec(spec)
    from ssa.segmentors.hf import HFSegmentor

    return HFSegmentor(parsed.target, device=device, **options)
