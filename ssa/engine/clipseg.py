"""CLIPSeg segments each mask's crop with that mask's proposals; the mask takes the proposal that
wins most of its pixels. Crops go through the model in batches of (crop, prompt) pairs, and each
distinct prompt of an image is encoded once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ssa.engine.models import HFModel


class ClipSegNamer(HFModel):
    """`name(crops, crop_masks, proposals) -> one proposal index per crop`."""

    def __init__(self, model_id: str, device: str = "cpu", batch_size: int = 16) -> None:
        from transformers import CLIPSegForImageSegmentation

        super().__init__("clipseg", CLIPSegForImageSegmentation, model_id, device, batch_size)

    @torch.inference_mode()
    def prompt_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """`(T, D)` conditional embeddings of text prompts."""
        out = []
        for i in range(0, len(prompts), self.batch_size):
            group = list(prompts[i : i + self.batch_size])
            tokens = self.processor.tokenizer(
                group, padding=True, truncation=True, return_tensors="pt"
            ).to(self.device)
            out.append(self.model.get_conditional_embeddings(
                batch_size=len(group), input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
            ))
        return torch.cat(out)

    @torch.inference_mode()
    def logits(
        self, crops: Sequence[np.ndarray], proposals: Sequence[Sequence[str]]
    ) -> list[torch.Tensor]:
        """Per crop, `(k_i, h, w) float32` logits of its k_i prompts at the model's resolution."""
        prompts = list(dict.fromkeys(p for props in proposals for p in props))
        if not prompts:
            return [torch.zeros(0, 1, 1) for _ in crops]
        index = {p: i for i, p in enumerate(prompts)}
        cond = self.prompt_embeddings(prompts)
        per_crop = max(1, self.batch_size // max(1, max(len(p) for p in proposals)))
        out: list[torch.Tensor] = []
        for start in range(0, len(crops), per_crop):
            chunk = range(start, min(start + per_crop, len(crops)))
            images = [np.ascontiguousarray(crops[i]) for i in chunk]
            pixels = self.processor.image_processor(images=images, return_tensors="pt")
            pixels = pixels["pixel_values"].to(self.device)
            counts = [len(proposals[i]) for i in chunk]
            rows = torch.repeat_interleave(
                torch.arange(len(images), device=self.device),
                torch.tensor(counts, device=self.device),
            )
            prompt_ids = torch.tensor(
                [index[p] for i in chunk for p in proposals[i]],
                device=self.device, dtype=torch.long,
            )
            if len(prompt_ids) == 0:
                out += [torch.zeros(0, 1, 1) for _ in chunk]
                continue
            result = self.model(pixel_values=pixels[rows], conditional_embeddings=cond[prompt_ids])
            # One pair may come back as (h, w): keep the pair axis whatever the batch size.
            logits = result.logits.reshape(len(prompt_ids), *result.logits.shape[-2:]).float().cpu()
            out += list(torch.split(logits, counts))
        return out

    def name(
        self,
        crops: Sequence[np.ndarray],
        crop_masks: Sequence[np.ndarray],
        proposals: Sequence[Sequence[str]],
    ) -> list[int]:
        """Per crop, the index (into its proposals) of the top-1 of CLIPSeg's per-pixel argmax
        over the mask's pixels (`crop_masks[i]`: `hw bool`, the crop's size). Ties and masks
        without pixels go to the lowest index (CLIP's better-ranked proposal)."""
        winners = []
        for logits, mask in zip(self.logits(crops, proposals), crop_masks):
            if logits.shape[0] <= 1 or not mask.any():
                winners.append(0)
                continue
            up = F.interpolate(logits[None], size=mask.shape, mode="bilinear", align_corners=False)
            argmax = up[0].argmax(dim=0)[torch.from_numpy(mask)]
            winners.append(int(torch.bincount(argmax, minlength=logits.shape[0]).argmax()))
        return winners
