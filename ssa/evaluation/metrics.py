"""Semantic segmentation metrics in the mmsegmentation convention that SSA's tables use.

Small functional steps, torchmetrics-style: `format_pair` (flat bin indices; ignored pixels to a
dropped bin, invalid predictions to an extra "no prediction" column) -> `update_confmat` (one
vectorised bincount; uint8 maps take a faster route through a 256x256 histogram) ->
`compute_metrics`. `ConfusionMatrix` is the thin stateful wrapper: its state is one
summable int64 tensor, so shards of a dataset combine with `+`, `merge` or one all-reduce.

The confusion matrix is `(C, C + 1) int64`: row = ground-truth class, column = predicted class,
the last column counts labelled pixels whose prediction is not a class 0..C-1 (255 "no label",
65535, or anything out of range). Such pixels are wrong: they add to the ground-truth class's
area and union but to no class's prediction area, exactly as mmsegmentation's `histc` drops them.
Pixels whose ground truth is `ignore_index` are not counted at all.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ssa.errors import SSAError

IGNORE_INDEX = 255


def _as_array(x: Any) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _lookup_tables(
    num_classes: int, ignore_index: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-value bin offsets for ground truth and prediction of an unsigned dtype of `size` values.

    gt: class c -> c * (C + 1), ignore -> B, anything else -> B + C + 1 (an error, see below),
    where B = C * (C + 1). pred: class c -> c, anything else -> C.
    """
    bins = num_classes * (num_classes + 1)
    gt_lut = np.full(size, bins + num_classes + 1, dtype=np.int32)
    classes = np.arange(min(num_classes, size), dtype=np.int32)
    gt_lut[classes] = classes * (num_classes + 1)
    if 0 <= ignore_index < size:
        gt_lut[ignore_index] = bins
    pred_lut = np.full(size, num_classes, dtype=np.int32)
    pred_lut[classes] = classes
    return gt_lut, pred_lut


_LUT_CACHE: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}


def format_pair(
    pred: Any, gt: Any, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """Flat bin indices `gt * (C + 1) + pred'` of one image's pixels, `(H*W,) int32`.

    pred, gt: `(H, W)` (or any equal shape) integer numpy arrays or tensors. `pred'` is the
    predicted class, or C when the prediction is outside 0..C-1. With B = C * (C + 1), ignored
    pixels land in bins B..B+C and ground truth outside 0..C-1 (not `ignore_index`) in bins
    B+C+1.. (an error raised by `update_confmat`); padding bins is cheaper than compacting arrays.
    uint8/uint16 maps (what PNGs decode to) go through lookup tables, other dtypes through
    arithmetic. Raises SSAError when the shapes differ.
    """
    pred_a, gt_a = _as_array(pred), _as_array(gt)
    if pred_a.shape != gt_a.shape:
        raise SSAError(
            f"prediction {tuple(pred_a.shape)} and ground truth {tuple(gt_a.shape)} differ in size"
        )
    pred_a, gt_a = pred_a.reshape(-1), gt_a.reshape(-1)
    if pred_a.dtype == gt_a.dtype and pred_a.dtype in (np.uint8, np.uint16):
        size = 256 if pred_a.dtype == np.uint8 else 65536
        key = (num_classes, ignore_index, size)
        if key not in _LUT_CACHE:
            _LUT_CACHE[key] = _lookup_tables(num_classes, ignore_index, size)
        gt_lut, pred_lut = _LUT_CACHE[key]
        return gt_lut[gt_a] + pred_lut[pred_a]
    bins = num_classes * (num_classes + 1)
    gt64, pred64 = gt_a.astype(np.int64), pred_a.astype(np.int64)
    rows = np.where((gt64 >= 0) & (gt64 < num_classes), gt64 * (num_classes + 1),
                    bins + num_classes + 1)
    rows[gt64 == ignore_index] = bins
    cols = np.where((pred64 >= 0) & (pred64 < num_classes), pred64, num_classes)
    return (rows + cols).astype(np.int32)


def pair_histogram_uint8(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """`(256, 256) int64` counts of (gt value, pred value) for two uint8 maps of equal shape.

    One bincount over `gt << 8 | pred` (uint16 keys): no lookups, no compaction (faster than
    the general path, BENCHMARKS.md), and what PNG label maps of C <= 255 decode to.
    """
    key = np.left_shift(gt.reshape(-1), 8, dtype=np.uint16)
    key |= pred.reshape(-1)
    return np.bincount(key, minlength=65536).reshape(256, 256)


def _fold_histogram(hist: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """`(V, V)` (gt value, pred value) counts -> `(C, C + 1)`; raises on unknown gt values."""
    values = hist.shape[0]
    hist = hist.copy()
    if 0 <= ignore_index < values:
        hist[ignore_index] = 0
    kept = min(num_classes, values)
    if hist[kept:].any():
        bad = kept + int(np.flatnonzero(hist[kept:].any(axis=1))[0])
        _raise_bad_gt(bad, num_classes, ignore_index)
    out = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
    out[:kept, :kept] = hist[:kept, :kept]
    out[:kept, num_classes] = hist[:kept, kept:].sum(axis=1)
    return out


def _raise_bad_gt(value: int, num_classes: int, ignore_index: int) -> None:
    raise SSAError(
        f"ground truth holds class {value}, outside 0..{num_classes - 1} and not the ignore "
        f"value {ignore_index}; check the dataset or the class list"
    )


def update_confmat(
    pred: Any, gt: Any, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """One image's confusion matrix, `(C, C + 1) int64` (see the module docstring).

    Raises SSAError when the shapes differ, or the ground truth holds a value outside 0..C-1
    that is not `ignore_index`.
    """
    pred_a, gt_a = _as_array(pred), _as_array(gt)
    if pred_a.dtype == np.uint8 and gt_a.dtype == np.uint8 and pred_a.shape == gt_a.shape:
        hist = pair_histogram_uint8(pred_a, gt_a)
        return torch.from_numpy(_fold_histogram(hist, num_classes, ignore_index))
    bins = num_classes * (num_classes + 1)
    index = format_pair(pred_a, gt_a, num_classes, ignore_index)
    # numpy's bincount, far faster than torch's on CPU (BENCHMARKS.md).
    counts = np.bincount(index, minlength=bins + 2 * (num_classes + 1))
    if counts[bins + num_classes + 1 :].any():
        values = np.unique(gt_a)
        bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_index)]
        _raise_bad_gt(bad[0], num_classes, ignore_index)
    return torch.from_numpy(counts[:bins].astype(np.int64).reshape(num_classes, num_classes + 1))


def missing_confmat(gt: Any, num_classes: int, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The confusion matrix of an image with no prediction: every labelled pixel is wrong."""
    gt_a = _as_array(gt)
    # A uint8 map of 255 takes the fast route when 255 is no class; otherwise -1 is never one.
    fill, dtype = (255, np.uint8) if num_classes <= 255 and gt_a.dtype == np.uint8 else (-1, np.int64)
    return update_confmat(np.full(gt_a.shape, fill, dtype=dtype), gt_a, num_classes, ignore_index)


def compute_metrics(confmat: torch.Tensor) -> dict[str, Any]:
    """Per-class IoU and accuracy, and the dataset scores, as fractions (not percent).

    Returns `{"iou": (C,) float64, "acc": (C,) float64, "miou", "aacc", "macc": float}`.
    IoU is NaN for a class with an empty union (absent from ground truth and prediction), accuracy
    NaN for a class absent from the ground truth; mIoU and mAcc average the non-NaN classes
    (NaN when there are none); aAcc = correct / labelled pixels.
    """
    cm = confmat.to(torch.float64)
    num_classes = cm.shape[0]
    correct = torch.diagonal(cm[:, :num_classes])
    gt_area = cm.sum(dim=1)
    pred_area = cm[:, :num_classes].sum(dim=0)
    union = gt_area + pred_area - correct
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, correct / union.clamp(min=1), nan)
    acc = torch.where(gt_area > 0, correct / gt_area.clamp(min=1), nan)
    total = float(gt_area.sum())
    return {
        "iou": iou,
        "acc": acc,
        "miou": _nanmean(iou),
        "aacc": float(correct.sum()) / total if total > 0 else math.nan,
        "macc": _nanmean(acc),
    }


def _nanmean(values: torch.Tensor) -> float:
    kept = values[~torch.isnan(values)]
    return float(kept.mean()) if kept.numel() else math.nan


class ConfusionMatrix:
    """A dataset's confusion matrix, accumulated image by image; state `mat`: `(C, C+1) int64`."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise SSAError(f"num_classes {num_classes} must be at least 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes + 1, dtype=torch.int64)

    def update(self, pred: Any, gt: Any) -> ConfusionMatrix:
        """Add one image (`(H, W)` integer maps; see `format_pair`)."""
        self.mat += update_confmat(pred, gt, self.num_classes, self.ignore_index)
        return self

    def update_missing(self, gt: Any) -> ConfusionMatrix:
        """Add an image that has no prediction: all its labelled pixels count as wrong."""
        self.mat += missing_confmat(gt, self.num_classes, self.ignore_index)
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another shard's counts (same classes) into this one."""
        if other.mat.shape != self.mat.shape:
            raise SSAError(
                f"cannot merge a {other.num_classes}-class confusion matrix into a "
                f"{self.num_classes}-class one"
            )
        self.mat += other.mat.to(self.mat.device)
        return self

    def all_reduce(self, group: Any = None) -> ConfusionMatrix:
        """Sum the state over every rank (no-op unless torch.distributed is initialised).

        Every rank must call it. The tensor goes to the backend's device (CUDA for nccl).
        """
        from ssa.distributed import sum_over_ranks

        self.mat = sum_over_ranks(self.mat, group)
        return self

    def reset(self) -> None:
        self.mat.zero_()

    def compute(self) -> dict[str, Any]:
        """See `compute_metrics`."""
        return compute_metrics(self.mat)
