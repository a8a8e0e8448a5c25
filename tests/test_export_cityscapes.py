"""`ssa export --format cityscapes`, scored by cityscapesscripts' own evaluation against the
real gtFine frame: the same mIoU as `ssa eval` on the run."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CITY_STEM
from export_run import blob_masks, invoke, write_masks_json
from PIL import Image


def city_run(root, tmp_path):
    """`ssa run --dataset cityscapes` with masks and branch labels made from the real frame's
    ground truth, perturbed (so the score is neither 0 nor 1)."""
    from ssa.datasets import read_cityscapes_gt

    rng = np.random.default_rng(5)
    gt = read_cityscapes_gt(root / "gtFine" / "val" / "frankfurt"
                            / f"{CITY_STEM}_gtFine_labelIds.png").astype(np.int64)  # fmt: skip
    height, width = gt.shape
    labels = gt.copy()
    labels[rng.random(gt.shape) < 0.2] = rng.integers(0, 19)
    labels[labels == 255] = rng.integers(0, 19)
    labels[:10, :10] = 255
    labels_dir, masks_dir = tmp_path / "labels" / "frankfurt", tmp_path / "masks" / "frankfurt"
    labels_dir.mkdir(parents=True)
    Image.fromarray(labels.astype(np.uint8)).save(labels_dir / f"{CITY_STEM}_leftImg8bit.png")
    write_masks_json(masks_dir / f"{CITY_STEM}_leftImg8bit.json",
                     blob_masks(rng, height, width, 12), rng)  # fmt: skip
    out = tmp_path / "run"
    result = invoke("run", "--dataset", "cityscapes", "--data-dir", root, "--out-dir", out,
                    "--masks", masks_dir.parent, "--segmentor", f"labels:{labels_dir.parent}",
                    "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def cityscapes_miou(pred_root, gt_files, export_file):
    """cityscapesscripts' pixel-level evaluation, configured in code (no environment)."""
    ev = pytest.importorskip(
        "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
        reason="the official Cityscapes evaluation needs the optional cityscapesscripts")

    args = ev.args
    args.predictionPath, args.predictionWalk = str(pred_root), None
    args.evalInstLevelScore, args.evalPixelAccuracy = False, False
    args.JSONOutput, args.quiet, args.colorized = False, True, False
    args.exportFile = str(export_file)
    preds = [ev.getPrediction(args, str(gt)) for gt in gt_files]
    return ev.evaluateImgLists(preds, [str(gt) for gt in gt_files], args)["averageScoreClasses"]


@pytest.mark.parametrize("with_data_dir", [True, False])
def test_cityscapes_scores_like_ssa_eval(cityscapes_root, tmp_path, with_data_dir):
    from ssa.datasets import CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_PALETTE
    from ssa.evaluation.evaluate import evaluate

    # Both sides read the same ground truth: `ssa eval` prefers `_labelTrainIds.png`, which in
    # the (downscaled) fixture differs from `_labelIds.png` in 77 pixels, so only the latter,
    # the file cityscapesscripts reads, is kept.
    for path in cityscapes_root.glob("gtFine/val/*/*_labelTrainIds.png"):
        path.unlink()
    out = city_run(cityscapes_root, tmp_path)
    export = tmp_path / "city_export"
    extra = ["--dataset", "cityscapes", "--data-dir", cityscapes_root] if with_data_dir else []
    result = invoke("export", "--format", "cityscapes", "--pred-dir", out, "--out", export,
                    *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    label_ids = export / "labelIds" / "frankfurt" / f"{CITY_STEM}_labelIds.png"
    colour = export / "color" / "frankfurt" / f"{CITY_STEM}_color.png"
    assert label_ids.is_file() and colour.is_file()

    gt_files = sorted((cityscapes_root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    theirs = cityscapes_miou(export / "labelIds", gt_files, tmp_path / "cs.json")
    _, _, report = evaluate("cityscapes", cityscapes_root, out)
    assert 0.05 < theirs < 0.95
    assert theirs == pytest.approx(report["miou"] / 100, abs=1e-4)

    # The PNGs: official labelIds (0 = unlabeled for no label) and the official colours.
    train = np.asarray(Image.open(out / "frankfurt" / f"{CITY_STEM}_leftImg8bit_semantic.png"))
    ids = np.asarray(Image.open(label_ids))
    to_train = dict(CITYSCAPES_ID_TO_TRAINID)
    mapped = np.vectorize(lambda v: to_train.get(int(v), 255))(ids)
    np.testing.assert_array_equal(mapped, train)
    assert (ids[train == 255] == 0).all() and (train == 255).any()
    rgb = np.asarray(Image.open(colour).convert("RGB"))
    palette = np.array(CITYSCAPES_PALETTE + ((0, 0, 0),), dtype=np.uint8)
    np.testing.assert_array_equal(rgb, palette[np.where(train == 255, 19, train)])
