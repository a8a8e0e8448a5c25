"""The ENet example plug-in (examples/enet_cityscapes.py) on the real Cityscapes frame, with
masks built from its ground-truth instance ids, through `ssa run --masks ... --segmentor py:...`.

mIoU follows the convention of ssa's tables (one confusion matrix, ignore 255, mean over classes
present in the ground truth or the prediction). `ssa.metrics` is being written concurrently, so
this test carries its own small confusion-matrix function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CITY_STEM, CITYSCAPES, ENET, need
from PIL import Image
from test_plugins_run import write_masks_json
from typer.testing import CliRunner

from ssa.cli import app
from ssa.datasets import read_cityscapes_gt

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "enet_cityscapes.py"


def miou(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> float:
    pred, gt = np.asarray(pred, np.int64), np.asarray(gt, np.int64)  # uint8 would overflow
    valid = gt != 255
    p = np.where(pred[valid] < num_classes, pred[valid], num_classes)  # no label: a miss
    cm = np.bincount(gt[valid] * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    cm = cm.reshape(num_classes, num_classes + 1)[:, :num_classes]
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean())


def test_miou_hand_worked():
    gt = np.array([0, 0, 1, 1, 255], dtype=np.uint8)
    pred = np.array([0, 1, 1, 1, 0])
    # class 0: inter 1, union 2; class 1: inter 2, union 3 -> (0.5 + 0.667) / 2
    assert miou(pred, gt, 2) == pytest.approx((1 / 2 + 2 / 3) / 2)


def instance_masks(instance_ids: np.ndarray) -> np.ndarray:
    """Masks from a `_gtFine_instanceIds.png`: one per instance (ids >= 1000), and one per
    connected region of each other id (a labelId), so the masks cover the frame like SAM's."""
    import cv2

    masks = [instance_ids == i for i in np.unique(instance_ids) if i >= 1000]
    for label_id in np.unique(instance_ids[instance_ids < 1000]):
        count, comp = cv2.connectedComponents((instance_ids == label_id).astype(np.uint8), 8)
        masks += [comp == c for c in range(1, count)]
    return np.stack(masks)


def test_instance_masks_partition_the_frame():
    ids = np.array([[7, 7, 26001, 26001], [7, 11, 11, 26002], [11, 11, 7, 7]])
    masks = instance_masks(ids)
    assert (masks.sum(axis=0) == 1).all()  # a partition
    assert len(masks) == 5  # 2 instances, one region of 11, two of 7 (8-connectivity)


@pytest.mark.parametrize("policy", ["hard", "soft"])
def test_enet_voting_not_below_branch(cityscapes_root, tmp_path, policy):
    pytest.importorskip("cv2")
    model = need(ENET) / "enet-model.net"
    instance_png = need(CITYSCAPES) / f"{CITY_STEM}_gtFine_instanceIds.png"
    instance_ids = np.asarray(Image.open(instance_png)).astype(np.int64)
    masks = instance_masks(instance_ids)
    masks_dir = tmp_path / "masks"
    write_masks_json(masks_dir / "frankfurt" / f"{CITY_STEM}_leftImg8bit.json", masks)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(a) for a in (
        "run", "--dataset", "cityscapes", "--data-dir", cityscapes_root, "--out-dir", out,
        "--masks", masks_dir, "--segmentor", f"py:{EXAMPLE}:make",
        "--segmentor-arg", f"model={model}", "--vote", policy, "--save-branch", "--device", "cpu",
    )])  # fmt: skip
    assert result.exit_code == 0, result.output
    gt = read_cityscapes_gt(need(CITYSCAPES) / f"{CITY_STEM}_gtFine_labelTrainIds.png")
    stem = out / "frankfurt" / f"{CITY_STEM}_leftImg8bit"
    branch = np.asarray(Image.open(f"{stem}_branch.png")).astype(np.int64)
    voted = np.asarray(Image.open(f"{stem}_semantic.png")).astype(np.int64)
    branch_miou, voted_miou = miou(branch, gt, 19), miou(voted, gt, 19)
    print(f"ENet {policy}: branch mIoU {branch_miou:.4f}, voted mIoU {voted_miou:.4f}")
    valid = gt != 255
    assert (branch[valid] == gt[valid]).mean() > 0.75  # the real ENet (README: about 0.80)
    assert voted_miou >= branch_miou, (branch_miou, voted_miou)
