"""The captioner: BLIP (`BlipForConditionalGeneration`) describes many crops per call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ssa.engine.models import load

MAX_NEW_TOKENS = 30


class Captioner:
    """Unconditional image captions for batches of crops (`hwC uint8 RGB` each)."""

    def __init__(self, model_id: str, device: str = "cpu", batch_size: int = 16) -> None:
        from transformers import AutoProcessor, BlipForConditionalGeneration

        self.model_id = model_id
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.processor = load("captioner", model_id, AutoProcessor.from_pretrained)
        self.model = load("captioner", model_id, BlipForConditionalGeneration.from_pretrained)
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def __call__(self, crops: Sequence[np.ndarray]) -> list[str]:
        """One caption per crop, generated `batch_size` crops at a time (greedy decoding)."""
        captions: list[str] = []
        for i in range(0, len(crops), self.batch_size):
            batch = [np.ascontiguousarray(c) for c in crops[i : i + self.batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            ids = self.model.generate(
                pixel_values=inputs["pixel_values"], max_new_tokens=MAX_NEW_TOKENS, do_sample=False
            )
            captions += [c.strip() for c in self.processor.batch_decode(ids, skip_special_tokens=True)]
        return captions
