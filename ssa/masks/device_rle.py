"""COCO RLE of a device mask stack (column-major runs), as pycocotools encodes it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def encode_rle_device(masks: torch.Tensor) -> list[dict[str, Any]]:
    """COCO RLE (`counts` str) of an `(N, H, W) bool` tensor, via pycocotools.

    A stack stored column-major per mask (`masks.transpose(1, 2)` contiguous on the CPU, as
    `FastMaskGenerator` builds it) is read in place; any other is copied to that order in chunks
    so the copy stays small."""
    from pycocotools import mask as mask_utils

    n, h, w = masks.shape
    out: list[dict[str, Any]] = []
    in_place = masks.device.type == "cpu" and masks.transpose(1, 2).is_contiguous()
    per = max(1, n if in_place else (1 << 27) // max(1, h * w))
    for i in range(0, n, per):
        # (c, W, H) C-order is (H, W, c) Fortran order: what pycocotools reads.
        part = masks[i : i + per].transpose(1, 2)
        if not in_place:
            part = part.contiguous().cpu()
        rles = mask_utils.encode(part.numpy().view(np.uint8).transpose(2, 1, 0))
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
        out.extend(rles)
    return out


def rle_areas(rles: list[dict[str, Any]]) -> list[int]:
    """Pixels set per COCO RLE (pycocotools, as the stock `area_from_rle` counts them)."""
    from pycocotools import mask as mask_utils

    coded = [dict(r, counts=r["counts"].encode()) for r in rles]
    # Chunks of < 256: pycocotools' area() overflows a uint8 on longer lists (numpy 2).
    return [int(a) for i in range(0, len(coded), 255) for a in mask_utils.area(coded[i : i + 255])]
