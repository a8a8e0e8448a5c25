"""Hugging Face SAM-family mask sources (`hf:<hub id or folder>`): SAM, SAM-HQ, SAM 2 / 2.1 and
EdgeTAM through transformers' `SamModel`, `SamHQModel`, `Sam2Model` and `EdgeTamModel`.

Automatic generation gives the masks of transformers' `pipeline("mask-generation")` on the same
model, image and settings, with segment-anything's knob names (`knobs()`), and without the
pipeline's work outside the network: candidates stay at the decoder's resolution through the
predicted-IoU, stability, crop-edge and NMS decisions (`ssa.masks.fast_amg`'s exact low-resolution
bounds), only the kept masks are upsampled, RLE is encoded once. The prompts are decoded by
`ssa.masks.hf_decoder.SharedImageDecoder` (the model's own modules and weights, with what no
prompt changes computed once per encoded crop): `decoder="fast"` (default) in another float
summation order, `"exact"` with transformers' arithmetic bit for bit, `"stock"` the model's
forward per batch.

What the pipeline does, and so what this source does (it differs from segment-anything here):
- one NMS (`box_nms_thresh`, the pipeline's `crops_nms_thresh`) over the masks of all crops at
  once, scored by predicted IoU; `crop_nms_thresh` adds segment-anything's NMS across crops
  (preferring masks of smaller crops), off (1.0) by default since transformers has none;
- the stability filter keeps `stability > stability_score_thresh` (strict);
- SAM / SAM-HQ upsample logits as segment-anything does (to the padded input, crop, to the
  crop's size); SAM 2 / EdgeTAM resize them straight to the crop's size.
`min_mask_region_area` (the pipeline lacks it) is segment-anything's `remove_small_regions`
(holes, then islands) with its NMS preferring unchanged masks, for every model.

One deliberate difference: the pipeline scales SAM 2 / EdgeTAM grid points as if the image kept
its aspect ratio (SAM's longest-edge resize), but those models squash the image to a square, so
on a non-square image its prompts cover only part of it. Here SAM 2 points are scaled as
`Sam2Processor` scales user points (to the square input); on square images both agree.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

import numpy as np
import torch

from ssa.errors import SSAError, first_line
from ssa.masks.base import MaskResult
from ssa.masks.bilinear import Axis
from ssa.masks.candidates import Candidates, cat_candidates, crop_offset, sync_device
from ssa.masks.fast_amg import FastMaskGenerator
from ssa.masks.interval_nms import interval_nms
from ssa.masks.stats import Stats
from ssa.precision import autocast

# config.model_type -> geometry: "sam" (longest-edge resize, padded square input) or "sam2"
# (input squashed to a square). SAM 2.1 checkpoints are `sam2`; video configs hold the same
# image model (transformers' mask-generation mapping loads them as image models).
FAMILIES = {
    "sam": "sam",
    "sam_hq": "sam",
    "sam2": "sam2",
    "sam2_video": "sam2",
    "edgetam": "sam2",
    "edgetam_video": "sam2",
}

# Knob -> (pipeline method, its keyword) where transformers' pipeline has the knob.
_PIPELINE_KNOBS = {
    "points_per_side": ("preprocess", "points_per_crop"),
    "points_per_batch": ("preprocess", "points_per_batch"),
    "pred_iou_thresh": ("_forward", "pred_iou_thresh"),
    "stability_score_thresh": ("_forward", "stability_score_thresh"),
    "stability_score_offset": ("_forward", "stability_score_offset"),
    "box_nms_thresh": ("postprocess", "crops_nms_thresh"),
    "crop_n_layers": ("preprocess", "crops_n_layers"),
    "crop_overlap_ratio": ("preprocess", "crop_overlap_ratio"),
    "crop_n_points_downscale_factor": ("preprocess", "crop_n_points_downscale_factor"),
}
# Knobs transformers lacks: what turns them off (ssa's additions).
_EXTRA_KNOBS = {"crop_nms_thresh": 1.0, "min_mask_region_area": 0}


def knobs() -> dict[str, Any]:
    """Every automatic-generation knob of the `hf:` sources with its default: read off
    transformers' `MaskGenerationPipeline` (its stage signatures) and the models' `forward`
    (`multimask_output`); `crop_nms_thresh` and `min_mask_region_area` are ssa's, off.
    Floats stay floats (`stability_score_offset` is typed 1 there)."""
    from transformers import SamModel
    from transformers.pipelines.mask_generation import MaskGenerationPipeline

    out: dict[str, Any] = {}
    for knob, (method, keyword) in _PIPELINE_KNOBS.items():
        default = inspect.signature(getattr(MaskGenerationPipeline, method)).parameters[keyword]
        value = default.default
        out[knob] = float(value) if knob.endswith(("thresh", "offset", "ratio")) else value
    out.update(_EXTRA_KNOBS)
    out["multimask_output"] = inspect.signature(SamModel.forward).parameters[
        "multimask_output"].default
    return out


def resolve_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """`knobs()` with `settings` on top; an unknown key is an SSAError listing the valid ones."""
    out = knobs()
    for key, value in (settings or {}).items():
        if key not in out:
            raise SSAError(
                f"unknown --amg key {key!r} for hf: mask models; valid keys: "
                f"{', '.join(sorted(out))}"
            )
        out[key] = value
    if out["points_per_side"] is None or int(out["points_per_side"]) < 1:
        raise SSAError(f"points_per_side={out['points_per_side']!r}: pass a positive int")
    if int(out["points_per_batch"]) < 1:
        raise SSAError(f"points_per_batch={out['points_per_batch']!r}: pass a positive int")
    return out


def load_hf_mask_source(name: str, device: str = "cpu",
                        settings: dict[str, Any] | None = None,
                        precision: str = "fp32", decoder: str = "fast",
                        compile: bool = False) -> HFMaskSource:
    """The `hf:` mask source for a hub id or a local `save_pretrained` folder (model and image
    processor); decoder, compile: `HFMaskSource`'s. Offline (`HF_HUB_OFFLINE=1`) only folders and the local cache are read; weights
    load as transformers loads them (safetensors, or `weights_only` torch files)."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForMaskGeneration

    from ssa.hub import load_error, offline_kwargs

    local = offline_kwargs(name)  # HF_HUB_OFFLINE as set now, or an unreachable hub
    try:
        config = AutoConfig.from_pretrained(name, **local)
    except (OSError, ValueError) as exc:
        raise load_error("mask model", name, exc) from None
    model_type = getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise SSAError(
            f"hf:{name} is a {model_type!r} model, not a SAM-family mask generator; pass a "
            f"checkpoint whose config model_type is one of: {', '.join(FAMILIES)}"
        )
    try:
        model = AutoModelForMaskGeneration.from_pretrained(name, **local)
        processor = AutoImageProcessor.from_pretrained(name, **local)
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise SSAError(
            f"cannot load mask model hf:{name} ({first}); pass a folder with the model and its "
            f"image processor (save_pretrained both)"
        ) from None
    return HFMaskSource(model, processor, model_type, device=device, settings=settings,
                        name=name, precision=precision, decoder=decoder, compile=compile)


class _Encoded:
    """One crop through the image encoder: the model's embeddings and the crop's geometry.

    crop_box: XYXY in the image; crop_size `(h, w)`; input_size: `(h, w)` of the resized crop
    inside the encoder's input (before padding; the whole square for SAM 2)."""

    def __init__(self, embeddings: dict[str, Any], crop_box: list[int],
                 crop_size: tuple[int, int], input_size: tuple[int, int]) -> None:
        self.embeddings = embeddings
        self.crop_box = crop_box
        self.crop_size = crop_size
        self.input_size = input_size
        # Per decoder mode: the prompt-independent state (`hf_decoder.SharedImage`).
        self.shared: dict[str, Any] = {}


class HFMaskSource:
    """A transformers SAM-family model as a `MaskSource` (automatic generation) and a click/box
    predictor (`set_image` + `predict`).

    settings: knobs (see `knobs()`); unknown keys are refused. `stats` holds the last
    `generate`'s counters and per-stage seconds. precision: `ssa.precision` (`"fp32"` exact;
    `"bf16"`/`"fp16"`: the encoder and decoder under autocast, logits and IoUs cast back to
    float32 before any threshold). decoder: how automatic generation decodes its prompts:
    `"fast"` (default) or `"exact"` (`ssa.masks.hf_decoder.SharedImageDecoder`, the image
    side shared by all prompts; exact: transformers' arithmetic bit for bit; fast: reordered
    products, equal up to float rounding), or `"stock"` (the transformers model called per
    batch, as the pipeline does). Clicks and boxes (`predict`) always decode exactly.
    compile: `torch.compile` the vision encoder and the shared-image decoders' per-batch work
    (refused with one line where the device cannot compile, `ssa.precision`).
    """

    def __init__(self, model: Any, processor: Any, model_type: str, device: str = "cpu",
                 settings: dict[str, Any] | None = None, name: str = "",
                 precision: str = "fp32", decoder: str = "fast", compile: bool = False) -> None:
        from ssa.masks.hf_decoder import MODES, SharedImageDecoder
        from ssa.precision import check_device

        check_device(precision, compile, device)
        if decoder not in (*MODES, "stock"):
            raise SSAError(f"decoder {decoder!r}: pass one of {', '.join((*MODES, 'stock'))}")
        self.decoder = decoder
        self.precision = precision
        self.name = name
        self.model_type = model_type
        self.family = FAMILIES[model_type]
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.settings = resolve_settings(settings)
        size = processor.size
        # The pipeline's target size for point scaling (its `preprocess`).
        self.target_size = int(size.get("longest_edge", size.get("height")))
        if self.family == "sam":
            pad = processor.pad_size
            self.encoder_size = int(pad["height"])
            if int(pad["width"]) != self.encoder_size:
                raise SSAError(
                    f"hf:{name}: pad_size {dict(pad)} is not square; SAM-family processors pad "
                    f"to a square (height == width)"
                )
        else:
            self.encoder_size = None
        self.mask_threshold = 0.0  # the pipeline's and the processors' binarisation level
        self._decoders = {mode: SharedImageDecoder(self.model, model_type, mode) for mode in MODES}
        self.compiled = compile
        if compile:
            # The source's own model (load_hf_mask_source loaded it): its encoder is replaced.
            self.model.vision_encoder = torch.compile(self.model.vision_encoder, dynamic=False)
            for shared_decoder in self._decoders.values():
                shared_decoder.compile()
        self._post = _HFPostprocess(self)
        self._image: np.ndarray | None = None
        self._encoded: _Encoded | None = None

    @property
    def stats(self) -> Stats:
        return self._post.stats

    @staticmethod
    def knobs() -> dict[str, Any]:
        """The knobs and defaults of `hf:` sources (the module's `knobs()`)."""
        return knobs()

    # ---------------------------------------------------------------- encoder and decoder

    def _encode(self, image: np.ndarray, crop_box: list[int]) -> _Encoded:
        """Run the image encoder on `image[crop]` (`HWC uint8 RGB`), as the pipeline does."""
        x0, y0, x1, y1 = crop_box
        if not (image.flags.writeable and image.flags.c_contiguous):
            image = np.array(image)  # torch.from_numpy wants a writeable C-order array
        crop = torch.from_numpy(image).permute(2, 0, 1)[:, y0:y1, x0:x1]
        inputs = self.processor(images=[crop], return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.model.dtype)
        if "reshaped_input_sizes" in inputs:
            input_size = tuple(int(v) for v in inputs["reshaped_input_sizes"][0])
        else:
            input_size = tuple(int(v) for v in pixel_values.shape[-2:])
        with autocast(self.device, self.precision):
            out = self.model.get_image_embeddings(pixel_values)
        if isinstance(out, tuple):  # SAM-HQ: (embeddings, intermediate embeddings)
            emb = {"image_embeddings": out[0], "intermediate_embeddings": out[1]}
        else:
            emb = {"image_embeddings": out}
        return _Encoded(emb, list(crop_box), (y1 - y0, x1 - x0), input_size)

    def _scale_points(self, points: torch.Tensor, crop_size: tuple[int, int]) -> torch.Tensor:
        """Crop-frame pixel XY `(n, 2) float32` -> the prompt encoder's input frame.

        SAM: the pipeline's (and `SamProcessor`'s) longest-edge scaling; SAM 2: `Sam2Processor`'s
        scaling to the square input."""
        old_h, old_w = crop_size
        if self.family == "sam":
            scale = self.target_size * 1.0 / max(old_h, old_w)
            new_h, new_w = int(old_h * scale + 0.5), int(old_w * scale + 0.5)
        else:
            new_h = new_w = self.target_size
        coords = points.clone().float()
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def _decode(self, enc: _Encoded, coords: torch.Tensor | None, labels: torch.Tensor | None,
                boxes: torch.Tensor | None, multimask: bool,
                mode: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> low-res logits `(B, M, h, w)` and predicted IoUs `(B, M)` (float32).

        coords: `(B, K, 2)` in the prompt encoder's frame, labels `(B, K)`, boxes `(B, 4)`;
        points or boxes may be None. mode: the decoder (`self.decoder` by default)."""
        mode = mode or self.decoder
        kwargs: dict[str, Any] = {"input_points": None, "input_labels": None,
                                  "input_boxes": None}
        if coords is not None:
            kwargs["input_points"] = coords[None].to(self.device, self.model.dtype)
            kwargs["input_labels"] = labels[None].to(self.device)
        if boxes is not None:
            kwargs["input_boxes"] = boxes[None].to(self.device, self.model.dtype)
        with autocast(self.device, self.precision):
            if mode == "stock":
                out = self.model(**enc.embeddings, **kwargs, multimask_output=multimask)
                return out.pred_masks[0].float(), out.iou_scores[0].float()
            # The prompt encoder as the model's forward calls it; the decoder shares the image.
            sparse, _ = self.model.prompt_encoder(**kwargs, input_masks=None)
            decoder = self._decoders[mode]
            if mode not in enc.shared:
                enc.shared[mode] = decoder.prepare(enc.embeddings)
            logits, iou = decoder(enc.shared[mode], sparse, multimask)
        return logits.float(), iou.float()

    # ---------------------------------------------------------------- automatic generation

    def _crops(self, size: tuple[int, int]) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Crop boxes (XYXY) and each crop's point grid in `[0, 1]^2` (transformers' own
        `_generate_per_layer_crops` / `_build_point_grid`, the pipeline's layout; a grid per
        layer, so `crop_n_points_downscale_factor` works with crop layers too)."""
        from transformers.models.sam.image_processing_sam import (
            _build_point_grid,
            _generate_per_layer_crops,
        )

        s = self.settings
        boxes, layers = _generate_per_layer_crops(int(s["crop_n_layers"]),
                                                  float(s["crop_overlap_ratio"]), size)
        per_layer = [
            _build_point_grid(int(s["points_per_side"] / (s["crop_n_points_downscale_factor"] ** i)))
            for i in range(int(s["crop_n_layers"]) + 1)
        ]
        return boxes, [per_layer[i] for i in layers]

    @torch.inference_mode()
    def generate(self, image: np.ndarray, *, path: Any = None) -> MaskResult:
        """The masks of `image` (`HWC uint8 RGB`): records as `ssa.masks.base` states (COCO RLE
        `segmentation`) and the `(N, H, W) bool` stack on the device, in the pipeline's order."""
        _check_image(image)
        return self._post.run(image)

    # ---------------------------------------------------------------- prompting

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Encode `image` (`HWC uint8 RGB`) once; `predict` reuses it for every prompt."""
        _check_image(image)
        self._image = image
        self._encoded = self._encode(image, [0, 0, image.shape[1], image.shape[0]])

    def reset_image(self) -> None:
        self._image = None
        self._encoded = None

    @torch.inference_mode()
    def predict(self, points: np.ndarray | None, labels: np.ndarray | None,
                box: np.ndarray | None = None, multimask: bool = True) -> MaskResult:
        """One prompt -> its masks (3 with `multimask`, else 1), in the model's output order.

        points: `(K, 2)` pixel XY or None; labels: `(K,)` 1 foreground / 0 background; box:
        `(4,)` pixel XYXY or None. Masks are transformers' `post_process_masks` of the logits;
        records as in `generate`, `point_coords` the prompt's points, `crop_box` the image."""
        if self._encoded is None or self._image is None:
            raise SSAError("predict before set_image: call set_image(image) first")
        enc = self._encoded
        height, width = enc.crop_size
        if points is None and box is None:
            raise SSAError("predict needs points or a box; pass points=[(x, y)] or box=[x0, y0, x1, y1]")
        if points is not None:
            pts = torch.as_tensor(np.asarray(points, dtype=np.float32)).reshape(1, -1, 2)
            coords = self._scale_points(pts, enc.crop_size)
            lab = torch.as_tensor(np.asarray(labels if labels is not None else
                                             np.ones(len(pts[0])))).reshape(1, -1).long()
        else:
            coords = lab = None
        boxes = None
        if box is not None:
            b = torch.as_tensor(np.asarray(box, dtype=np.float32)).reshape(1, 2, 2)
            boxes = self._scale_points(b, enc.crop_size).reshape(1, 4)
        logits, iou = self._decode(enc, coords, lab, boxes, multimask,
                                   "stock" if self.decoder == "stock" else "exact")
        logits, iou = logits[0], iou[0]
        full = self._post_process(logits[None], enc)[0]  # (M, H, W) float
        masks = full > self.mask_threshold
        off = float(self.settings["stability_score_offset"])
        inter = (full > self.mask_threshold + off).flatten(1).sum(1).int()
        union = (full > self.mask_threshold - off).flatten(1).sum(1).int()
        stab = inter / union
        from ssa.io import encode_rle

        rles = encode_rle(masks.cpu().numpy())
        pts_list = [] if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2)
        records = []
        for i, rle in enumerate(rles):
            records.append({
                "segmentation": rle,
                "area": int(masks[i].sum()),
                "bbox": _xywh(masks[i]),
                "predicted_iou": float(iou[i]),
                "point_coords": [list(map(float, p)) for p in pts_list],
                "stability_score": float(stab[i]),
                "crop_box": [0, 0, width, height],
            })
        return MaskResult(records, masks)

    def _post_process(self, logits: torch.Tensor, enc: _Encoded) -> torch.Tensor:
        """transformers' `post_process_masks` (unbinarised) of `(B, M, h, w)` logits of `enc`."""
        kwargs: dict[str, Any] = {"binarize": False}
        if self.family == "sam":
            kwargs["reshaped_input_sizes"] = [list(enc.input_size)]
        return self.processor.post_process_masks(
            [logits.cpu()], [list(enc.crop_size)], **kwargs
        )[0].to(self.device)


def _check_image(image: Any) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == np.uint8):
        got = getattr(image, "shape", type(image).__name__)
        raise SSAError(f"image {got} is not HWC uint8 RGB; pass an (H, W, 3) uint8 array")


def _xywh(mask: torch.Tensor) -> list[int]:
    """segment-anything's box of one mask as `XYWH` (`[x0, y0, x1 - x0, y1 - y0]`, inclusive
    ends as `batched_mask_to_box` gives them; empty -> zeros)."""
    ys = mask.any(1).nonzero()
    xs = mask.any(0).nonzero()
    if len(ys) == 0:
        return [0, 0, 0, 0]
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]), int(ys[0]), int(ys[-1])
    return [x0, y0, x1 - x0, y1 - y0]


class _Geometry:
    """What `FastMaskGenerator`'s helpers read off a segment-anything model: the binarisation
    level and the encoder's square input size."""

    def __init__(self, mask_threshold: float, img_size: int | None) -> None:
        self.mask_threshold = mask_threshold
        self.image_encoder = type("Encoder", (), {"img_size": img_size})()


class _HFPostprocess(FastMaskGenerator):
    """`FastMaskGenerator`'s low-resolution decisions and kept-mask finishing, fed by a
    transformers decoder with the pipeline's rules (module docstring). Built without
    `FastMaskGenerator.__init__` (which wraps a segment-anything model): only the attributes
    its helpers read are set."""

    def __init__(self, source: HFMaskSource) -> None:
        s = source.settings
        self.source = source
        self.device = source.device
        self.model = _Geometry(source.mask_threshold, source.encoder_size)
        self.pred_iou_thresh = float(s["pred_iou_thresh"])
        self.stability_score_thresh = float(s["stability_score_thresh"])
        self.stability_score_offset = float(s["stability_score_offset"])
        self.box_nms_thresh = float(s["box_nms_thresh"])
        self.cross_crop_nms_thresh = float(s["crop_nms_thresh"])
        # What `_remove_small_regions` NMSes at: segment-anything's max(box, crop) where the
        # cross-crop NMS is on, else the one NMS of the pipeline.
        self.crop_nms_thresh = (self.box_nms_thresh if self.cross_crop_nms_thresh >= 1.0
                                else self.cross_crop_nms_thresh)
        self.crop_n_layers = int(s["crop_n_layers"])
        self.min_mask_region_area = int(s["min_mask_region_area"])
        self.points_per_batch = int(s["points_per_batch"])
        self.multimask = bool(s["multimask_output"])
        self.stats = Stats()

    # ------------------------------------------------------------ the pipeline's flow

    def run(self, image: np.ndarray) -> MaskResult:
        src = self.source
        self.stats = Stats()
        orig_size = image.shape[:2]
        crop_boxes, grids = src._crops(orig_size)
        per_crop = [self._crop(image, box, grid, orig_size) for box, grid in zip(crop_boxes, grids)]
        owners = torch.cat([torch.full((len(c.iou),), i) for i, (c, _) in enumerate(per_crop)])
        rows = torch.cat([torch.arange(len(c.iou)) for c, _ in per_crop])
        start = time.perf_counter()
        lo = torch.cat([c.bounds.box_lo.cpu() + crop_offset(b, "cpu") for c, b in per_crop])
        hi = torch.cat([c.bounds.box_hi.cpu() + crop_offset(b, "cpu") for c, b in per_crop])
        iou = torch.cat([c.iou.cpu() for c, _ in per_crop])

        def exact_boxes(idx: torch.Tensor) -> torch.Tensor:
            """Exact image-frame boxes of candidates `idx` (rows of the concatenation)."""
            out = torch.empty(len(idx), 4)
            for c in owners[idx].unique().tolist():  # one upsampling pass per crop
                at = (owners[idx] == c).nonzero(as_tuple=True)[0]
                cands, box = per_crop[c]
                sub = cands.select(rows[idx[at]].to(cands.iou.device))
                out[at] = self._exact(sub, box, orig_size)[1].float().cpu() + crop_offset(box, "cpu")
            return out

        # The pipeline's one NMS, over every crop's candidates, scored by predicted IoU.
        keep = interval_nms(lo, hi, iou, self.box_nms_thresh, exact_boxes, self.stats)
        owners, rows = owners[keep], rows[keep]
        if len(crop_boxes) > 1 and self.cross_crop_nms_thresh < 1.0:
            # segment-anything's NMS across crops: masks of smaller crops first.
            crop_xyxy = torch.tensor(crop_boxes, dtype=torch.float32)[owners]
            scores = 1 / ((crop_xyxy[:, 2] - crop_xyxy[:, 0]) * (crop_xyxy[:, 3] - crop_xyxy[:, 1]))
            sel = interval_nms(lo[keep], hi[keep], scores, self.cross_crop_nms_thresh,
                                lambda idx: exact_boxes(keep[idx]), self.stats)
            owners, rows = owners[sel], rows[sel]
        self.stats.add("post_nms", start)
        masks, records = self._finish(per_crop, owners, rows, orig_size)
        self.stats.kept = len(records)
        return MaskResult(records, masks)

    def _crop(self, image: np.ndarray, crop_box: list[int], grid: torch.Tensor,
              orig_size: tuple[int, int]) -> tuple[Candidates, list[int]]:
        """Candidates of one crop that pass the pipeline's per-batch filters (`filter_masks`),
        kept at low resolution with their box / stability bounds."""
        src = self.source
        start = time.perf_counter()
        enc = src._encode(image, crop_box)
        sync_device(self.device)
        start = self.stats.add("image_encoder", start)
        h, w = enc.crop_size
        points = grid * torch.tensor([w, h])  # crop-frame pixel XY, as the pipeline scales them
        coords = src._scale_points(points, enc.crop_size)
        batches, axes = [], None
        need_boxes = self.box_nms_thresh < 1.0 or list(crop_box) != [0, 0, orig_size[1],
                                                                     orig_size[0]] or (
            self.cross_crop_nms_thresh < 1.0)
        for i in range(0, len(points), self.points_per_batch):
            c = coords[i : i + self.points_per_batch, None]
            labels = torch.ones(c.shape[:2], dtype=torch.int64)
            logits, iou = src._decode(enc, c, labels, None, self.multimask)
            sync_device(self.device)
            start = self.stats.add("mask_decoder", start)
            m = logits.shape[1]
            pts = points[i : i + self.points_per_batch].double().repeat_interleave(m, 0)
            cands = Candidates(logits.flatten(0, 1), iou.flatten(0, 1), pts,
                                input_size=enc.input_size)
            self.stats.candidates += len(cands.iou)
            if axes is None:
                axes = self._hf_axes(enc, logits.shape[-1])
            if self.pred_iou_thresh > 0.0:
                cands = cands.select(cands.iou > self.pred_iou_thresh)
            cands.bounds = self._bounds(cands.logits, axes, boxes=need_boxes,
                                        stability=self.stability_score_thresh > 0.0)
            if self.stability_score_thresh > 0.0:
                cands = self._stability_filter(cands, crop_box, orig_size)
            cands = self._edge_filter(cands, crop_box, orig_size)
            batches.append(cands)
            sync_device(self.device)
            start = self.stats.add("mask_postprocess", start)
        return cat_candidates(batches), crop_box

    def _hf_axes(self, enc: _Encoded, low: int) -> tuple[Axis, Axis]:
        """Bilinear supports of the model's upsampling of `low x low` logits to the crop."""
        (in_h, in_w), (out_h, out_w) = enc.input_size, enc.crop_size
        if self.source.family == "sam2":  # one resize, low -> crop (the encoder size is `low`)
            in_h = in_w = size = low
        else:
            size = self.model.image_encoder.img_size
        return (Axis.build(in_h, out_h, size, self.device, low=low),
                Axis.build(in_w, out_w, size, self.device, low=low))

    def _stability_filter(self, cands: Candidates, crop_box, orig_size) -> Candidates:
        """transformers' rule: keep `stability > thresh` (segment-anything keeps `>=`)."""
        b, t = cands.bounds, self.stability_score_thresh
        unsure = (b.stab_lo <= t) & (b.stab_hi > t) & ~b.exact
        self._resolve(cands, unsure, crop_box, orig_size)
        return cands.select(b.stab_lo > t)

    def _upsample(self, logits: torch.Tensor, input_size: tuple[int, int],
                  crop_size: tuple[int, int]):
        """Full-resolution logits of the crop, chunked (see `FastMaskGenerator._upsample`).
        SAM / SAM-HQ: segment-anything's two resizes (the parent's); SAM 2: transformers'
        single bilinear resize `low -> crop`, bit for bit."""
        if self.source.family != "sam2":
            yield from super()._upsample(logits, input_size, crop_size)
            return
        from ssa.masks import candidates

        per = candidates.chunk_masks(crop_size[0] * crop_size[1], logits.device)
        first = min(per, len(logits))
        full = logits.new_empty(first, 1, *crop_size)
        upsample = torch._C._nn.upsample_bilinear2d
        for i in range(0, len(logits), per):
            part = logits[i : i + per]
            k = len(part)
            yield slice(i, i + k), upsample(part[:, None], tuple(crop_size), False,
                                            out=full[:k])[:, 0]


def load_hf_prompt_source(name: str, device: str = "cpu", precision: str = "fp32") -> HFMaskSource:
    """`hf:<name>` for clicks and boxes (`ssa predict`): the same source, prompted through
    `set_image` and `predict` (one encoder pass per image), in `precision`."""
    return load_hf_mask_source(name, device, {}, precision)
