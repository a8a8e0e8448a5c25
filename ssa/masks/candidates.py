"""Candidate masks at low resolution and the filters the fast generator decides on them: bounds
on each candidate's full-resolution box and stability from the low-res grid, the exact values by
the stock upsampling where the bounds do not settle a decision (`ssa.masks.fast_amg` explains
why the decisions are the stock ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ssa.masks.bilinear import Axis, CountBuffer, PlaneStats

if TYPE_CHECKING:
    from ssa.masks.stats import Stats

# The upper end of an unknown box coordinate: finite, so interval arithmetic stays finite.
_UNKNOWN = 1e7
# Full-resolution float pixels upsampled at once (about 256 MB of float32); on the CPU at most
# one mask per thread (`chunk_masks`).
_CHUNK_PIXELS = 1 << 26


def chunk_masks(pixels: int, device: torch.device) -> int:
    """Masks of `pixels` full-resolution pixels to upsample at once: up to `_CHUNK_PIXELS`; on
    the CPU one per torch thread, so the chunk is still in cache when `PlaneStats` reads it
    (a chunk of 20 SAM masks at 2200x1467 took 15% longer to upsample, and then came from
    memory)."""
    per = max(1, _CHUNK_PIXELS // max(1, pixels))
    if torch.device(device).type == "cpu":
        per = min(per, max(1, torch.get_num_threads()))
    return per


def covers_image(crop_box: list[int], orig_size: tuple[int, int]) -> bool:
    """Whether an XYXY crop box is the whole `(H, W)` image (a crop with no crop edges)."""
    return list(crop_box) == [0, 0, orig_size[1], orig_size[0]]


@dataclass
class _Bounds:
    """Per-candidate bounds from low-res logits: boxes `(N, 4)` XYXY as intervals, stability.

    box_lo/box_hi: `(N, 4) float32`, every exact coordinate lies in `[lo, hi]`; exact: `(N,) bool`
    marks candidates whose values are exact (lo == hi); stab_lo/stab_hi: `(N,) float32`.
    """

    box_lo: torch.Tensor
    box_hi: torch.Tensor
    stab_lo: torch.Tensor
    stab_hi: torch.Tensor
    exact: torch.Tensor


@dataclass
class Candidates:
    """Candidate masks of one crop, kept at low resolution. Row i of every field is candidate i.

    logits: `(N, 256, 256) float32`; iou: `(N,)`; points: `(N, 2) float64` crop-frame XY, on
    the CPU whatever the device (`select` moves its index there).
    """

    logits: torch.Tensor
    iou: torch.Tensor
    points: torch.Tensor
    bounds: _Bounds | None = None
    input_size: tuple[int, int] = (0, 0)  # the crop's size after the encoder's resize

    def select(self, keep: torch.Tensor) -> Candidates:
        b = self.bounds
        bounds = None if b is None else _Bounds(
            b.box_lo[keep], b.box_hi[keep], b.stab_lo[keep], b.stab_hi[keep], b.exact[keep]
        )
        return Candidates(self.logits[keep], self.iou[keep], self.points[keep.cpu()], bounds,
                           self.input_size)


def sync_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def crop_offset(crop_box: list[int], device: Any) -> torch.Tensor:
    x0, y0 = crop_box[0], crop_box[1]
    return torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=device)


def cat_candidates(parts: list[Candidates]) -> Candidates:
    b = [p.bounds for p in parts]
    return Candidates(
        torch.cat([p.logits for p in parts]),
        torch.cat([p.iou for p in parts]),
        torch.cat([p.points for p in parts]),
        _Bounds(*(torch.cat([getattr(x, f) for x in b])
                  for f in ("box_lo", "box_hi", "stab_lo", "stab_hi", "exact"))),
        parts[0].input_size,
    )


def box_from_lines(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """segment-anything's `batched_mask_to_box` from its per-row `(n, H)` and per-column `(n, W)`
    "has a pixel" flags (bool): the same arithmetic, `(n, 4) int64` XYXY, empty -> zeros."""
    h, w = rows.shape[-1], cols.shape[-1]
    in_h = rows * torch.arange(h, device=rows.device)[None, :]
    bottom = in_h.max(-1).values
    top = (in_h + h * (~rows)).min(-1).values
    in_w = cols * torch.arange(w, device=cols.device)[None, :]
    right = in_w.max(-1).values
    left = (in_w + w * (~cols)).min(-1).values
    empty = (right < left) | (bottom < top)
    return torch.stack([left, top, right, bottom], dim=-1) * (~empty).unsqueeze(-1)


class CandidateFilters:
    """The fast generator's bounds, exact values and filters on `Candidates` (a base class of
    `FastMaskGenerator`, whose settings, model, predictor and `stats` they read)."""

    stats: Stats

    def _bounds(
        self, logits: torch.Tensor, axes: tuple[Axis, Axis], boxes: bool, stability: bool
    ) -> _Bounds:
        """Bounds on the exact full-resolution box and stability of each candidate; where a
        bound is not asked for it is left unknown (`[0, _UNKNOWN]`), and never consulted."""
        rows, cols = axes
        thr = self.model.mask_threshold
        off = self.stability_score_offset
        n = len(logits)
        dev = logits.device
        weight = rows.count.float()[:, None] * cols.count.float()[None, :]  # pixels per cell pair

        def grids(level: float) -> tuple[torch.Tensor, torch.Tensor]:
            above = logits > level
            possible = cols.block_any(rows.block_any(above, 1), 2)  # (N, nr, nc)
            sure = ~cols.block_any(rows.block_any(~above, 1), 2)
            return possible, sure

        box_lo = torch.zeros(n, 4, device=dev)
        box_hi = torch.full((n, 4), _UNKNOWN, device=dev)
        stab_lo = torch.zeros(n, device=dev)
        stab_hi = torch.ones(n, device=dev)
        exact = torch.zeros(n, dtype=torch.bool, device=dev)
        if boxes:
            self._box_bounds(grids(thr), axes, box_lo, box_hi)
        if stability:
            stab_lo, stab_hi = self._stability_bounds(grids(thr + off), grids(thr - off), weight)
        return _Bounds(box_lo, box_hi, stab_lo, stab_hi, exact)

    @staticmethod
    def _box_bounds(grid, axes, box_lo: torch.Tensor, box_hi: torch.Tensor) -> None:
        """Fill `box_lo`/`box_hi` from the (possible, sure) grids of the mask threshold."""
        rows, cols = axes
        n, nr, nc = len(box_lo), len(rows.ranges), len(cols.ranges)
        possible, sure = grid
        for axis, ax, lo_i, hi_i, dim in ((cols, nc, 0, 2, 1), (rows, nr, 1, 3, 2)):
            p_any = possible.any(dim)  # (N, ranges of this axis)
            s_any = sure.any(dim)
            first = axis.first[None, :].expand(n, ax)
            last = axis.last[None, :].expand(n, ax)
            big = torch.iinfo(torch.int64).max
            p_min = torch.where(p_any, first, big).amin(1)
            p_max = torch.where(p_any, last, -1).amax(1)
            s_min = torch.where(s_any, first, big).amin(1)
            s_max = torch.where(s_any, last, -1).amax(1)
            box_lo[:, lo_i], box_hi[:, lo_i] = p_min.float(), s_min.float()
            box_lo[:, hi_i], box_hi[:, hi_i] = s_max.float(), p_max.float()
        any_sure = sure.flatten(1).any(1)
        any_possible = possible.flatten(1).any(1)
        # Surely empty masks have the stock's [0, 0, 0, 0] box; possibly empty ones are unknown.
        box_lo[~any_possible] = 0
        box_hi[~any_possible] = 0
        unknown = any_possible & ~any_sure
        box_lo[unknown] = 0
        box_hi[unknown] = _UNKNOWN

    @staticmethod
    def _stability_bounds(inside, union, weight):
        """Stability = |logit > thr + off| / |logit > thr - off| at full resolution, bounded by
        the surely/possibly counts of both levels."""
        p_in, s_in = inside
        p_un, s_un = union
        inter_lo = (s_in.float() * weight).sum((1, 2))
        inter_hi = (p_in.float() * weight).sum((1, 2))
        union_lo = (s_un.float() * weight).sum((1, 2))
        union_hi = (p_un.float() * weight).sum((1, 2))
        stab_lo = torch.where(union_hi > 0, inter_lo / union_hi.clamp_min(1), 0.0)
        stab_hi = torch.where(union_lo > 0, (inter_hi / union_lo.clamp_min(1)).clamp_max(1.0), 1.0)
        return stab_lo, stab_hi

    def _upsample(self, logits: torch.Tensor, input_size: tuple[int, int],
                  crop_size: tuple[int, int]):
        """Full-resolution logits `(n, h, w)` of the crop, chunked; yields `(slice, logits)`.

        The stock `Sam.postprocess_masks` (bilinear to the encoder size, crop, bilinear to the
        crop size), bit for bit, written into buffers reused across chunks: fresh multi-GB
        outputs cost about as much in page faults as the interpolation. A yielded tensor is
        overwritten by the next chunk. Both resizes are torch's bilinear kernel.
        """
        size, low = self.model.image_encoder.img_size, logits.shape[-1]
        per = chunk_masks(crop_size[0] * crop_size[1], logits.device)
        first = min(per, len(logits))
        upsample = torch._C._nn.upsample_bilinear2d  # what F.interpolate calls, with out=
        # The first resize is cropped to the input size right after: with an integer factor,
        # the same kernel given that factor as its scale computes the same source indices and
        # weights for the kept rows/columns, which read only the first ceil(kept / factor) + 1
        # low-res cells (+1 so the clamp at the last cell is not hit early). Rows past the
        # crop (a third of a landscape image's) are never computed.
        factor = size // low
        crop_first = size % low == 0 and logits.shape[-2] == low
        if crop_first:
            cells = [min(low, -(-n // factor) + 2) for n in input_size]
            mid = logits.new_empty(first, 1, *input_size)
        else:
            mid = logits.new_empty(first, 1, size, size)
        full = logits.new_empty(first, 1, *crop_size)
        for i in range(0, len(logits), per):
            part = logits[i : i + per, None]
            k = len(part)
            if crop_first:
                up = upsample(part[..., : cells[0], : cells[1]], tuple(input_size), False,
                              float(factor), float(factor), out=mid[:k])
            else:
                up = upsample(part, (size, size), False, out=mid[:k])
                up = up[..., : input_size[0], : input_size[1]]
            yield slice(i, i + k), upsample(up, tuple(crop_size), False, out=full[:k])[:, 0]

    def _exact(self, cands: Candidates, crop_box: list[int], orig_size: tuple[int, int]):
        """Exact stability `(n,)` and crop-frame boxes `(n, 4) int64` by the stock upsampling."""
        crop_size = (crop_box[3] - crop_box[1], crop_box[2] - crop_box[0])
        stab = torch.empty(len(cands.iou), device=cands.logits.device)
        boxes = torch.empty(len(cands.iou), 4, dtype=torch.int64, device=cands.logits.device)
        buf = None
        for sl, full in self._upsample(cands.logits, cands.input_size, crop_size):
            if buf is None:
                buf = CountBuffer(full.shape, full.device)
            stab[sl], rows, cols, _, _ = self._kept_stats(full, buf)
            boxes[sl] = box_from_lines(rows > 0, cols > 0)
        self.stats.exact_fallback += len(cands.iou)
        return stab, boxes

    def _kept_stats(self, full: torch.Tensor, buf: CountBuffer):
        """Of a chunk of full-resolution logits `(k, h, w)`: the stock stability `(k,) float32`,
        the rows and columns holding a pixel, the area `(k,) int64`, and the mask `full > thr` `(k, h, w) bool`
        (a view into `buf`, overwritten by the next chunk). Three thresholds of the chunk, each
        counted by `buf`; the box from the mask's per-row/column maxima `(k, h)`, `(k, w)`
        (as bytes: 1 where the row/column has a pixel)."""
        thr, off = self.model.mask_threshold, self.stability_score_offset
        inter = buf.count_above(full, thr + off)
        union = buf.count_above(full, thr - off)
        area = buf.count_above(full, thr)
        mask = buf.mask(len(full))
        as_bytes = mask.view(torch.uint8)
        # int32 / int32 as segment-anything divides them (counts < 2**24: exact in float32).
        return inter.int() / union.int(), as_bytes.amax(-1), as_bytes.amax(-2), area, mask

    def _plane_stats(self, full: torch.Tensor, buf: PlaneStats, planes: list):
        """`_kept_stats` on the CPU (`PlaneStats`), the masks written transposed into `planes`
        instead of returned: stability `(k,)`, rows, columns, area."""
        thr, off = self.model.mask_threshold, self.stability_score_offset
        counts, rows, cols = buf(full, (thr - off, thr, thr + off), planes)
        union, area, inter = counts.unbind(1)
        return inter.int() / union.int(), rows, cols, area

    def _resolve(self, cands: Candidates, need: torch.Tensor, crop_box, orig_size) -> None:
        """Replace the bounds of candidates `need` (bool) by their exact values."""
        idx = need.nonzero(as_tuple=True)[0]
        if len(idx) == 0:
            return
        stab, boxes = self._exact(cands.select(idx), crop_box, orig_size)
        b = cands.bounds
        b.stab_lo[idx] = stab
        b.stab_hi[idx] = stab
        b.box_lo[idx] = boxes.float()
        b.box_hi[idx] = boxes.float()
        b.exact[idx] = True

    def _stability_filter(self, cands: Candidates, crop_box, orig_size) -> Candidates:
        b, t = cands.bounds, self.stability_score_thresh
        unsure = (b.stab_lo < t) & (b.stab_hi >= t) & ~b.exact
        self._resolve(cands, unsure, crop_box, orig_size)
        return cands.select(b.stab_lo >= t)

    def _edge_filter(self, cands: Candidates, crop_box, orig_size) -> Candidates:
        """The stock `is_box_near_crop_edge` filter (atol 20 px), decided on box intervals."""
        orig_box = [0, 0, orig_size[1], orig_size[0]]
        if covers_image(crop_box, orig_size) or len(cands.iou) == 0:
            return cands  # a crop that is the whole image has no crop edges
        b = cands.bounds
        dev = b.box_lo.device
        off = crop_offset(crop_box, dev)
        crop_t = torch.tensor(crop_box, dtype=torch.float32, device=dev)
        orig_t = torch.tensor(orig_box, dtype=torch.float32, device=dev)

        def near(lo: torch.Tensor, hi: torch.Tensor, ref: torch.Tensor):
            surely = (lo >= ref - 20) & (hi <= ref + 20)
            never = (hi < ref - 20) | (lo > ref + 20)
            return surely, ~surely & ~never

        lo, hi = b.box_lo + off, b.box_hi + off
        crop_sure, crop_unsure = near(lo, hi, crop_t)
        image_sure, image_unsure = near(lo, hi, orig_t)
        same_edge = crop_t == orig_t  # where the crop edge is the image edge nothing is removed
        unsure = ((crop_unsure | image_unsure) & ~same_edge).any(1) & ~b.exact
        self._resolve(cands, unsure, crop_box, orig_size)
        lo, hi = b.box_lo + off, b.box_hi + off  # exact for the resolved ones now
        crop_sure, _ = near(lo, hi, crop_t)
        image_sure, _ = near(lo, hi, orig_t)
        remove = (crop_sure & ~image_sure & ~same_edge).any(1)
        return cands.select(~remove)
