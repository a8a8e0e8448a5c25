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
from ssa.segmentors.base import BranchOutput, branch_output
from ssa.voting import hard_vote_counts, mask_areas, rank_votes, soft_vote_counts

_SUFFIXES = re.compile(r"(-other)?(-merged|-stuff)?$")


def clean_class_name(name: str) -> str:
    """A class name as a CLIP prompt: first synonym, no COCO-panoptic suffixes, spaces not dashes
    ("wall-other-merged" -> "wall", "dining table" stays, "windowpane;window" -> "windowpane")."""
    name = re.split(r"[;,]", name.strip().lower())[0].strip()
    name = _SUFFIXES.sub("", name)
    return re.sub(r"[-_]+", " ", name).strip()


def soft_mean(masks: torch.Tensor, branch: BranchOutput) -> torch.Tensor:
    """Mean class probability over each mask: `(N, H, W) bool` and the branch's scores ->
    `(N, C) float32`, summed band by band at full resolution (`soft_vote_counts`); an empty mask
    gets the image's mean, so it still has candidates."""
    sums = soft_vote_counts(masks, branch)
    area = mask_areas(masks).to(sums.device).view(-1, 1).float()
    image_mean = sum(band.sum(dim=(1, 2)) for _, _, band in branch.probability_bands())
    image_mean = image_mean / float(branch.size[0] * branch.size[1])
    return torch.where(area > 0, sums / area.clamp_min(1), image_mean.to(sums.device)[None])


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
        branch = branch_output(
            self.segmentor, self.segmentor(image), len(self.names), image.shape[:2], masks.device
        )
        hard = hard_vote_counts(masks, branch.labels, len(self.names))
        # Mean probabilities are < 1, so they only break ties between equal hard vote counts.
        score = hard + 0.999 * soft_mean(masks, branch)
        _, proposals, _ = rank_votes(score, m)
        return [[self.names[c] for c in row if c >= 0] for row in proposals.tolist()]
