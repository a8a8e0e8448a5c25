"""Voting policies on real labelled data: the OpenCV ENet (examples/enet_cityscapes.py) on the
Cityscapes fixture frame, with SAM-free masks built from the frame's ground truth.

    PYTHONPATH=. python scripts/benchmark_voting.py [--fixtures ../shared/fixtures] [--repeat 5]

Mask sources (all from `_gtFine_instanceIds.png`; ids >= 1000 are instances, id // 1000 the
labelId):
- `regions`:    one mask per instance and per connected region of every other labelId, a
                partition of the frame (oracle-quality masks, one class each);
- `categories`: connected regions of the Cityscapes category map (flat, construction, object,
                nature, sky, human, vehicle, void): masks that span several classes, like SAM's
                large masks that swallow small classes;
- `both`:       the two sets together, nested like SAM's multi-granularity output.
Scores: mIoU (mean over classes present in the ground truth or the prediction) and aAcc from one
confusion matrix, ignore 255, by `ssa.evaluation.metrics.ConfusionMatrix` (the code of `ssa eval`).

Then the time of one `vote` call per policy on a larger image: the real object masks of an
ADE20K full sample at half resolution with a random 150-class score map.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from ssa.datasets import read_cityscapes_gt
from ssa.evaluation.metrics import ConfusionMatrix
from ssa.segmentors.base import BranchOutput
from ssa.voting import vote

STEM = "frankfurt_000000_000294"
# cityscapesScripts `labels.py`: labelId -> category id (0 void, 1 flat, 2 construction,
# 3 object, 4 nature, 5 sky, 6 human, 7 vehicle).
CATEGORY = [0] * 7 + [1] * 4 + [2] * 6 + [3] * 4 + [4] * 2 + [5] + [6] * 2 + [7] * 8
POLICIES = [
    ("hard", 0.0), ("soft", 0.0), ("hard", 0.5), ("hard", 0.7), ("soft", 0.5), ("soft", 0.7),
]  # fmt: skip


def regions(ids: np.ndarray) -> list[np.ndarray]:
    import cv2

    out = []
    for value in np.unique(ids):
        count, comp = cv2.connectedComponents((ids == value).astype(np.uint8), connectivity=8)
        out += [comp == c for c in range(1, count)]
    return out


def mask_sources(instance_ids: np.ndarray) -> dict[str, np.ndarray]:
    label_ids = np.where(instance_ids >= 1000, instance_ids // 1000, instance_ids)
    instances = [instance_ids == i for i in np.unique(instance_ids) if i >= 1000]
    stuff = np.where(instance_ids >= 1000, -1, instance_ids)
    fine = instances + [m for m in regions(stuff) if not (stuff[m] == -1).any()]
    lut = np.array(CATEGORY)
    coarse = regions(lut[np.clip(label_ids, 0, len(lut) - 1)])
    return {
        "regions": np.stack(fine),
        "categories": np.stack(coarse),
        "both": np.stack(fine + coarse),
    }


def scores_of(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> tuple[float, float]:
    """mIoU and aAcc as fractions, by `ssa eval`'s confusion matrix."""
    scores = ConfusionMatrix(num_classes).update(pred, gt).compute()
    return scores["miou"], scores["aacc"]


def quality(fixtures: Path) -> list[str]:
    from enet_cityscapes import make

    city = fixtures / "cityscapes_sample"
    image = np.asarray(Image.open(city / f"{STEM}_leftImg8bit.png").convert("RGB"))
    gt = read_cityscapes_gt(city / f"{STEM}_gtFine_labelTrainIds.png").astype(np.int64)
    instance_ids = np.asarray(Image.open(city / f"{STEM}_gtFine_instanceIds.png")).astype(np.int64)
    seg = make(str(fixtures / "enet_cityscapes" / "enet-model.net"))
    branch = BranchOutput.from_raw(seg(image), 19, image.shape[:2])
    base_miou, base_acc = scores_of(branch.labels.numpy(), gt, 19)
    lines = [
        (
            f"ENet branch alone: mIoU {base_miou:.4f}, aAcc {base_acc:.4f} "
            f"({image.shape[1]}x{image.shape[0]} frame {STEM})"
        ),
        "",
        "| masks (count) | policy | min share | mIoU | aAcc | mIoU - branch |",
        "|---|---|---|---|---|---|",
    ]
    for name, masks in mask_sources(instance_ids).items():
        for policy, share in POLICIES:
            result = vote(
                torch.from_numpy(masks), branch.labels, 19, scores=branch,
                policy=policy, min_vote_share=share,
            )  # fmt: skip
            m, a = scores_of(result.label_map.numpy(), gt, 19)
            lines.append(
                f"| {name} ({len(masks)}) | {policy} | {share or '-'} | {m:.4f} | {a:.4f} | "
                f"{m - base_miou:+.4f} |"
            )
    return lines


def timing(fixtures: Path, repeat: int) -> list[str]:
    seg = np.asarray(Image.open(fixtures / "ade20k_full_samples" / "ADE_train_00016964_seg.png"))
    instances = seg[::2, ::2, 2].astype(np.int64)
    masks = torch.from_numpy(np.stack([instances == i for i in np.unique(instances) if i]))
    height, width = instances.shape
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn((150, height, width), generator=gen).softmax(dim=0)
    labels = scores.argmax(dim=0)
    lines = [
        (
            f"`vote` on {width}x{height} (ADE_train_00016964 at half resolution, its "
            f"{len(masks)} real object masks, random 150-class probabilities), best of "
            f"{repeat}, torch {torch.__version__}, {torch.get_num_threads()} threads:"
        ),
        "",
        "| policy | min share | seconds |",
        "|---|---|---|",
    ]
    for policy, share in POLICIES:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            vote(masks, labels, 150, scores=scores, policy=policy, min_vote_share=share)
            best = min(best, time.perf_counter() - start)
        lines.append(f"| {policy} | {share or '-'} | {best:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=ROOT / ".." / "shared" / "fixtures")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}")
    print("\n".join(quality(args.fixtures)))
    print()
    print("\n".join(timing(args.fixtures, args.repeat)))


if __name__ == "__main__":
    main()
