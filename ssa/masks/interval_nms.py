"""Greedy box NMS with torchvision's rule on boxes known only as coordinate intervals (the
fast generator's low-res bounds), asking for exact boxes where the intervals do not settle it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ssa.masks.stats import Stats


def _stock_order(scores: torch.Tensor) -> torch.Tensor:
    """The order in which torchvision's NMS visits boxes (its own sort, ties included): NMS on
    boxes that cannot overlap keeps every box, in visiting order."""
    from torchvision.ops.boxes import batched_nms

    n = len(scores)
    x = torch.arange(n, dtype=torch.float32) * 2
    disjoint = torch.stack([x, torch.zeros(n), x + 1, torch.ones(n)], 1)
    return batched_nms(disjoint, scores.float(), torch.zeros(n), iou_threshold=0.5)


def _iou_bounds(lo: torch.Tensor, hi: torch.Tensor, i: int, rest: torch.Tensor):
    """Bounds on torchvision's box IoU between box i and boxes `rest`, from coordinate intervals
    (`(N, 4)` XYXY lo/hi)."""

    def area(x0, y0, x1, y1):
        return (x1 - x0).clamp_min(0) * (y1 - y0).clamp_min(0)

    a_lo = area(hi[:, 0], hi[:, 1], lo[:, 2], lo[:, 3])
    a_hi = area(lo[:, 0], lo[:, 1], hi[:, 2], hi[:, 3])
    # Smallest and largest intersection over the intervals.
    w_lo = (torch.minimum(lo[i, 2], lo[rest, 2]) - torch.maximum(hi[i, 0], hi[rest, 0])).clamp_min(0)
    h_lo = (torch.minimum(lo[i, 3], lo[rest, 3]) - torch.maximum(hi[i, 1], hi[rest, 1])).clamp_min(0)
    w_hi = (torch.minimum(hi[i, 2], hi[rest, 2]) - torch.maximum(lo[i, 0], lo[rest, 0])).clamp_min(0)
    h_hi = (torch.minimum(hi[i, 3], hi[rest, 3]) - torch.maximum(lo[i, 1], lo[rest, 1])).clamp_min(0)
    inter_lo, inter_hi = w_lo * h_lo, w_hi * h_hi
    union_hi = a_hi[i] + a_hi[rest] - inter_lo
    union_lo = torch.maximum(a_lo[i] + a_lo[rest] - inter_hi, torch.maximum(a_lo[i], a_lo[rest]))
    iou_lo = torch.where(union_hi > 0, inter_lo / union_hi.clamp_min(1e-9), 0.0)
    iou_hi = torch.where(union_lo > 0, (inter_hi / union_lo.clamp_min(1e-9)).clamp_max(1.0), 1.0)
    exact = (lo[i] == hi[i]).all() & (lo[rest] == hi[rest]).all(1)
    return iou_lo, iou_hi, exact


def _exact_iou(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    from torchvision.ops import box_iou

    return box_iou(box[None], others)[0]


def interval_nms(
    lo: torch.Tensor,
    hi: torch.Tensor,
    scores: torch.Tensor,
    thresh: float,
    exact_boxes: Any,
    stats: Stats,
) -> torch.Tensor:
    """Greedy box NMS (torchvision's rule: drop a box whose IoU with a kept one is > thresh) on
    boxes known as coordinate intervals. A pair the intervals do not settle gets its exact boxes
    from `exact_boxes(idx) -> (n, 4)`. Returns kept indices in torchvision's order."""
    n = len(scores)
    if n == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = _stock_order(scores)
    if thresh >= 1.0:
        return order  # IoU never exceeds 1: nothing is suppressed
    lo, hi = lo.clone(), hi.clone()
    is_exact = (lo == hi).all(1)
    removed = torch.zeros(n, dtype=torch.bool)
    keep = []
    pos = torch.empty(n, dtype=torch.int64)
    pos[order] = torch.arange(n)
    for k in range(n):
        i = int(order[k])
        if removed[i]:
            continue
        keep.append(i)
        rest = order[k + 1 :]
        rest = rest[~removed[rest]]
        if len(rest) == 0:
            break
        iou_lo, iou_hi, _ = _iou_bounds(lo, hi, i, rest)
        unsure = (iou_lo <= thresh) & (iou_hi > thresh)
        if unsure.any():
            need = torch.cat([torch.tensor([i]), rest[unsure]])
            need = need[~is_exact[need]]
            if len(need):
                boxes = exact_boxes(need)
                lo[need] = boxes
                hi[need] = boxes
                is_exact[need] = True
            iou = _exact_iou(lo[i], lo[rest[unsure]])
            suppress = iou_lo > thresh
            suppress[unsure] = iou > thresh
        else:
            suppress = iou_lo > thresh
        removed[rest[suppress]] = True
    return torch.tensor(keep, dtype=torch.int64)
