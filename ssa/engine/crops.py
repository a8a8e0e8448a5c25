"""Boxes around masks and the enlarged crops the engine's models look at.

Boxes are `XYXY` integer pixel bounds, end-exclusive (`image[y0:y1, x0:x1]`).
"""

from __future__ import annotations

import numpy as np
import torch

# As in the original SSA engine: CLIP looks at a tight crop (1.2x the box), the captioner and
# CLIPSeg at a wider one (1.6x) so the object is seen with its context.
CLIP_SCALE = 1.2
CONTEXT_SCALE = 1.6


def mask_boxes(masks: torch.Tensor) -> np.ndarray:
    """`(N, H, W) bool` masks -> `(N, 4) int64` XYXY boxes (end-exclusive); an empty mask gets
    the whole image, so it still has a crop."""
    from segment_anything.utils.amg import batched_mask_to_box

    num, height, width = masks.shape
    if num == 0:
        return np.zeros((0, 4), dtype=np.int64)
    boxes = batched_mask_to_box(masks.bool()).cpu().numpy().astype(np.int64)  # XYXY inclusive
    boxes[:, 2:] += 1
    boxes[~masks.flatten(1).any(dim=1).cpu().numpy()] = (0, 0, width, height)
    return boxes


def enlarge(boxes: np.ndarray, scale: float, width: int, height: int) -> np.ndarray:
    """Scale `(N, 4)` XYXY boxes about their centres, clip to the image, keep at least 1 pixel."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    half_w = (boxes[:, 2] - boxes[:, 0]) * scale / 2
    half_h = (boxes[:, 3] - boxes[:, 1]) * scale / 2
    x0 = np.clip(np.floor(cx - half_w), 0, width - 1)
    y0 = np.clip(np.floor(cy - half_h), 0, height - 1)
    x1 = np.clip(np.ceil(cx + half_w), x0 + 1, width)
    y1 = np.clip(np.ceil(cy + half_h), y0 + 1, height)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def crop_images(image: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """`HWC uint8 RGB` image -> one `hwC uint8` crop per XYXY box (views, not copies)."""
    return [image[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes.tolist()]
