"""The stock upsampling's geometry and kernels for the fast generator (`ssa.masks.fast_amg`).

`_Axis`: which low-res cells each full-resolution row or column of segment-anything's two
bilinear resizes reads (its support), the basis of the low-res bounds; `_Separable`: that
resize as two matrix products on the CPU, bit for bit torch's kernel; `_CountBuffer`: pixel
counts above a level over a padded buffer; `_copy_transposed`: the column-major mask stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

# Chunks of the separable CPU resize: a few full-resolution masks, so passes hit the cache.
_SEPARABLE_CHUNK_PIXELS = 1 << 23


@dataclass
class _Axis:
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
              low: int | None = None) -> _Axis:
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
        return _Axis(ranges, first, last, count, low)

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


def _copy_transposed(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst `(k, w, h)` = src `(k, h, w)` transposed. On the CPU, mask by mask with OpenCV's SIMD
    transpose where both are contiguous per mask (about 0.2 ms for a 2200x1467 bool mask,
    against about 2.5 ms for torch's or numpy's strided copy)."""
    if dst.device.type == "cpu" and len(src) and dst[0].is_contiguous() and src[0].is_contiguous():
        import cv2

        out = dst.numpy().view(np.uint8)
        for i, plane in enumerate(src.numpy().view(np.uint8)):
            cv2.transpose(plane, dst=out[i])
    else:
        dst.copy_(src.transpose(1, 2))


class _CountBuffer:
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


class _Separable:
    """The CPU bilinear kernel's resize `(in_h, in_w) -> (out_h, out_w)` in two separable passes.

    torch's generic CPU kernel (`upsample_bilinear2d`, one channel, not channels-last) computes
    every output pixel as `fma(t0, h0, t1 * h1)` of two width-interpolated rows
    `t = fma(x0, w0, x1 * w1)`, gathering four inputs and four weights per pixel. Here the width
    pass is torch's 1-D linear kernel (the same expression, on `in_h` rows only) and the height
    pass is two whole-row gathers, one multiply and one `addcmul` (a fused multiply-add on the
    CPU): the same operations on the same operands, so the same bits, at a fraction of the cost.
    `get` checks that on a random input of the exact geometry once (the weights' rounding,
    the compiler's contractions) and returns None where it does not hold, or off the CPU, or
    where the kernel would take its vectorised path (small outputs) or copy (an axis of equal
    sizes): callers then use the kernel.
    """

    def __init__(self, in_size: tuple[int, int], out_size: tuple[int, int], rows: tuple) -> None:
        self.in_size, self.out_size = in_size, out_size
        self.i0, self.i1, self.l0, self.l1 = rows  # (out_h,) int64 and (out_h, 1) float32

    _cache: ClassVar[dict[tuple, _Separable | None]] = {}

    @classmethod
    def get(cls, in_size: tuple[int, int], out_size: tuple[int, int],
            device: torch.device) -> _Separable | None:
        # An axis of equal sizes: the kernel copies along it (infinities stay where zero weights
        # would make NaNs).
        if (torch.device(device).type != "cpu" or sum(out_size) <= 128 or min(in_size) < 2
                or in_size[0] == out_size[0] or in_size[1] == out_size[1]):
            return None
        key = (in_size, out_size)
        if key not in cls._cache:
            cls._cache[key] = cls._build(in_size, out_size)
        return cls._cache[key]

    @classmethod
    def _build(cls, in_size: tuple[int, int], out_size: tuple[int, int]) -> _Separable | None:
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(1, 1, *in_size, generator=g) * 8
        probe[0, 0, 1, 1], probe[0, 0, -1, -2] = torch.inf, -torch.inf  # non-finite logits too
        ref = torch._C._nn.upsample_bilinear2d(probe, out_size, False)[:, 0]
        for fused in (False, True):
            sep = cls(in_size, out_size, _linear_rows(in_size[0], out_size[0], fused))
            got = sep(probe[:, 0], sep.buffers(1))
            if torch.equal(got.isnan(), ref.isnan()) and torch.equal(got.nan_to_num(), ref.nan_to_num()):
                return sep
        return None

    def buffers(self, n: int) -> list[torch.Tensor]:
        (ih, _), (oh, ow) = self.in_size, self.out_size
        return [torch.empty(n, ih, ow), torch.empty(n, oh, ow), torch.empty(n, oh, ow)]

    def __call__(self, x: torch.Tensor, bufs: list[torch.Tensor]) -> torch.Tensor:
        """x: `(k, in_h, in_w) float32` -> `(k, out_h, out_w)`, written into `bufs[2]`."""
        width, top, out = bufs
        torch._C._nn.upsample_linear1d(x, (self.out_size[1],), False, out=width)
        torch.index_select(width, 1, self.i0, out=top)
        torch.index_select(width, 1, self.i1, out=out)
        out.mul_(self.l1)
        return out.addcmul_(top, self.l0)  # out = fma(top, l0, out)


def _linear_rows(n_in: int, n_out: int, fused: bool) -> tuple:
    """Source rows and weights of torch's linear resize `n_in -> n_out` (align_corners False):
    `src = scale * (dst + 0.5) - 0.5` in float32 (`fused`: as one fused multiply-add), clamped
    at 0; `i0 = floor(src)` capped at the last row, `i1 = i0 + 1` capped, `l1 = src - i0` in
    [0, 1], `l0 = 1 - l1`."""
    scale = np.float32(n_in) / np.float32(n_out)
    dst = np.arange(n_out, dtype=np.float64) + 0.5
    if fused:  # the float64 product is exact; one rounding to float32, as an FMA does
        src = (np.float64(scale) * dst - 0.5).astype(np.float32)
    else:
        src = dst.astype(np.float32) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    l0 = np.float32(1) - l1
    i1 = i0 + (i0 < n_in - 1)
    return (torch.from_numpy(i0), torch.from_numpy(i1), torch.from_numpy(l0)[:, None],
            torch.from_numpy(l1)[:, None])
