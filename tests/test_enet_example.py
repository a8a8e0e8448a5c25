"""The ENet example plug-in (examples/enet_cityscapes.py) on the real Cityscapes frame, with
masks built from its ground-truth instance ids, through `ssa run --masks ... --segmentor py:...`.

Branch and voted maps are scored by `ssa eval`'s own code (`ssa.evaluation.evaluate.evaluate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CITY_STEM, CITYSCAPES, ENET, need
from PIL import Image
from test_plugins_run import write_masks_json
from typer.testing import CliRunner

from ssa.cli.commands import app
from ssa.datasets import read_cityscapes_gt
from ssa.evaluation.evaluate import evaluate

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "enet_cityscapes.py"


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
    _, _, report = evaluate("cityscapes", cityscapes_root, out)
    assert report["num_images"] == 1
    branch_miou, voted_miou = report["branch"]["miou"], report["miou"]
    gt = read_cityscapes_gt(need(CITYSCAPES) / f"{CITY_STEM}_gtFine_labelTrainIds.png")
    branch = np.asarray(Image.open(out / "frankfurt" / f"{CITY_STEM}_leftImg8bit_branch.png"))
    print(f"ENet {policy}: branch mIoU {branch_miou:.4f}, voted mIoU {voted_miou:.4f}")
    valid = gt != 255
    assert (branch[valid] == gt[valid]).mean() > 0.75  # the real ENet (README: about 0.80)
    assert voted_miou >= branch_miou, (branch_miou, voted_miou)
