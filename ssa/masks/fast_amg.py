"""A fast automatic mask generator that gives the stock generator's masks.

`FastMaskGenerator` takes `SamAutomaticMaskGenerator`'s keywords and returns the same records, but
keeps every candidate at the decoder's resolution (`256x256` logits) through the predicted-IoU
filter, the stability filter, the crop-edge filter and box NMS, and upsamples only the masks it
keeps. The network (image encoder, prompt encoder, mask decoder) is segment-anything's own; the
decoder runs through `ssa.masks.sam_speedups.decode_fused` (the same function with the image side
never projected per prompt; logits equal up to float rounding).

Why the low-resolution decisions are the stock ones. The stock generator upsamples logits with
two bilinear resizes (`256 -> 1024`, crop to the input size, `-> crop size`). Bilinear
interpolation is separable and every output value is a convex combination of the low-res cells
in its *support*, a block of at most a few rows x columns. So a full-resolution pixel is surely
above a level `t` when every cell of its support is, and possibly above `t` only when some cell
is. Counting surely/possibly positive pixels per mask (over the distinct row and column supports,
never at full resolution) bounds the exact full-resolution box and the exact stability score.
Every decision (stability >= threshold, near a crop edge, box IoU > NMS threshold) is taken from
these bounds when they settle it, and otherwise from the exact full-resolution values of the
masks involved, computed by the stock upsampling. The decisions are therefore the stock ones up
to float rounding; records (box, area, stability) are computed exactly on the kept masks.
`FastMaskGenerator.stats` counts how many candidates needed the exact fallback.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

# Full-resolution float pixels upsampled at once (about 256 MB of float32).
_CHUNK_PIXELS = 1 << 26
# Chunks of the separable CPU resize: a few full-resolution masks, so passes hit the cache.
_SEPARABLE_CHUNK_PIXELS = 1 << 23
# The upper end of an unknown box coordinate: finite, so interval arithmetic stays finite.
_UNKNOWN = 1e7


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
class _Candidates:
    """Candidate masks of one crop, kept at low resolution. Row i of every field is candidate i.

    logits: `(N, 256, 256) float32`; iou: `(N,)`; points: `(N, 2) float64` crop-frame XY, on
    the CPU whatever the device (`select` moves its index there).
    """

    logits: torch.Tensor
    iou: torch.Tensor
    points: torch.Tensor
    bounds: _Bounds | None = None
    input_size: tuple[int, int] = (0, 0)  # the crop's size after the encoder's resize

    def select(self, keep: torch.Tensor) -> _Candidates:
        b = self.bounds
        bounds = None if b is None else _Bounds(
            b.box_lo[keep], b.box_hi[keep], b.stab_lo[keep], b.stab_hi[keep], b.exact[keep]
        )
        return _Candidates(self.logits[keep], self.iou[keep], self.points[keep.cpu()], bounds,
                           self.input_size)


@dataclass
class FastMasks:
    """What `FastMaskGenerator.generate_masks` returns for one image.

    records: the stock records, `segmentation` as COCO RLE (`counts` str);
    masks: `(N, H, W) bool` on the model's device, in record order: the transposed view of an
    `(N, W, H)` contiguous stack (each mask column-major, as COCO RLE runs); flatten its pixels
    in storage order (`ssa.voting` does) rather than `.reshape`, which would copy it.
    """

    records: list[dict[str, Any]]
    masks: torch.Tensor


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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class FastMaskGenerator:
    """`SamAutomaticMaskGenerator`'s keywords and records, without its work outside the network.

    Extra keywords: `prompt_batch` (prompts per decoder call; default `points_per_batch` on CPU,
    at least 256 on CUDA), `precision` (`"fp32"` default; `"bf16"`/`"fp16"` autocast on CUDA
    only), `sdpa` (fused attention in the image encoder; default on for CUDA, off on CPU; where
    it is off the encoder's attention runs chunked, `ssa.masks.sam_speedups.chunked_attention`),
    `compile` (`torch.compile` the encoder and decoder; default off).
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        *,
        prompt_batch: int | None = None,
        precision: str = "fp32",
        sdpa: bool | None = None,
        compile: bool = False,
    ) -> None:
        from segment_anything import SamPredictor
        from segment_anything.utils.amg import build_all_layer_point_grids

        from ssa.errors import SSAError

        if (points_per_side is None) == (point_grids is None):
            raise SSAError("set exactly one of points_per_side and point_grids")
        if output_mode not in ("binary_mask", "coco_rle"):
            raise SSAError(f"output_mode {output_mode!r}: the fast generator gives binary_mask "
                           f"or coco_rle; use --amg-impl stock for uncompressed_rle")
        if precision not in ("fp32", "bf16", "fp16"):
            raise SSAError(f"precision {precision!r}: choose fp32, bf16 or fp16")
        self.point_grids = (
            build_all_layer_point_grids(points_per_side, crop_n_layers,
                                        crop_n_points_downscale_factor)
            if points_per_side is not None else point_grids
        )
        self.predictor = SamPredictor(model)
        self.model = model
        self.device = torch.device(model.device)
        cuda = self.device.type == "cuda"
        self.points_per_batch = points_per_batch
        self.prompt_batch = prompt_batch or (max(points_per_batch, 256) if cuda
                                             else points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        # Reduced precision only where it is fast and was asked for: CPU autocast is slow.
        self.autocast_dtype = (
            {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision) if cuda else None
        )
        self.sdpa = sdpa if sdpa is not None else cuda
        if self.sdpa:
            from ssa.masks.sam_speedups import use_sdpa

            use_sdpa(model.image_encoder)
        # The compiled stock decoder where compiling was asked for (decode_fused would call
        # the uncompiled submodules).
        self.shared_decoder = not compile
        if compile:
            model.image_encoder = torch.compile(model.image_encoder, dynamic=False)
            model.mask_decoder = torch.compile(model.mask_decoder, dynamic=True)
        self.stats = Stats()

    # ---------------------------------------------------------------- public API

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The stock records for `image` (`HWC uint8 RGB`); `segmentation` as `HW bool`
        (`binary_mask`) or COCO RLE (`coco_rle`)."""
        out = self.generate_masks(image)
        if self.output_mode == "binary_mask":
            masks = out.masks.cpu().numpy()
            for record, mask in zip(out.records, masks):
                record["segmentation"] = np.ascontiguousarray(mask)  # C-order, as the stock gives
        return out.records

    @torch.inference_mode()
    def generate_masks(self, image: np.ndarray) -> FastMasks:
        """Records with COCO RLE `segmentation` and the `(N, H, W) bool` device mask stack."""
        from segment_anything.utils.amg import generate_crop_boxes

        self.stats = Stats()
        orig_size = image.shape[:2]
        crop_boxes, layer_idxs = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        per_crop = []
        for crop_box, layer_idx in zip(crop_boxes, layer_idxs):
            per_crop.append(self._process_crop(image, crop_box, layer_idx, orig_size))

        # Candidates of all crops in the image frame, in the stock generator's order.
        owners = torch.cat([torch.full((len(c.iou),), i) for i, (c, _) in enumerate(per_crop)])
        rows = torch.cat([torch.arange(len(c.iou)) for c, _ in per_crop])
        if len(crop_boxes) > 1:
            start = time.perf_counter()
            lo = torch.cat([c.bounds.box_lo + _offset(b, c.iou.device) for c, b in per_crop])
            hi = torch.cat([c.bounds.box_hi + _offset(b, c.iou.device) for c, b in per_crop])
            crop_xyxy = torch.tensor([b for _, b in per_crop], dtype=torch.float32)[owners]
            scores = 1 / ((crop_xyxy[:, 2] - crop_xyxy[:, 0]) * (crop_xyxy[:, 3] - crop_xyxy[:, 1]))

            def exact_boxes(idx: torch.Tensor) -> torch.Tensor:
                boxes = []
                for i in idx.tolist():
                    cands, box = per_crop[int(owners[i])]
                    one = rows[i : i + 1].to(cands.iou.device)
                    exact = self._exact(cands.select(one), box, orig_size)[1]
                    boxes.append(exact.float() + _offset(box, exact.device))
                return torch.cat(boxes)

            keep = _interval_nms(lo.cpu(), hi.cpu(), scores, self.crop_nms_thresh, exact_boxes,
                                 self.stats)
            self.stats.drop("crop_nms_thresh", len(owners), len(keep))
            owners, rows = owners[keep], rows[keep]
            self.stats.add("post_nms", start)
        masks, records = self._finish(per_crop, owners, rows, orig_size)
        self.stats.kept = len(records)
        return FastMasks(records, masks)

    # ---------------------------------------------------------------- per crop

    def _process_crop(
        self, image: np.ndarray, crop_box: list[int], layer_idx: int, orig_size: tuple[int, int]
    ) -> tuple[_Candidates, list[int]]:
        from segment_anything.utils.amg import batch_iterator

        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        start = time.perf_counter()
        with self._autocast(), self._encoder_attention():
            self.predictor.set_image(crop)
        _sync(self.device)
        start = self.stats.add("image_encoder", start)
        axes = self._axes(crop_size)

        points_scale = np.array(crop_size)[None, ::-1]
        points_for_image = self.point_grids[layer_idx] * points_scale
        batches = []
        for (points,) in batch_iterator(self.prompt_batch, points_for_image):
            logits, iou = self._decode(points, crop_size)
            _sync(self.device)
            start = self.stats.add("mask_decoder", start)
            pts = torch.as_tensor(points.repeat(logits.shape[1], axis=0))
            cands = _Candidates(logits.flatten(0, 1).float(), iou.flatten(0, 1).float(), pts,
                                input_size=tuple(self.predictor.input_size))
            self.stats.candidates += len(cands.iou)
            n = len(cands.iou)
            if self.pred_iou_thresh > 0.0:
                cands = cands.select(cands.iou > self.pred_iou_thresh)
                self.stats.drop("pred_iou_thresh", n, n := len(cands.iou))
            cands.bounds = self._bounds(cands.logits, axes, boxes=self._need_boxes(crop_box, orig_size),
                                        stability=self.stability_score_thresh > 0.0)
            if self.stability_score_thresh > 0.0:
                cands = self._stability_filter(cands, crop_box, orig_size)
                self.stats.drop("stability_score_thresh", n, n := len(cands.iou))
            cands = self._edge_filter(cands, crop_box, orig_size)
            self.stats.drop("crop edge", n, len(cands.iou))
            batches.append(cands)
            _sync(self.device)
            start = self.stats.add("mask_postprocess", start)
        self.predictor.reset_image()
        cands = _cat(batches)

        def exact_boxes(idx: torch.Tensor) -> torch.Tensor:
            return self._exact(cands.select(idx.to(cands.iou.device)), crop_box,
                               orig_size)[1].float().cpu()

        keep = _interval_nms(cands.bounds.box_lo.cpu(), cands.bounds.box_hi.cpu(),
                             cands.iou.cpu(), self.box_nms_thresh, exact_boxes, self.stats)
        self.stats.drop("box_nms_thresh", len(cands.iou), len(keep))
        cands = cands.select(keep.to(cands.iou.device))
        self.stats.add("mask_postprocess", start)
        return cands, crop_box

    def _need_boxes(self, crop_box: list[int], orig_size: tuple[int, int]) -> bool:
        """Whether any decision reads a box: NMS that can suppress, or crop-edge filtering."""
        whole = list(crop_box) == [0, 0, orig_size[1], orig_size[0]]
        return self.box_nms_thresh < 1.0 or not whole or (
            self.crop_n_layers > 0 and self.crop_nms_thresh < 1.0
        )

    def _encoder_attention(self) -> Any:
        """Chunked encoder attention for this call where SDPA is not used (the model keeps its
        stock forwards outside it)."""
        from ssa.masks.sam_speedups import chunked_attention

        if self.sdpa:
            return contextlib.nullcontext()
        return chunked_attention(self.model.image_encoder)

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _decode(self, points: np.ndarray, crop_size: tuple[int, int]):
        """Low-res logits `(B, 3, 256, 256)` and predicted IoUs `(B, 3)` for `B` point prompts."""
        from ssa.masks.sam_speedups import decode_fused

        predictor = self.predictor
        coords = predictor.transform.apply_coords(points, crop_size)
        in_points = torch.as_tensor(coords, device=self.device)[:, None, :]
        in_labels = torch.ones(in_points.shape[0], 1, dtype=torch.int, device=self.device)
        with self._autocast():
            sparse, dense = self.model.prompt_encoder(points=(in_points, in_labels), boxes=None,
                                                      masks=None)
            decoder = self.model.mask_decoder
            decode = partial(decode_fused, decoder) if self.shared_decoder else decoder
            logits, iou = decode(
                image_embeddings=predictor.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        return logits, iou

    def _axes(self, crop_size: tuple[int, int]) -> tuple[_Axis, _Axis]:
        size = self.model.image_encoder.img_size
        in_h, in_w = self.predictor.input_size
        return (_Axis.build(in_h, crop_size[0], size, self.device),
                _Axis.build(in_w, crop_size[1], size, self.device))

    # ---------------------------------------------------------------- bounds and exact values

    def _bounds(
        self, logits: torch.Tensor, axes: tuple[_Axis, _Axis], boxes: bool, stability: bool
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
        overwritten by the next chunk. On the CPU the second resize is `_Separable` (the same
        arithmetic as the kernel, in two cheap passes) over chunks that fit in the cache.
        """
        size, low = self.model.image_encoder.img_size, logits.shape[-1]
        sep = _Separable.get(tuple(input_size), tuple(crop_size), logits.device)
        budget = _SEPARABLE_CHUNK_PIXELS if sep is not None else _CHUNK_PIXELS
        per = max(1, budget // max(1, crop_size[0] * crop_size[1]))
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
        bufs = sep.buffers(first) if sep is not None else None
        full = logits.new_empty(first, 1, *crop_size) if sep is None else None
        for i in range(0, len(logits), per):
            part = logits[i : i + per, None]
            k = len(part)
            if crop_first:
                up = upsample(part[..., : cells[0], : cells[1]], tuple(input_size), False,
                              float(factor), float(factor), out=mid[:k])
            else:
                up = upsample(part, (size, size), False, out=mid[:k])
                up = up[..., : input_size[0], : input_size[1]]
            if sep is not None:
                yield slice(i, i + k), sep(up[:, 0], [b[:k] for b in bufs])
            else:
                yield slice(i, i + k), upsample(up, tuple(crop_size), False, out=full[:k])[:, 0]

    def _exact(self, cands: _Candidates, crop_box: list[int], orig_size: tuple[int, int]):
        """Exact stability `(n,)` and crop-frame boxes `(n, 4) int64` by the stock upsampling."""
        crop_size = (crop_box[3] - crop_box[1], crop_box[2] - crop_box[0])
        stab = torch.empty(len(cands.iou), device=cands.logits.device)
        boxes = torch.empty(len(cands.iou), 4, dtype=torch.int64, device=cands.logits.device)
        buf = None
        for sl, full in self._upsample(cands.logits, cands.input_size, crop_size):
            if buf is None:
                buf = _CountBuffer(full.shape, full.device)
            stab[sl], rows, cols, _, _ = self._kept_stats(full, buf)
            boxes[sl] = _box_from_lines(rows > 0, cols > 0)
        self.stats.exact_fallback += len(cands.iou)
        return stab, boxes

    def _kept_stats(self, full: torch.Tensor, buf: _CountBuffer):
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

    def _resolve(self, cands: _Candidates, need: torch.Tensor, crop_box, orig_size) -> None:
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

    def _stability_filter(self, cands: _Candidates, crop_box, orig_size) -> _Candidates:
        b, t = cands.bounds, self.stability_score_thresh
        unsure = (b.stab_lo < t) & (b.stab_hi >= t) & ~b.exact
        self._resolve(cands, unsure, crop_box, orig_size)
        return cands.select(b.stab_lo >= t)

    def _edge_filter(self, cands: _Candidates, crop_box, orig_size) -> _Candidates:
        """The stock `is_box_near_crop_edge` filter (atol 20 px), decided on box intervals."""
        orig_box = [0, 0, orig_size[1], orig_size[0]]
        if list(crop_box) == orig_box or len(cands.iou) == 0:
            return cands  # a crop that is the whole image has no crop edges
        b = cands.bounds
        dev = b.box_lo.device
        off = _offset(crop_box, dev)
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

    # ---------------------------------------------------------------- kept masks

    def _finish(self, per_crop, owners: torch.Tensor, rows: torch.Tensor, orig_size):
        """Upsample the kept candidates once; exact records; small-region removal; RLE.

        The mask stack is built as `(N, W, H)` (each mask column-major, the order COCO RLE
        runs in, so `encode_rle_device` reads it without a transposed copy) and returned as
        its `(N, H, W)` view `masks_t.transpose(1, 2)`; voting flattens pixels in storage order.
        Stability, box and area of each chunk are counted while it is in the cache.
        """
        start = time.perf_counter()
        height, width = orig_size
        n = len(rows)
        # Zero-filled even where every pixel is written: the fill faults the fresh pages in
        # sequentially on all threads (0.5 s for 2.5 GB), where the per-mask transposes below
        # would fault them one scattered write at a time (about three times as long).
        masks_t = torch.zeros(n, width, height, dtype=torch.bool, device=self.device)
        stab = torch.empty(n, device=self.device)
        boxes = torch.empty(n, 4, dtype=torch.int64, device=self.device)
        areas = torch.empty(n, dtype=torch.int64, device=self.device)
        for c, (cands, crop_box) in enumerate(per_crop):
            pos = (owners == c).nonzero(as_tuple=True)[0]
            if len(pos) == 0:
                continue
            sub = cands.logits[rows[pos].to(cands.logits.device)]
            x0, y0, x1, y1 = crop_box
            # Which crop rows / columns hold a pixel, per mask: the boxes at the end, in one go.
            line_rows = torch.empty(n, y1 - y0, dtype=torch.uint8, device=self.device)
            line_cols = torch.empty(n, x1 - x0, dtype=torch.uint8, device=self.device)
            buf = None
            for sl, full in self._upsample(sub, cands.input_size, (y1 - y0, x1 - x0)):
                if buf is None:
                    buf = _CountBuffer(full.shape, full.device)
                at = pos[sl].to(self.device)
                k = len(at)
                stats = self._kept_stats(full, buf)
                stab[at], line_rows[at], line_cols[at], areas[at], mask = stats
                lo = int(at[0])
                if bool((at == torch.arange(lo, lo + k, device=at.device)).all()):
                    _copy_transposed(masks_t[lo : lo + k, x0:x1, y0:y1], mask)
                else:
                    masks_t[at, x0:x1, y0:y1] = mask.transpose(1, 2)
            pos = pos.to(self.device)
            boxes[pos] = _box_from_lines(line_rows[pos] > 0, line_cols[pos] > 0)
            boxes[pos] += _offset(crop_box, self.device).long()
        masks = masks_t.transpose(1, 2)
        _sync(self.device)
        start = self.stats.add("mask_upsample", start)
        iou = torch.cat([c.iou for c, _ in per_crop]) if per_crop else torch.zeros(0)
        first = torch.tensor([0] + [len(c.iou) for c, _ in per_crop]).cumsum(0)
        flat = (first[owners] + rows).to(iou.device)
        points = torch.cat([c.points + _offset(b, "cpu")[:2].double() for c, b in per_crop])
        crop_boxes = [per_crop[int(o)][1] for o in owners]
        iou, points = iou[flat], points[flat.cpu()]

        if self.min_mask_region_area > 0 and n:
            keep, masks, boxes = self._remove_small_regions(masks, boxes)
            self.stats.drop("min_mask_region_area", n, len(keep))
            start = self.stats.add("small_regions", start)
            iou, stab, points = iou[keep], stab[keep.to(stab.device)], points[keep.cpu()]
            crop_boxes = [crop_boxes[int(i)] for i in keep]
        rles = encode_rle_device(masks)
        if self.min_mask_region_area > 0 and n:
            areas = _rle_areas(rles)  # some masks changed: count them again
        else:
            areas = areas.tolist()
        start = self.stats.add("rle", start)
        records = []
        boxes_l, iou_l, stab_l = boxes.tolist(), iou.tolist(), stab.tolist()
        for i in range(len(rles)):
            x0, y0, x1, y1 = boxes_l[i]
            cx0, cy0, cx1, cy1 = crop_boxes[i]
            records.append({
                "segmentation": rles[i],
                "area": int(areas[i]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "predicted_iou": iou_l[i],
                "point_coords": [points[i].tolist()],
                "stability_score": stab_l[i],
                "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
            })
        self.stats.add("records", start)
        return masks, records

    def _remove_small_regions(self, masks: torch.Tensor, boxes: torch.Tensor):
        """The stock `postprocess_small_regions` on the kept masks (same order, same NMS).

        masks: `(N, H, W) bool`, any layout; the returned stack keeps it (rows taken from the
        storage tensor, so a column-major stack stays one)."""
        from segment_anything.utils.amg import batched_mask_to_box, remove_small_regions
        from torchvision.ops.boxes import batched_nms

        cpu = masks.cpu().numpy()
        new_masks, scores = [], []
        for mask in cpu:
            mask = np.ascontiguousarray(mask)  # OpenCV reads C-order arrays
            mask, changed = remove_small_regions(mask, self.min_mask_region_area, mode="holes")
            unchanged = not changed
            mask, changed = remove_small_regions(mask, self.min_mask_region_area, mode="islands")
            new_masks.append(mask)
            scores.append(float(unchanged and not changed))
        stack = torch.from_numpy(np.stack(new_masks))
        new_boxes = batched_mask_to_box(stack)
        keep = batched_nms(new_boxes.float(), torch.as_tensor(scores), torch.zeros(len(stack)),
                           iou_threshold=max(self.box_nms_thresh, self.crop_nms_thresh))
        changed = torch.as_tensor(scores)[keep] == 0.0
        transposed = not masks.is_contiguous() and masks.transpose(1, 2).is_contiguous()
        storage = masks.transpose(1, 2) if transposed else masks
        out_masks = storage[keep.to(masks.device)]
        out_boxes = boxes[keep.to(boxes.device)]
        if changed.any():
            sel = changed.nonzero(as_tuple=True)[0]
            new = stack[keep[sel]].to(masks.device)
            out_masks[sel.to(masks.device)] = new.transpose(1, 2) if transposed else new
            out_boxes[sel.to(boxes.device)] = new_boxes[keep[sel]].to(boxes.device)
        return keep, out_masks.transpose(1, 2) if transposed else out_masks, out_boxes

def _rle_areas(rles: list[dict[str, Any]]) -> list[int]:
    """Pixels set per COCO RLE (pycocotools, as the stock `area_from_rle` counts them)."""
    from pycocotools import mask as mask_utils

    coded = [dict(r, counts=r["counts"].encode()) for r in rles]
    # Chunks of < 256: pycocotools' area() overflows a uint8 on longer lists (numpy 2).
    return [int(a) for i in range(0, len(coded), 255) for a in mask_utils.area(coded[i : i + 255])]


def _box_from_lines(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
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


def _offset(crop_box: list[int], device: Any) -> torch.Tensor:
    x0, y0 = crop_box[0], crop_box[1]
    return torch.tensor([x0, y0, x0, y0], dtype=torch.float32, device=device)


def _cat(parts: list[_Candidates]) -> _Candidates:
    b = [p.bounds for p in parts]
    return _Candidates(
        torch.cat([p.logits for p in parts]),
        torch.cat([p.iou for p in parts]),
        torch.cat([p.points for p in parts]),
        _Bounds(*(torch.cat([getattr(x, f) for x in b])
                  for f in ("box_lo", "box_hi", "stab_lo", "stab_hi", "exact"))),
        parts[0].input_size,
    )


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


def _interval_nms(
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
