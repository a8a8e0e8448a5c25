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
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # torch loads with the models, not with spec checks
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


@runtime_checkable
class PromptableMaskSource(Protocol):
    """A mask source that answers prompts on one image at a time (`ssa predict`).

    set_image(image): `HWC uint8 RGB`, encoded once; predict(points `(N, 2)` XY pixels or None,
    labels `(N,)` 1 = foreground / 0 = background or None, box `(4,)` XYXY pixels or None,
    multimask) -> the model's masks for that prompt (three with `multimask` for SAM-family
    models) in the model's output order; records carry at least `segmentation` (COCO RLE),
    `area` and `predicted_iou`.
    """

    def set_image(self, image: np.ndarray) -> None: ...

    def predict(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        multimask: bool = True,
    ) -> MaskResult: ...


def mask_bbox(mask: np.ndarray) -> list[int]:
    """`XYWH` box of an `HW bool` mask, width and height counting pixels (zeros when empty);
    the corners are segment-anything's `batched_mask_to_box`."""
    import torch
    from segment_anything.utils.amg import batched_mask_to_box

    mask = torch.from_numpy(np.ascontiguousarray(mask, dtype=bool))
    if not bool(mask.any()):
        return [0, 0, 0, 0]
    x0, y0, x1, y1 = batched_mask_to_box(mask).tolist()
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def result_from_records(records: list[dict[str, Any]], size: tuple[int, int]) -> MaskResult:
    """A `MaskResult` from records whose `segmentation` is `HW bool` or COCO RLE (mixed is fine).

    size: the image's `(H, W)`; a mask of another size is an SSAError. Every field is kept;
    `segmentation` becomes COCO RLE (`counts` str, encoded once), `area` and `bbox` (`XYWH`) are
    computed where a record lacks them. The stack is a CPU tensor.
    """
    import torch

    from ssa import io
    from ssa.errors import SSAError

    height, width = size
    planes = []
    for i, record in enumerate(records):
        seg = record.get("segmentation") if isinstance(record, dict) else None
        if isinstance(seg, dict):
            mask = io.decode_rle(seg)
        elif seg is not None:
            mask = np.asarray(seg.cpu() if torch.is_tensor(seg) else seg).astype(bool, copy=False)
        else:
            raise SSAError(f"mask record {i} has no 'segmentation'; give HW bool or COCO RLE")
        if mask.shape != (height, width):
            raise SSAError(
                f"mask {i} is {mask.shape[-1]}x{mask.shape[0]} but the image is "
                f"{width}x{height}; give masks at the image's full resolution"
            )
        planes.append(mask)
    stack = np.stack(planes) if planes else np.zeros((0, height, width), dtype=bool)
    out = []
    for record, mask, rle in zip(records, stack, io.encode_rle(stack)):
        record = dict(record)
        record["segmentation"] = rle
        if "area" not in record:
            record["area"] = int(mask.sum())
        if "bbox" not in record:
            record["bbox"] = mask_bbox(mask)
        out.append(record)
    return MaskResult(out, torch.from_numpy(stack))


class RecordListSource:
    """Wraps an object whose `generate(image[, path=...])` returns a list of records (`HW bool`
    or RLE `segmentation`, as `SamAutomaticMaskGenerator` gives) so that it is a `MaskSource`;
    a `MaskResult` it returns passes through unchanged."""

    def __init__(self, inner: Any) -> None:
        from ssa.plugins import accepts_path

        self.inner = inner
        self._takes_path = accepts_path(inner.generate)

    def generate(self, image: np.ndarray, *, path: Path | None = None) -> MaskResult:
        out = self.inner.generate(image, path=path) if self._takes_path else self.inner.generate(
            image
        )
        if isinstance(out, MaskResult):
            return out
        return result_from_records(list(out), image.shape[:2])


def as_mask_source(obj: Any, where: str) -> MaskSource:
    """`obj` as a `MaskSource`: a `generate` method is needed; its results are normalised to
    `MaskResult` (`RecordListSource`) unless `obj` is one of ssa's own sources."""
    from ssa.errors import SSAError

    if not callable(getattr(obj, "generate", None)):
        raise SSAError(
            f"{where} returned a {type(obj).__name__} without a generate(image) method; return "
            f"an object whose generate(image, *, path=None) gives a MaskResult or mask records"
        )
    return RecordListSource(obj)
