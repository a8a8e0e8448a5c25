"""The captioner: BLIP (`BlipForConditionalGeneration`) describes many crops per call."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ssa.engine.models import HFModel

# The original engine's captions were at most 20 tokens (transformers' default generation length).
MAX_NEW_TOKENS = 20


class Captioner(HFModel):
    """Unconditional image captions for batches of crops (`hwC uint8 RGB` each).

    Decoding is greedy, at most `max_new_tokens` of the model's generation config (saved with
    the model) or else MAX_NEW_TOKENS. BLIP's text decoder ignores the outer model's generation
    config, so the length is passed explicitly.
    """

    def __init__(self, model_id: str, device: str = "cpu", batch_size: int = 16) -> None:
        from transformers import BlipForConditionalGeneration

        super().__init__("captioner", BlipForConditionalGeneration, model_id, device, batch_size)
        config = getattr(self.model, "generation_config", None)
        self.max_new_tokens = getattr(config, "max_new_tokens", None) or MAX_NEW_TOKENS

    @torch.inference_mode()
    def __call__(self, crops: Sequence[np.ndarray]) -> list[str]:
        """One caption per crop, generated `batch_size` crops at a time (greedy decoding)."""
        captions: list[str] = []
        for i in range(0, len(crops), self.batch_size):
            batch = [np.ascontiguousarray(c) for c in crops[i : i + self.batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            ids = self.model.generate(
                pixel_values=inputs["pixel_values"], max_new_tokens=self.max_new_tokens,
                do_sample=False,
            )
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            captions += [t.strip() for t in texts]
        return captions
