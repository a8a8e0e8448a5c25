"""Hugging Face segmentors: `AutoModelForSemanticSegmentation` (Segformer, UperNet, DPT, BEiT…)
and universal models (OneFormer with the semantic task input, Mask2Former, MaskFormer).
A SAM 3 config (`sam3`, `sam3_video`) is dispatched to `ssa.segmentors.sam3` (`hf_factory`).

Inference runs at the model's training scale, not squashed to a square: the image is resized
so its short side equals the training crop's short side, then covered by overlapping windows
of the training crop size (stride 2/3 of the crop) whose scores are averaged. The segmentor
returns these `(C, h, w)` scores at that working resolution; `BranchOutput` upsamples them to
the image's size band by band (labels, soft votes), so no `(C, H, W)` map is ever made.

Extreme aspect ratios: the working resolution is capped at `MAX_WORKING_CROPS` crop areas and
`MAX_UPSCALE` times the image, so the windows run along the long side, and a side the caps keep
below the crop is zero-padded (the mean colour) to the crop in each window; a 2x4000 strip with
a 512 crop is worked on at 8x16000 in 512x512 padded windows (not at 512x1024000: 78 GB of
scores at 150 classes). Within both caps (aspect ratio up to about 4:1, short side at least a
quarter of the crop) the working resolution is the training scale as before.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ssa.errors import SSAError, first_line
from ssa.hub import load_error, offline_kwargs, pretrained_kwargs, unpickling_refused

UNIVERSAL_TYPES = {"oneformer", "mask2former", "maskformer"}
# Working resolution caps: at most this many training crops' pixels (C x 4 x 512 x 512 floats,
# 630 MB at 150 classes), and never more than this many times the image's own side.
MAX_WORKING_CROPS = 4.0
MAX_UPSCALE = 4.0


def working_size(
    height: int, width: int, crop: tuple[int, int], resize: bool = True
) -> tuple[tuple[int, int], bool]:
    """The `(h, w)` an `H x W` image is worked on, and whether a cap bit: its short side at the
    crop's short side (`resize`; else its own size), within `MAX_UPSCALE` x the image and
    `MAX_WORKING_CROPS` crop areas (both keep the image's aspect ratio)."""
    crop_h, crop_w = crop
    wanted = min(crop_h, crop_w) / min(height, width) if resize else 1.0
    factor = min(wanted, MAX_UPSCALE,
                 math.sqrt(MAX_WORKING_CROPS * crop_h * crop_w / (height * width)))
    capped = factor < wanted
    if factor == 1.0:
        return (height, width), capped
    return (max(1, round(height * factor)), max(1, round(width * factor))), capped


def load_config(model_id: str) -> Any:
    """The model's `AutoConfig` (hub id or folder), or a one-line SSAError saying what to pass."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            model_id, trust_remote_code=False, **offline_kwargs(model_id))
    except (OSError, ValueError) as exc:
        raise load_error("segmentor", model_id, exc) from None


def is_sam3(model_id: str) -> bool:
    """Whether `hf:<model_id>` is a SAM 3 checkpoint (config model type sam3 / sam3_video)."""
    from ssa.segmentors.sam3 import SAM3_TYPES

    return load_config(model_id).model_type in SAM3_TYPES


def hf_factory(
    model_id: str,
    classes: Sequence[str] | None = None,
    prompts: Mapping[str, Sequence[str]] | None = None,
) -> Callable[..., Any]:
    """The factory for `hf:<model_id>`, recognised from its config: SAM 3 (prompted with the
    class names, `ssa.segmentors.sam3`) or `HFSegmentor` (a model trained on its classes)."""
    if is_sam3(model_id):
        from ssa.segmentors.sam3 import Sam3Segmentor

        return partial(Sam3Segmentor, model_id, classes, prompts)
    if prompts:
        raise SSAError(
            f"--prompts applies to SAM 3 segmentors; hf:{model_id} is trained on its own classes"
        )
    return partial(HFSegmentor, model_id)


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


def _windows(length: int, crop: int, stride: int) -> list[int]:
    if length <= crop:
        return [0]
    count = math.ceil((length - crop) / stride) + 1
    return sorted({min(i * stride, length - crop) for i in range(count)})


class HFSegmentor:
    """A Hugging Face segmentation model as a `Segmentor`: image -> `(C, h, w)` scores at the
    working resolution (`working_size`): averaged window logits (`scores_kind = "logits"`) or,
    for universal models, class mass (`"mass"`: class probability x mask probability summed
    over queries, normalised per pixel after upsampling).

    model_id: a hub id or a local `save_pretrained` folder. With `HF_HUB_OFFLINE=1` only the
    local cache and folders are used. `crop_size` overrides the training crop read from the
    image processor; `resize=False` keeps the image's own scale (within the working caps).
    precision: `ssa.precision` (`"fp32"` exact; `"bf16"`/`"fp16"`: the model's weights and
    inputs in that dtype, its scores cast back to float32 before anything reads them).
    """

    def __init__(
        self,
        model_id: str,
        device: str = "cpu",
        crop_size: int | None = None,
        resize: bool = True,
        batch_size: int = 4,
        precision: str = "fp32",
    ) -> None:
        from ssa.precision import check_device, torch_dtype

        check_device(precision, False, device)
        self.dtype = torch_dtype(precision)
        self.model_id = model_id
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.resize = resize
        config = load_config(model_id)
        self.universal = config.model_type in UNIVERSAL_TYPES
        self.scores_kind = "mass" if self.universal else "logits"
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

        kwargs = pretrained_kwargs(self.model_id)
        try:
            if self.universal:
                from transformers import AutoModelForUniversalSegmentation

                self.model = AutoModelForUniversalSegmentation.from_pretrained(
                    self.model_id, **kwargs
                )
            else:
                from transformers import AutoModelForSemanticSegmentation

                self.model = AutoModelForSemanticSegmentation.from_pretrained(
                    self.model_id, **kwargs
                )
            self.task_inputs = None
            if self.model_type == "oneformer":
                from transformers import AutoProcessor

                processor = AutoProcessor.from_pretrained(self.model_id, **kwargs)
                self.image_processor = processor.image_processor
                dummy = np.zeros((32, 32, 3), dtype=np.uint8)
                self.task_inputs = processor(
                    images=dummy, task_inputs=["semantic"], return_tensors="pt"
                )["task_inputs"].to(self.device)
            else:
                self.image_processor = AutoImageProcessor.from_pretrained(
                    self.model_id, **kwargs
                )
        except pickle.UnpicklingError:
            raise SSAError(unpickling_refused(f"segmentor hf:{self.model_id}")) from None
        except (OSError, ValueError) as exc:
            raise SSAError(
                f"cannot load segmentor hf:{self.model_id} ({first_line(exc, 200)}); pass a folder "
                f"with the model and its image processor (save_pretrained both)"
            ) from None
        self.model.to(self.device, self.dtype).eval()

    @property
    def num_classes(self) -> int:
        return len(self.id2label)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        """`(B, 3, h, w)` normalised windows -> `(B, C, h', w')` scores (logits or class mass) at
        the model's output resolution (upsampled to the window one window at a time)."""
        if self.universal:
            kwargs = {"pixel_values": batch.to(self.dtype)}
            if self.task_inputs is not None:
                kwargs["task_inputs"] = self.task_inputs.expand(batch.shape[0], -1)
            out = self.model(**kwargs)
            classes = out.class_queries_logits.softmax(dim=-1)[..., :-1]
            masks = out.masks_queries_logits.sigmoid()
            scores = torch.einsum("bqc,bqhw->bchw", classes, masks)
        else:
            scores = self.model(pixel_values=batch.to(self.dtype)).logits
        return scores.float()

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """image: `HWC uint8 RGB` -> `(C, h, w) float32` scores at the working resolution (see
        `scores_kind`; `ssa.segmentors.base.BranchOutput` makes full-resolution labels)."""
        height, width = image.shape[:2]
        # torch wants a writable array (the prefetch thread's images are read-only views);
        # nothing writes to it, so a copy is made only for those
        x = torch.from_numpy(np.require(image, requirements=("C", "W"))).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).float()
        crop_h, crop_w = self.crop
        size, capped = working_size(height, width, self.crop, self.resize)
        if size != (height, width):
            # Resized before normalising (the affine normalisation commutes with bilinear
            # weights): one full-resolution float copy of the image, not three.
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        x = (x.mul_(self._scale) - self._mean).div_(self._std)
        sh, sw = x.shape[-2:]
        win_h, win_w = min(crop_h, sh), min(crop_w, sw)
        # A side the caps kept below the crop (a strip) is padded to the crop in each window
        # (models have a minimum input size), and only its valid part is kept.
        pad_h = crop_h - win_h if capped else 0
        pad_w = crop_w - win_w if capped else 0
        stride_h, stride_w = max(1, win_h * 2 // 3), max(1, win_w * 2 // 3)
        boxes = [
            (y, xx) for y in _windows(sh, win_h, stride_h) for xx in _windows(sw, win_w, stride_w)
        ]
        total = torch.zeros((self.num_classes, sh, sw), device=self.device)
        hits = torch.zeros((1, sh, sw), device=self.device)
        for i in range(0, len(boxes), self.batch_size):
            group = boxes[i : i + self.batch_size]
            batch = torch.cat([x[..., y : y + win_h, xx : xx + win_w] for y, xx in group])
            if pad_h or pad_w:
                batch = F.pad(batch, (0, pad_w, 0, pad_h))  # 0 = the mean colour
            scores = self._forward(batch)
            for (y, xx), s in zip(group, scores):
                s = F.interpolate(s[None], size=(win_h + pad_h, win_w + pad_w), mode="bilinear",
                                  align_corners=False)[0, :, :win_h, :win_w]
                total[:, y : y + win_h, xx : xx + win_w] += s
                hits[:, y : y + win_h, xx : xx + win_w] += 1
        return total.div_(hits)
