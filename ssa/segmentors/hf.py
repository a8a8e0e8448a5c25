"""Hugging Face segmentors: `AutoModelForSemanticSegmentation` (Segformer, UperNet, DPT, BEiT…)
and universal models (OneFormer with the semantic task input, Mask2Former, MaskFormer).

Inference runs at the model's training scale, not squashed to a square: the image is resized
so its short side equals the training crop's short side, then covered by overlapping windows
of the training crop size (stride 2/3 of the crop) whose scores are averaged, upsampled to the
image's full resolution, and turned into probabilities.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssa.errors import SSAError

UNIVERSAL_TYPES = {"oneformer", "mask2former", "maskformer"}


def _crop_size(processor: Any, override: int | None) -> tuple[int, int]:
    if override:
        return override, override
    size = getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {}
    if isinstance(size, int):
        return size, size
    size = dict(size)
    if "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    return 512, 512


def offline_kwargs() -> dict[str, Any]:
    """`from_pretrained` keywords for `HF_HUB_OFFLINE` as set now: huggingface_hub reads the
    variable once, at import, and otherwise retries the hub for about 20 s before failing."""
    return {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE") == "1" else {}


def load_error(kind: str, model_id: str, exc: BaseException) -> SSAError:
    """One line for a Hugging Face model that cannot be loaded: what failed (the first line of
    `exc`) and what to do; offline (`HF_HUB_OFFLINE=1`) it names the cache to put it in."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if offline:
        from huggingface_hub import constants

        hint = (
            f"it is not in the local cache (HF_HUB_OFFLINE=1); download it where the hub is "
            f"reachable (`hf download {model_id}`) into the cache {constants.HF_HUB_CACHE}, or "
            f"pass a local save_pretrained folder"
        )
    else:
        hint = (
            "pass a hub id or a local save_pretrained folder; offline, download it elsewhere "
            "and pass the folder"
        )
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return SSAError(f"cannot load {kind} hf:{model_id} ({first}); {hint}")


def _windows(length: int, crop: int, stride: int) -> list[int]:
    if length <= crop:
        return [0]
    count = math.ceil((length - crop) / stride) + 1
    return sorted({min(i * stride, length - crop) for i in range(count)})


class HFSegmentor:
    """A Hugging Face segmentation model as a `Segmentor`: image -> `(C, H, W)` probabilities.

    model_id: a hub id or a local `save_pretrained` folder. With `HF_HUB_OFFLINE=1` only the
    local cache and folders are used. `crop_size` overrides the training crop read from the
    image processor; `resize=False` keeps the image's own scale.
    """

    def __init__(
        self,
        model_id: str,
        device: str = "cpu",
        crop_size: int | None = None,
        resize: bool = True,
        batch_size: int = 4,
    ) -> None:
        from transformers import AutoConfig

        self.model_id = model_id
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.resize = resize
        try:
            config = AutoConfig.from_pretrained(model_id, **offline_kwargs())
        except (OSError, ValueError) as exc:
            raise load_error("segmentor", model_id, exc) from None
        self.universal = config.model_type in UNIVERSAL_TYPES
        self.model_type = config.model_type
        self._load(config)
        self.id2label = {int(k): str(v) for k, v in self.model.config.id2label.items()}
        self.crop = _crop_size(self.image_processor, crop_size)
        mean = getattr(self.image_processor, "image_mean", None) or [0.485, 0.456, 0.406]
        std = getattr(self.image_processor, "image_std", None) or [0.229, 0.224, 0.225]
        scale = getattr(self.image_processor, "rescale_factor", 1 / 255)
        if not getattr(self.image_processor, "do_rescale", True):
            scale = 1.0
        self._scale = float(scale)
        self._mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    def _load(self, config: Any) -> None:
        from transformers import AutoImageProcessor

        try:
            if self.universal:
                from transformers import AutoModelForUniversalSegmentation

                self.model = AutoModelForUniversalSegmentation.from_pretrained(self.model_id)
            else:
                from transformers import AutoModelForSemanticSegmentation

                self.model = AutoModelForSemanticSegmentation.from_pretrained(self.model_id)
            self.task_inputs = None
            if self.model_type == "oneformer":
                from transformers import AutoProcessor

                processor = AutoProcessor.from_pretrained(self.model_id)
                self.image_processor = processor.image_processor
                dummy = np.zeros((32, 32, 3), dtype=np.uint8)
                self.task_inputs = processor(
                    images=dummy, task_inputs=["semantic"], return_tensors="pt"
                )["task_inputs"].to(self.device)
            else:
                self.image_processor = AutoImageProcessor.from_pretrained(self.model_id)
        except (OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SSAError(
                f"cannot load segmentor hf:{self.model_id} ({first}); pass a folder with the "
                f"model and its image processor (save_pretrained both)"
            ) from None
        self.model.to(self.device).eval()

    @property
    def num_classes(self) -> int:
        return len(self.id2label)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """`(B, 3, h, w)` normalised windows -> `(B, C, h, w)` scores (logits or class mass)."""
        h, w = batch.shape[-2:]
        if self.universal:
            kwargs = {"pixel_values": batch}
            if self.task_inputs is not None:
                kwargs["task_inputs"] = self.task_inputs.expand(batch.shape[0], -1)
            out = self.model(**kwargs)
            classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]
            masks = out.masks_queries_logits.sigmoid()
            scores = torch.einsum("bqc,bqhw->bchw", classes, masks)
        else:
            scores = self.model(pixel_values=batch).logits
        return F.interpolate(scores.float(), size=(h, w), mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """image: `HWC uint8 RGB` -> `(C, H, W) float32` probabilities at full resolution."""
        height, width = image.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).float() * self._scale
        x = (x - self._mean) / self._std
        crop_h, crop_w = self.crop
        if self.resize:
            factor = min(crop_h, crop_w) / min(height, width)
            size = (max(1, round(height * factor)), max(1, round(width * factor)))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        sh, sw = x.shape[-2:]
        win_h, win_w = min(crop_h, sh), min(crop_w, sw)
        stride_h, stride_w = max(1, win_h * 2 // 3), max(1, win_w * 2 // 3)
        boxes = [
            (y, xx) for y in _windows(sh, win_h, stride_h) for xx in _windows(sw, win_w, stride_w)
        ]
        total = torch.zeros((1, self.num_classes, sh, sw), device=self.device)
        hits = torch.zeros((1, 1, sh, sw), device=self.device)
        for i in range(0, len(boxes), self.batch_size):
            group = boxes[i : i + self.batch_size]
            batch = torch.cat([x[..., y : y + win_h, xx : xx + win_w] for y, xx in group])
            scores = self._forward(batch)
            for (y, xx), s in zip(group, scores):
                total[..., y : y + win_h, xx : xx + win_w] += s
                hits[..., y : y + win_h, xx : xx + win_w] += 1
        mean = total / hits
        del total
        full = F.interpolate(mean, size=(height, width), mode="bilinear", align_corners=False)[0]
        # In place: at full resolution a 150-class map of a 2200x1467 image is 1.9 GB.
        if not self.universal:
            full -= full.amax(dim=0, keepdim=True)
            full.exp_()
        # Universal models give class mass (class prob x mask prob summed over queries).
        full /= full.sum(dim=0, keepdim=True).clamp_min_(1e-12)
        return full
