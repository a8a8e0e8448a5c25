"""CLIP ranks each mask's candidate names on its crop; every crop and every distinct name of an
image goes through the model once, in batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ssa.engine.models import HFModel, features


class ClipRanker(HFModel):
    """`rank(crops, candidates, k)`: the top-k of each crop's own candidate names."""

    def __init__(self, model_id: str, device: str = "cpu", batch_size: int = 16) -> None:
        from transformers import CLIPModel

        super().__init__("clip", CLIPModel, model_id, device, batch_size)

    @torch.inference_mode()
    def image_features(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """`(N, D) float32` unit-norm image embeddings of `hwC uint8 RGB` crops."""
        out = []
        for i in range(0, len(crops), self.batch_size):
            batch = [np.ascontiguousarray(c) for c in crops[i : i + self.batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            out.append(features(self.model.get_image_features(pixel_values=pixels.to(self.device))))
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)

    @torch.inference_mode()
    def text_features(self, names: Sequence[str]) -> torch.Tensor:
        """`(T, D) float32` unit-norm text embeddings of names."""
        out = []
        for i in range(0, len(names), self.batch_size):
            tokens = self.processor.tokenizer(
                list(names[i : i + self.batch_size]), padding=True, truncation=True,
                return_tensors="pt",
            ).to(self.device)
            out.append(features(self.model.get_text_features(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )))
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)

    def rank(
        self, crops: Sequence[np.ndarray], candidates: Sequence[Sequence[str]], k: int
    ) -> tuple[list[list[str]], list[list[float]]]:
        """Per crop, its `min(k, len(candidates))` best candidates and their probabilities
        (softmax of CLIP's scaled cosine over that crop's candidates); ties keep candidate order."""
        names = list(dict.fromkeys(n for cands in candidates for n in cands))
        if not crops or not names:
            return [[] for _ in crops], [[] for _ in crops]
        index = {n: i for i, n in enumerate(names)}
        logits = self.image_features(crops) @ self.text_features(names).T  # (N, T)
        logits = logits * self.model.logit_scale.exp().float().cpu().item()
        logits = logits.cpu()
        top_names, top_probs = [], []
        for row, cands in zip(logits, candidates):
            cols = torch.tensor([index[c] for c in cands], dtype=torch.long)
            probs = row[cols].softmax(dim=0)
            order = torch.sort(probs, descending=True, stable=True).indices[: max(1, k)]
            top_names.append([cands[j] for j in order.tolist()])
            top_probs.append([round(float(probs[j]), 6) for j in order.tolist()])
        return top_names, top_probs
