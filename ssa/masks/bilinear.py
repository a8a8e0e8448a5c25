"""The stock upsampling's geometry and kernels for the fast generator (`ssa.masks.fast_amg`).

`Axis`: which low-res cells each full-resolution row or column of segment-anything's two
bilinear resizes reads (its support), the basis of the low-res bounds; `CountBuffer`: pixel
counts above a level over a padded buffer (any device); `PlaneStats`: the kept masks' counts
and their column-major planes on the CPU, plane by plane in worker threads.
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Axis:
    """Bilinear support of one axis of the stock upsampling (`low -> encoder -> crop -> size`).

    ranges: `(U, 2) int64` distinct `[lo, hi]` low-res cell ranges (inclusive) that full-res
    indices read from; first/last/count: `(U,)` the smallest and largest full-res index with
    that range and how many have it.
    """

    ranges: torch.Tensor
    first: torch.Tensor
    last: torch.Tensor
    count: torch.Tensor
    low: int = 256

    @staticmethod
    def build(input_len: int, out_len: int, encoder_size: int, device: torch.device,
              low: int | None = None) -> Axis:
        """`low` is the decoder's logit size (default a quarter of the encoder's input: 256 for
        SAM at 1024, as SAM's decoder gives; any size for other models)."""
        low = encoder_size // 4 if low is None else low
        eye = torch.eye(low, dtype=torch.float32, device=device).view(1, low, low, 1)
        up = F.interpolate(eye, (encoder_size, 1), mode="bilinear", align_corners=False)
        up = up[:, :, :input_len]
        weights = F.interpolate(up, (out_len, 1), mode="bilinear", align_corners=False)
        support = weights[0, :, :, 0] > 0  # (low cells, out_len)
        cells = torch.arange(low, device=device)[:, None]
        lo = torch.where(support, cells, low).amin(0)
        hi = torch.where(support, cells, -1).amax(0)
        keys = lo * (low + 1) + hi
        uniq, inverse = torch.unique(keys, return_inverse=True)
        idx = torch.arange(out_len, device=device)
        n = len(uniq)
        first = torch.full((n,), out_len, device=device).scatter_reduce(0, inverse, idx, "amin")
        last = torch.full((n,), -1, device=device).scatter_reduce(0, inverse, idx, "amax")
        count = torch.zeros(n, dtype=torch.int64, device=device).scatter_add(
            0, inverse, torch.ones_like(idx)
        )
        ranges = torch.stack([uniq // (low + 1), uniq % (low + 1)], 1)
        return Axis(ranges, first, last, count, low)

    def block_any(self, cells: torch.Tensor, dim: int) -> torch.Tensor:
        """OR of `cells` (bool, `low` long on `dim`) over each range: the range axis replaces `dim`.

        A range is contiguous, so the OR is a sliding-window max picked per range length.
        """
        cells = cells.movedim(dim, -1)
        lengths = self.ranges[:, 1] - self.ranges[:, 0] + 1
        out = torch.empty(*cells.shape[:-1], len(self.ranges), dtype=torch.bool,
                          device=cells.device)
        window = cells.clone()
        for k in range(1, int(lengths.max()) + 1):
            if k > 1:  # window[..., c] = OR of cells[c .. c+k-1]
                window[..., : self.low - k + 1] |= cells[..., k - 1 :]
            sel = (lengths == k).nonzero(as_tuple=True)[0]
            out[..., sel] = window[..., self.ranges[sel, 0]]
        return out.movedim(-1, dim)


class CountBuffer:
    """A reused `(k, h, w) bool` buffer whose rows are zero-padded to a multiple of 2040 bytes,
    so pixels above a level are counted without widening them: 255 int64 words summed per
    byte lane (each lane stays <= 255), then the bytes summed. On other devices, a plain sum."""

    _ROW = 8 * 255

    def __init__(self, shape: torch.Size, device: torch.device) -> None:
        k, h, w = shape
        self.hw, self.shape = h * w, (h, w)
        padded = -(-self.hw // self._ROW) * self._ROW
        self.rows = torch.zeros(k, padded, dtype=torch.bool, device=device)

    def mask(self, k: int) -> torch.Tensor:
        return self.rows[:k, : self.hw].view(k, *self.shape)

    def count_above(self, full: torch.Tensor, level: float) -> torch.Tensor:
        """`(k,) int64`: pixels of each `full[i]` above `level`; leaves the mask in the buffer."""
        k = len(full)
        torch.gt(full, level, out=self.mask(k))
        rows = self.rows[:k]
        if rows.device.type != "cpu":
            return rows.sum(1)
        words = rows.view(torch.int64).view(k, -1, 255).sum(2)
        return words.view(torch.uint8).view(k, -1).sum(1)


class PlaneStats:
    """On the CPU: of each plane of a chunk of full-resolution logits `(k, h, w)`, the pixels
    above three levels, the rows and columns holding a pixel above the middle one, and that
    mask written transposed into its plane of the column-major stack; one plane per task of
    `pool`, with numpy and OpenCV, while the plane is in cache.

    The same comparisons as torch's (IEEE `>` in float32, NaN never above), so the same
    counts and masks, in about half the time of torch's bool kernels and padded counts over
    a chunk (`CountBuffer`): numpy's comparison and count loops are SIMD and release the GIL,
    so the workers overlap (BENCHMARKS.md).
    """

    def __init__(self, shape: tuple[int, int], pool: Executor) -> None:
        self.shape = shape
        self.pool = pool
        self._local = threading.local()

    def _buffers(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        bufs = getattr(self._local, "bufs", None)
        if bufs is None:
            h, w = self.shape
            bufs = self._local.bufs = (np.empty((h, w), bool), np.empty((h, w), bool),
                                       np.empty((w, h), np.uint8))
        return bufs

    def __call__(self, full: torch.Tensor, levels: tuple[float, float, float],
                 planes: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """full: `(k, h, w) float32` on the CPU; levels: `(low, mid, high)`; planes: `k`
        `(w, h) uint8` destinations of `full[j] > mid`, transposed. Returns counts `(k, 3)
        int64` (pixels above low, mid, high), rows `(k, h) uint8` and columns `(k, w) uint8`
        (1 where the mask has a pixel)."""
        import cv2

        x = full.numpy()
        k, (h, w) = len(x), self.shape
        low, mid, high = (np.float32(v) for v in levels)
        counts = np.empty((k, 3), np.int64)
        rows = np.empty((k, h), bool)
        cols = np.empty((k, w), bool)

        def one(j: int) -> None:
            mask, tmp, flipped = self._buffers()
            plane = x[j]
            np.greater(plane, mid, out=mask)
            counts[j, 1] = np.count_nonzero(mask)
            counts[j, 0] = np.count_nonzero(np.greater(plane, low, out=tmp))
            counts[j, 2] = np.count_nonzero(np.greater(plane, high, out=tmp))
            np.any(mask, axis=1, out=rows[j])
            np.any(mask, axis=0, out=cols[j])
            dst = planes[j]
            if dst.flags.c_contiguous:  # OpenCV writes only into a whole, contiguous array
                cv2.transpose(mask.view(np.uint8), dst=dst)
            else:
                cv2.transpose(mask.view(np.uint8), dst=flipped)
                np.copyto(dst, flipped)

        for _ in self.pool.map(one, range(k)):
            pass
        flags = (torch.from_numpy(a).view(torch.uint8) for a in (rows, cols))
        return torch.from_numpy(counts), *flags
