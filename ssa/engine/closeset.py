"""Close-set candidates: the classes a closed-vocabulary segmentor (OneFormer, ADE20K or COCO)
votes for inside each mask.

Each mask ranks the segmentor's classes by hard votes (pixels whose argmax is the class, as in
`ssa.voting`), ties (and classes without votes) broken by the class's mean probability over the
mask, so every mask gets `m` candidates even where one class takes all its pixels.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from ssa.engine.models import load
from ssa.voting import hard_vote_counts, rank_votes

_SUFFIXES = re.compile(r"(-other)?(-merged|-stuff)?$")


def clean_class_name(name: str) -> str:
    """A class name as a CLIP prompt: first synonym, no COCO-panoptic suffixes, spaces not dashes
    ("wall-other-merged" -> "wall", "dining table" stays, "windowpane;window" -> "windowpane")."""
    name = re.split(r"[;,]", name.strip().lower())[0].strip()
    name = _SUFFIXES.sub("", name)
    return re.sub(r"[-_]+", " ", name).strip()


# Cap on mask elements cast to float at once (about 128 MB of float32).
_CHUNK_ELEMENTS = 1 << 25


def soft_mean(masks: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Mean class probability over each mask: `(N, H, W) bool`, `(C, H, W)` -> `(N, C) float32`
    (an empty mask gets the image's mean, so it still has candidates)."""
    num = masks.shape[0]
    flat_probs = probs.reshape(probs.shape[0], -1).float()
    out = torch.zeros(num, probs.shape[0], device=probs.device)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, flat_probs.shape[1]))
    for i in range(0, num, chunk):
        flat = masks[i : i + chunk].reshape(-1, flat_probs.shape[1]).to(flat_probs.dtype)
        area = flat.sum(dim=1, keepdim=True)
        mean = (flat @ flat_probs.T) / area.clamp_min(1)
        out[i : i + chunk] = torch.where(area > 0, mean, flat_probs.mean(dim=1)[None])
    return out


class CloseSetVoter:
    """A closed-vocabulary segmentor turned into per-mask candidate names."""

    def __init__(self, role: str, model_id: str, device: str = "cpu", batch_size: int = 4) -> None:
        from ssa.segmentors.hf import HFSegmentor

        self.segmentor = load(
            role, model_id, lambda mid: HFSegmentor(mid, device=device, batch_size=batch_size)
        )
        ids = sorted(self.segmentor.id2label)
        self.names = [clean_class_name(self.segmentor.id2label[i]) for i in ids]

    def candidates(self, image: np.ndarray, masks: torch.Tensor, m: int) -> list[list[str]]:
        """image: `HWC uint8 RGB`; masks: `(N, H, W) bool` on the segmentor's device -> per mask
        its `m` best class names (fewer when the segmentor has fewer classes), best first."""
        if masks.shape[0] == 0:
            return []
        probs = self.segmentor(image)  # (C, H, W) probabilities
        hard = hard_vote_counts(masks.to(probs.device), probs.argmax(dim=0), probs.shape[0])
        # Mean probabilities are < 1, so they only break ties between equal hard vote counts.
        score = hard + 0.999 * soft_mean(masks.to(probs.device), probs)
        _, proposals, _ = rank_votes(score, m)
        return [[self.names[c] for c in row if c >= 0] for row in proposals.tolist()]
