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
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ssa.masks.bilinear import Axis, CountBuffer, PlaneStats
from ssa.masks.candidates import (
    CandidateFilters,
    Candidates,
    box_from_lines,
    cat_candidates,
    covers_image,
    crop_offset,
    sync_device,
)
from ssa.masks.device_rle import encode_rle_device, rle_areas
from ssa.masks.interval_nms import interval_nms
from ssa.masks.stats import Stats


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


def _sharing_weights(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model`'s module tree whose parameters and buffers are `model`'s own tensors
    (no weight is copied): patching or replacing its modules leaves `model` unchanged."""
    import copy
    import itertools

    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


class FastMaskGenerator(CandidateFilters):
    """`SamAutomaticMaskGenerator`'s keywords and records, without its work outside the network.

    Extra keywords: `prompt_batch` (prompts per decoder call; default `points_per_batch` on
    CPU; on CUDA each decoder call's batch is sized from the free memory,
    `ssa.masks.memory.prompt_batch_for`), `max_gpu_memory` (GiB the generator may hold on CUDA
    while decoding, default 8), `precision` (`"fp32"` default and exact; `"bf16"` (CPU and
    CUDA) / `"fp16"` (CUDA) run the encoder and decoder under autocast, logits and IoUs cast
    back to float32 before every threshold; refused with one line where the device lacks it,
    `ssa.precision`), `sdpa` (fused attention in the image encoder; default on for CUDA, off
    on CPU; where it is off the encoder's attention runs chunked,
    `ssa.masks.sam_speedups.chunked_attention`), `compile` (`torch.compile` the encoder and
    decoder; default off; the compiled encoder keeps its stock attention).
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
        max_gpu_memory: float | None = None,
    ) -> None:
        from segment_anything import SamPredictor
        from segment_anything.utils.amg import build_all_layer_point_grids

        from ssa.errors import SSAError

        if (points_per_side is None) == (point_grids is None):
            raise SSAError("set exactly one of points_per_side and point_grids")
        if output_mode not in ("binary_mask", "coco_rle"):
            raise SSAError(f"output_mode {output_mode!r}: the fast generator gives binary_mask "
                           f"or coco_rle; use --amg-impl stock for uncompressed_rle")
        from ssa.precision import check_device

        check_device(precision, compile, torch.device(model.device))
        self.point_grids = (
            build_all_layer_point_grids(points_per_side, crop_n_layers,
                                        crop_n_points_downscale_factor)
            if points_per_side is not None else point_grids
        )
        self.device = torch.device(model.device)
        cuda = self.device.type == "cuda"
        self.sdpa = sdpa if sdpa is not None else cuda
        # SDPA and compiling change modules: they change this generator's own module tree,
        # which shares every weight with `model`; `model` stays as given (as SamPredictor's).
        self.model = _sharing_weights(model) if self.sdpa or compile else model
        self.predictor = SamPredictor(self.model)
        self.points_per_batch = points_per_batch
        self.prompt_batch = prompt_batch or (max(points_per_batch, 256) if cuda
                                             else points_per_batch)
        # Auto-sized per crop from the free GPU memory (`ssa.masks.memory`) unless given.
        self.auto_prompt_batch = cuda and prompt_batch is None
        self.max_gpu_memory = max_gpu_memory
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        # Encoder and decoder under autocast (CPU: bf16 only); everything after them in fp32.
        self.precision = precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if self.sdpa:
            from ssa.masks.sam_speedups import use_sdpa

            use_sdpa(self.model.image_encoder)
        # The compiled stock decoder where compiling was asked for (decode_fused would call
        # the uncompiled submodules).
        self.shared_decoder = not compile
        if compile:
            self.model.image_encoder = torch.compile(self.model.image_encoder, dynamic=False)
            self.model.mask_decoder = torch.compile(self.model.mask_decoder, dynamic=True)
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
            lo = torch.cat([c.bounds.box_lo + crop_offset(b, c.iou.device) for c, b in per_crop])
            hi = torch.cat([c.bounds.box_hi + crop_offset(b, c.iou.device) for c, b in per_crop])
            crop_xyxy = torch.tensor([b for _, b in per_crop], dtype=torch.float32)[owners]
            scores = 1 / ((crop_xyxy[:, 2] - crop_xyxy[:, 0]) * (crop_xyxy[:, 3] - crop_xyxy[:, 1]))

            def exact_boxes(idx: torch.Tensor) -> torch.Tensor:
                boxes = []
                for i in idx.tolist():
                    cands, box = per_crop[int(owners[i])]
                    one = rows[i : i + 1].to(cands.iou.device)
                    exact = self._exact(cands.select(one), box, orig_size)[1]
                    boxes.append(exact.float() + crop_offset(box, exact.device))
                return torch.cat(boxes)

            keep = interval_nms(lo.cpu(), hi.cpu(), scores, self.crop_nms_thresh, exact_boxes,
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
    ) -> tuple[Candidates, list[int]]:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        start = time.perf_counter()
        with self._autocast(), self._encoder_attention():
            self.predictor.set_image(crop)
        sync_device(self.device)
        start = self.stats.add("image_encoder", start)
        axes = self._axes(crop_size)

        points_scale = np.array(crop_size)[None, ::-1]
        points_for_image = self.point_grids[layer_idx] * points_scale
        batches = []
        for points in self._prompt_batches(points_for_image):
            logits, iou = self._decode(points, crop_size)
            sync_device(self.device)
            start = self.stats.add("mask_decoder", start)
            pts = torch.as_tensor(points.repeat(logits.shape[1], axis=0))
            cands = Candidates(logits.flatten(0, 1).float(), iou.flatten(0, 1).float(), pts,
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
            sync_device(self.device)
            start = self.stats.add("mask_postprocess", start)
        self.predictor.reset_image()
        cands = cat_candidates(batches)

        def exact_boxes(idx: torch.Tensor) -> torch.Tensor:
            return self._exact(cands.select(idx.to(cands.iou.device)), crop_box,
                               orig_size)[1].float().cpu()

        keep = interval_nms(cands.bounds.box_lo.cpu(), cands.bounds.box_hi.cpu(),
                             cands.iou.cpu(), self.box_nms_thresh, exact_boxes, self.stats)
        self.stats.drop("box_nms_thresh", len(cands.iou), len(keep))
        cands = cands.select(keep.to(cands.iou.device))
        self.stats.add("mask_postprocess", start)
        return cands, crop_box

    def _prompt_batches(self, points: np.ndarray):
        """`points` `(n, 2)` in batches of `prompt_batch`; on CUDA without an explicit
        `prompt_batch`, each batch sized from the memory free now (`ssa.masks.memory`), so the
        decoder's peak stays within `max_gpu_memory` (default 8 GB)."""
        if not self.auto_prompt_batch:
            for i in range(0, len(points), self.prompt_batch):
                yield points[i : i + self.prompt_batch]
            return
        from ssa.masks import memory

        budget = (memory.DEFAULT_BUDGET if self.max_gpu_memory is None
                  else int(self.max_gpu_memory * 1024**3))
        low = self.model.mask_decoder.output_upscaling  # (conv, norm, act, conv, act)
        channels = int(low[0].in_channels)
        hw = tuple(int(v) for v in self.predictor.features.shape[-2:])
        per = memory.per_prompt_bytes(hw, channels)
        start = 0
        while start < len(points):
            free, allocated = memory.cuda_memory(self.device)
            size = memory.prompt_batch_for(free, allocated, per, budget)
            self.prompt_batch = size
            yield points[start : start + size]
            start += size

    def _need_boxes(self, crop_box: list[int], orig_size: tuple[int, int]) -> bool:
        """Whether any decision reads a box: NMS that can suppress, or crop-edge filtering."""
        whole = covers_image(crop_box, orig_size)
        return self.box_nms_thresh < 1.0 or not whole or (
            self.crop_n_layers > 0 and self.crop_nms_thresh < 1.0
        )

    def _encoder_attention(self) -> Any:
        """Chunked encoder attention for this call where SDPA is not used (the model keeps its
        stock forwards outside it)."""
        from ssa.masks.sam_speedups import chunked_attention

        if self.sdpa or not self.shared_decoder:
            # A compiled encoder keeps the forwards it was traced with (inductor fuses them).
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

    def _axes(self, crop_size: tuple[int, int]) -> tuple[Axis, Axis]:
        size = self.model.image_encoder.img_size
        in_h, in_w = self.predictor.input_size
        return (Axis.build(in_h, crop_size[0], size, self.device),
                Axis.build(in_w, crop_size[1], size, self.device))

    # ---------------------------------------------------------------- kept masks

    def _finish(self, per_crop, owners: torch.Tensor, rows: torch.Tensor, orig_size):
        """Upsample the kept candidates once; exact records; small-region removal; RLE.

        The mask stack is built as `(N, W, H)` (each mask column-major, the order COCO RLE
        runs in, so `encode_rle_device` reads it without a transposed copy) and returned as
        its `(N, H, W)` view `masks_t.transpose(1, 2)`; voting flattens pixels in storage order.
        Stability, box and area of each chunk are counted while it is in the cache: on the CPU
        plane by plane in a thread per torch thread (`PlaneStats`, which also writes each mask
        into the stack), elsewhere by torch's kernels over the chunk (`CountBuffer`).
        """
        start = time.perf_counter()
        height, width = orig_size
        n = len(rows)
        cpu = self.device.type == "cpu"
        whole = len(per_crop) == 1 and covers_image(per_crop[0][1], orig_size)
        if cpu and whole:
            # Every pixel of every plane is written by `PlaneStats`, each plane whole by one
            # thread, which faults its fresh pages in as it goes.
            masks_t = torch.empty(n, width, height, dtype=torch.bool)
        else:
            # Zero-filled: the fill faults the fresh pages in sequentially on all threads,
            # where scattered writes would fault them one at a time (several times as long;
            # BENCHMARKS.md), and crops write only their windows.
            masks_t = torch.zeros(n, width, height, dtype=torch.bool, device=self.device)
        stab = torch.empty(n, device=self.device)
        boxes = torch.empty(n, 4, dtype=torch.int64, device=self.device)
        areas = torch.empty(n, dtype=torch.int64, device=self.device)
        with contextlib.ExitStack() as stack:
            if cpu:  # numpy and OpenCV, one plane per thread (`PlaneStats`)
                from concurrent.futures import ThreadPoolExecutor

                pool = stack.enter_context(ThreadPoolExecutor(
                    max(1, torch.get_num_threads()), thread_name_prefix="ssa-masks"))
                planes = masks_t.numpy().view(np.uint8)
            for c, (cands, crop_box) in enumerate(per_crop):
                pos = (owners == c).nonzero(as_tuple=True)[0]
                if len(pos) == 0:
                    continue
                sub = cands.logits[rows[pos].to(cands.logits.device)]
                x0, y0, x1, y1 = crop_box
                # Which crop rows / columns hold a pixel, per mask: the boxes at the end.
                line_rows = torch.empty(n, y1 - y0, dtype=torch.uint8, device=self.device)
                line_cols = torch.empty(n, x1 - x0, dtype=torch.uint8, device=self.device)
                buf = None
                for sl, full in self._upsample(sub, cands.input_size, (y1 - y0, x1 - x0)):
                    at = pos[sl].to(self.device)
                    if cpu:
                        buf = buf or PlaneStats(full.shape[1:], pool)
                        dst = [planes[i, x0:x1, y0:y1] for i in at.tolist()]
                        stats = self._plane_stats(full, buf, dst)
                        stab[at], line_rows[at], line_cols[at], areas[at] = stats
                        continue
                    buf = buf or CountBuffer(full.shape, full.device)
                    stab[at], line_rows[at], line_cols[at], areas[at], mask = (
                        self._kept_stats(full, buf))
                    masks_t[at, x0:x1, y0:y1] = mask.transpose(1, 2)
                pos = pos.to(self.device)
                boxes[pos] = box_from_lines(line_rows[pos] > 0, line_cols[pos] > 0)
                boxes[pos] += crop_offset(crop_box, self.device).long()
        masks = masks_t.transpose(1, 2)
        sync_device(self.device)
        start = self.stats.add("mask_upsample", start)
        iou = torch.cat([c.iou for c, _ in per_crop]) if per_crop else torch.zeros(0)
        first = torch.tensor([0] + [len(c.iou) for c, _ in per_crop]).cumsum(0)
        flat = (first[owners] + rows).to(iou.device)
        points = torch.cat([c.points + crop_offset(b, "cpu")[:2].double() for c, b in per_crop])
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
            areas = rle_areas(rles)  # some masks changed: count them again
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
