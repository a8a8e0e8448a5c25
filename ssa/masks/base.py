"""The mask branch's contract: one protocol every mask source implements.

A mask source turns one image into class-agnostic masks:

    generate(image: HWC uint8 RGB numpy, *, path: pathlib.Path | None = None) -> MaskResult

`path` is the image's path relative to the dataset's image folder (sources that read files, such
as SA-1B JSON, need it; others ignore it). Records follow segment-anything's automatic mask
generator: `segmentation` (COCO RLE, `counts` as str), `area` (pixels), `bbox` (`XYWH`),
`predicted_iou`, `point_coords` (`[[x, y]]`), `stability_score`, `crop_box` (`XYWH`); a source
may add fields, and every field is kept in the output JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass
class MaskResult:
    """The masks of one image.

    records: one SA-1B record per mask, `segmentation` as COCO RLE (`counts` str);
    masks: `(N, H, W) bool` tensor on the source's device, in record order. It may be a
    non-contiguous view (the fast generator's column-major stack); `ssa.voting` flattens
    pixels in storage order, so never `.reshape` it.
    """

    records: list[dict[str, Any]]
    masks: torch.Tensor


@runtime_checkable
class MaskSource(Protocol):
    """Anything that gives the masks of an image (see the module docstring)."""

    def generate(self, image: np.ndarray, *, path: Path | None = None) -> MaskResult: ...
