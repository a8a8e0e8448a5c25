"""The engine on one image: masks in, a free-form name and top-k proposals per mask out.

Per image, every stage runs once over all masks, in batches:
1. close-set candidates: both OneFormer models segment the whole image once; each mask takes
   its `max(3, k)` best classes from each (`closeset.py`);
2. the captioner describes every mask's context crop (1.6x its box); noun phrases of each
   caption are added to that mask's candidates (`nouns.py`);
3. CLIP scores each mask's candidates on its tight crop (1.2x) and keeps the top-k as
   `class_proposals` (`clip.py`);
4. CLIPSeg segments each context crop with its k proposals; the mask's `class_name` is the
   proposal that wins most of the mask's pixels in CLIPSeg's per-pixel argmax (`clipseg.py`).
   With k = 1 the name is the single proposal and CLIPSeg is not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ssa import io
from ssa.engine.captioner import Captioner
from ssa.engine.clip import ClipRanker
from ssa.engine.clipseg import ClipSegNamer
from ssa.engine.closeset import CloseSetVoter
from ssa.engine.crops import CLIP_SCALE, CONTEXT_SCALE, crop_images, enlarge, mask_boxes
from ssa.engine.nouns import noun_phrases
from ssa.errors import SSAError

MIN_CLOSESET = 3


@dataclass
class MaskNames:
    """The engine's answer for N masks (lists of length N)."""

    names: list[str | None]
    proposals: list[list[str]]
    scores: list[list[float]]
    captions: list[str]


def masks_from_records(
    records: list[dict[str, Any]], height: int, width: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """`(N, H, W) bool` masks and their COCO RLEs from SAM records (`HW bool` segmentation) or
    SA-1B records (RLE segmentation); a mask of another size than the image is an SSAError."""
    if not records:
        return np.zeros((0, height, width), dtype=bool), []
    if isinstance(records[0]["segmentation"], dict):
        rles = [r["segmentation"] for r in records]
        stack = np.stack([io.decode_rle(r) for r in rles])
    else:
        stack = np.stack([np.asarray(r["segmentation"], dtype=bool) for r in records])
        rles = io.encode_rle(stack)
    if stack.shape[1:] != (height, width):
        raise SSAError(
            f"masks are {stack.shape[2]}x{stack.shape[1]} but the image is {width}x{height}; "
            f"pass the masks made for this image"
        )
    return stack, rles


class EngineLabeller:
    """Owns the five models; `label(image, records)` names every mask of one image."""

    def __init__(
        self,
        models: dict[str, str],
        device: str = "cpu",
        batch_size: int = 16,
        top_k: int = 3,
        use_spacy: bool = True,
        precision: str = "fp32",
    ) -> None:
        """precision: the five models' matrix work under `ssa.precision.autocast` (fp32: as
        they are); scores are compared in float32."""
        if top_k < 1:
            raise SSAError(f"--top-k {top_k} must be at least 1")
        if batch_size < 1:
            raise SSAError(f"--batch-size {batch_size} must be at least 1")
        self.models = dict(models)
        self.device = torch.device(device)
        self.top_k = top_k
        self.use_spacy = use_spacy
        self.precision = precision
        self.closeset = [
            CloseSetVoter(role, models[role], device, batch_size=max(1, batch_size // 4))
            for role in ("oneformer_ade", "oneformer_coco")
        ]
        self.captioner = Captioner(models["captioner"], device, batch_size)
        self.clip = ClipRanker(models["clip"], device, batch_size)
        self.clipseg = ClipSegNamer(models["clipseg"], device, batch_size)

    def close_set(self, image: np.ndarray, masks: torch.Tensor) -> list[list[str]]:
        """Per mask, the union (in order, ADE20K first) of both segmentors' best classes."""
        m = max(MIN_CLOSESET, self.top_k)
        per_model = [voter.candidates(image, masks, m) for voter in self.closeset]
        return [list(dict.fromkeys(n for cands in row for n in cands)) for row in zip(*per_model)]

    def name_masks(
        self, image: np.ndarray, masks: torch.Tensor, close: list[list[str]]
    ) -> MaskNames:
        """Stages 2-4 for the masks given (all of an image, or one at a time for comparison)."""
        height, width = image.shape[:2]
        boxes = mask_boxes(masks)
        context = enlarge(boxes, CONTEXT_SCALE, width, height)
        context_crops = crop_images(image, context)
        captions = self.captioner(context_crops)
        candidates = [
            list(dict.fromkeys([*c, *noun_phrases(cap, self.use_spacy)]))
            for c, cap in zip(close, captions)
        ]
        tight_crops = crop_images(image, enlarge(boxes, CLIP_SCALE, width, height))
        proposals, scores = self.clip.rank(tight_crops, candidates, self.top_k)
        if self.top_k == 1:
            winners = [0] * len(proposals)
        else:
            np_masks = masks.cpu().numpy()
            crop_masks = [np_masks[i, y0:y1, x0:x1] for i, (x0, y0, x1, y1) in
                          enumerate(context.tolist())]
            winners = self.clipseg.name(context_crops, crop_masks, proposals)
        names = [props[w] if props else None for props, w in zip(proposals, winners)]
        return MaskNames(names, proposals, scores, captions)

    def label(self, image: np.ndarray, masks: Any) -> dict[str, Any]:
        """image: `HWC uint8 RGB`; masks: a mask source's `MaskResult` (or a list of SAM/SA-1B
        records) -> annotations (each record's fields, COCO RLE `segmentation`, `class_name`,
        `class_proposals`, `proposal_scores`, `caption`) and the `(N, H, W) bool` numpy masks."""
        from ssa.masks.base import MaskResult
        from ssa.run.outputs import jsonable as _jsonable

        height, width = image.shape[:2]
        if isinstance(masks, MaskResult):
            records = masks.records
            rles = [r["segmentation"] for r in records]
            stack = masks.masks.cpu().numpy()
            if stack.shape[1:] != (height, width):
                raise SSAError(
                    f"masks are {stack.shape[2]}x{stack.shape[1]} but the image is "
                    f"{width}x{height}; pass the masks made for this image"
                )
        else:
            records = masks
            stack, rles = masks_from_records(records, height, width)
        masks = torch.from_numpy(np.ascontiguousarray(stack)).to(self.device)
        if len(stack):
            from ssa.precision import autocast

            with autocast(self.device, self.precision):
                result = self.name_masks(image, masks, self.close_set(image, masks))
        else:
            result = MaskNames([], [], [], [])
        annotations = []
        for i, record in enumerate(records):
            ann = {k: _jsonable(v) for k, v in record.items() if k != "segmentation"}
            ann["segmentation"] = rles[i]
            ann["class_name"] = result.names[i]
            ann["class_proposals"] = result.proposals[i]
            ann["proposal_scores"] = result.scores[i]
            ann["caption"] = result.captions[i]
            annotations.append(ann)
        return {"annotations": annotations, "masks": stack}
