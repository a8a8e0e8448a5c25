"""What the fast generators count per image: candidates, what each filter removed, seconds per
stage (`Stats`; read by benchmarks and by the zero-mask warning)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Stats:
    """Counters and seconds of the last `generate` call (per-stage breakdown for benchmarks)."""

    candidates: int = 0
    exact_fallback: int = 0
    kept: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    # candidates each filter removed, by the knob that sets it (pred_iou_thresh, ...)
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, knob: str, before: int, after: int) -> None:
        self.dropped[knob] = self.dropped.get(knob, 0) + before - after

    def add(self, stage: str, start: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - start
        return now
