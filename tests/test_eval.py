"""`ssa eval` and `ssa run --eval`: file pairing, dataset conventions, errors, reports."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import CITY_STEM, CITYSCAPES, KEEP_ALL, make_image, need
from PIL import Image
from test_metrics import brute_force
from typer.testing import CliRunner

from ssa.cli.commands import app
from ssa.datasets import (
    ADE20K_CLASSES,
    CITYSCAPES_ID_TO_TRAINID,
    cityscapes_labelids_to_trainids,
    read_cityscapes_gt,
)
from ssa.errors import SSAError
from ssa.evaluation.evaluate import evaluate, plan_eval, score

runner = CliRunner()


def save_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def ade20k_tree(root: Path, n: int = 5, seed: int = 0, branch: bool = True):
    """An ADE20K-layout dataset with raw annotations (0 = other, 1..150), and predictions under
    root/preds: the branch is noisy, the voted map fixes part of its errors. Returns the
    (voted, branch) lists of (pred, gt-in-train-ids) pairs for a reference."""
    rng = np.random.default_rng(seed)
    voted_pairs, branch_pairs = [], []
    for i in range(n):
        h, w = 12 + i, 17 + 2 * i
        sub = Path("a" if i % 2 else "") / f"img_{i}.jpg"
        make_image(root / "images" / "validation" / sub, w, h, seed=i)
        raw = rng.integers(0, 12, (h, w)).astype(np.uint8)  # 0 = other; classes 0..10 only
        raw[0, :3] = 0
        save_png(root / "annotations" / "validation" / sub.with_suffix(".png"), raw)
        gt = np.where(raw == 0, 255, raw.astype(np.int64) - 1).astype(np.uint8)
        noisy = gt.copy()
        wrong = rng.random((h, w)) < 0.5
        noisy[wrong] = rng.integers(0, 14, wrong.sum())
        noisy[gt == 255] = rng.integers(0, 150, (gt == 255).sum())
        voted = noisy.copy()
        fix = rng.random((h, w)) < 0.5
        voted[fix] = gt[fix]
        voted[rng.random((h, w)) < 0.05] = 255  # "no label" on some labelled pixels
        voted[gt == 255] = 3
        out = root / "preds" / sub.parent
        save_png(out / f"{sub.stem}_semantic.png", voted)
        if branch:
            save_png(out / f"{sub.stem}_branch.png", noisy)
        voted_pairs.append((voted, gt))
        branch_pairs.append((noisy, gt))
    return voted_pairs, branch_pairs


def percent(value: float) -> float | None:
    return None if math.isnan(value) else 100 * value


def test_ade20k_matches_brute_force(tmp_path: Path) -> None:
    voted, branch = ade20k_tree(tmp_path)
    plan, counts, report = evaluate("ade20k", tmp_path, tmp_path / "preds", workers=3)
    assert plan.has_branch and counts.num_images == report["num_images"] == 5
    for got, pairs in ((report, voted), (report["branch"], branch)):
        ref = brute_force(pairs, 150)
        assert got["miou"] == pytest.approx(100 * ref["miou"])
        assert got["aacc"] == pytest.approx(100 * ref["aacc"])
        assert got["macc"] == pytest.approx(100 * ref["macc"])
        assert list(got["per_class"]) == list(ADE20K_CLASSES)
        for c, name in enumerate(ADE20K_CLASSES):
            assert got["per_class"][name]["iou"] == pytest.approx(percent(ref["iou"][c]))
            assert got["per_class"][name]["acc"] == pytest.approx(percent(ref["acc"][c]))
    # Class 12 is predicted, never labelled: IoU 0 counts in the mean, accuracy is undefined.
    assert report["per_class"]["person"] == {"iou": 0.0, "acc": None}
    assert report["per_class"]["flag"]["iou"] is None  # class 149 nowhere
    assert report["miou"] > report["branch"]["miou"]  # voting fixed errors


def test_shares_sum_to_the_whole(tmp_path: Path) -> None:
    ade20k_tree(tmp_path, n=6)
    plan = plan_eval("ade20k", tmp_path, tmp_path / "preds")
    whole = score(plan)
    parts = [score(plan, plan.items[r::3], workers=1) for r in range(3)]
    total = parts[0].merge(parts[1]).merge(parts[2])
    assert total.num_images == 6
    assert (total.voted.mat == whole.voted.mat).all()
    assert (total.branch.mat == whole.branch.mat).all()


def test_subset_of_images(tmp_path: Path) -> None:
    voted, _ = ade20k_tree(tmp_path, branch=False)
    rels = [Path("img_0.jpg"), Path("a/img_1.jpg")]
    _, _, report = evaluate("ade20k", tmp_path, tmp_path / "preds", rels=rels)
    assert report["num_images"] == 2 and "branch" not in report
    assert report["miou"] == pytest.approx(100 * brute_force(voted[:2], 150)["miou"])


def test_missing_prediction(tmp_path: Path) -> None:
    voted, _ = ade20k_tree(tmp_path, branch=False)
    (tmp_path / "preds" / "a" / "img_3_semantic.png").unlink()
    with pytest.raises(SSAError, match=r"1 of 5 images: a/img_3\.jpg.*--allow-missing"):
        plan_eval("ade20k", tmp_path, tmp_path / "preds")
    plan, _, report = evaluate("ade20k", tmp_path, tmp_path / "preds", allow_missing=True)
    assert plan.missing == [Path("a/img_3.jpg")] and report["num_images"] == 5
    gt = voted[3][1]
    pairs = voted[:3] + [(np.full_like(gt, 255), gt)] + voted[4:]
    assert report["miou"] == pytest.approx(100 * brute_force(pairs, 150)["miou"])


def test_missing_branch_map(tmp_path: Path) -> None:
    ade20k_tree(tmp_path)
    (tmp_path / "preds" / "img_0_branch.png").unlink()
    with pytest.raises(SSAError, match=r"_branch\.png prediction .* img_0\.jpg"):
        plan_eval("ade20k", tmp_path, tmp_path / "preds")


def test_size_mismatch_names_the_file(tmp_path: Path) -> None:
    ade20k_tree(tmp_path, branch=False)
    bad = tmp_path / "preds" / "img_2_semantic.png"
    save_png(bad, np.zeros((5, 5), np.uint8))
    with pytest.raises(SSAError, match=rf"{bad}.*5x5.*img_2\.png"):
        evaluate("ade20k", tmp_path, tmp_path / "preds")


def test_cityscapes_conversion_matches_official() -> None:
    """Our labelIds -> trainIds against the fixture's official `_labelTrainIds.png`.

    The fixture's two maps were downscaled separately, so they disagree on a few boundary
    pixels: every converted pixel must appear in the official map within one pixel, nearly all
    exactly, and each labelId's most common official trainId must be the table's."""
    src = need(CITYSCAPES)
    ids = np.asarray(Image.open(src / f"{CITY_STEM}_gtFine_labelIds.png")).astype(np.int64)
    ours = read_cityscapes_gt(src / f"{CITY_STEM}_gtFine_labelIds.png")
    official = np.asarray(Image.open(src / f"{CITY_STEM}_gtFine_labelTrainIds.png"))
    assert ours.dtype == np.uint8 and ours.shape == official.shape
    assert (ours == official).mean() > 0.995
    h, w = ours.shape
    padded = np.pad(official, 1, mode="edge")
    near = np.zeros((h, w), bool)
    for dy in range(3):
        for dx in range(3):
            near |= padded[dy : dy + h, dx : dx + w] == ours
    assert near.all()
    for label_id in np.unique(ids):
        values, counts = np.unique(official[ids == label_id], return_counts=True)
        assert values[counts.argmax()] == CITYSCAPES_ID_TO_TRAINID.get(int(label_id), 255)


def test_cityscapes_table_by_hand() -> None:
    ids = np.array([[-1, 0, 6, 7, 8, 9, 10, 11, 24, 26, 33, 34, 255]])
    expected = [255, 255, 255, 0, 1, 255, 255, 2, 11, 13, 18, 255, 255]
    assert cityscapes_labelids_to_trainids(ids).tolist() == [expected]


def test_cityscapes_eval_from_label_ids(cityscapes_root: Path, tmp_path: Path) -> None:
    """Only `_labelIds.png` present: scoring converts it; a perfect prediction scores 100."""
    gt_dir = cityscapes_root / "gtFine" / "val" / "frankfurt"
    (gt_dir / f"{CITY_STEM}_gtFine_labelTrainIds.png").unlink()
    train = read_cityscapes_gt(gt_dir / f"{CITY_STEM}_gtFine_labelIds.png")
    pred = train.copy()
    pred[train == 255] = 0
    save_png(tmp_path / "p" / "frankfurt" / f"{CITY_STEM}_leftImg8bit_semantic.png", pred)
    _, _, report = evaluate("cityscapes", cityscapes_root, tmp_path / "p")
    assert report["miou"] == 100.0 and report["aacc"] == 100.0
    assert report["per_class"]["train"]["iou"] is None


def folder_tree(root: Path, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(4)
    pairs = []
    for i in range(3):
        make_image(root / "imgs" / f"x{i}.png", 20, 10, seed=i)
        gt = rng.integers(0, len(names), (10, 20)).astype(np.uint8)
        gt[:2] = 255
        pred = np.where(rng.random((10, 20)) < 0.7, gt, rng.integers(0, len(names), (10, 20)))
        pred = pred.astype(np.uint8)
        save_png(root / "gt" / f"x{i}.png", gt)
        save_png(root / "out" / f"x{i}_semantic.png", pred)
        pairs.append((pred, gt))
    (root / "out" / "x1_semantic.json").write_text(json.dumps({"class_names": names}))
    return pairs


def test_folder_class_names(tmp_path: Path) -> None:
    names = ["sky", "tree", "road"]
    pairs = folder_tree(tmp_path, names)
    args = ("folder", tmp_path / "imgs", tmp_path / "out")
    _, _, report = evaluate(*args, gt_dir=tmp_path / "gt")
    assert list(report["per_class"]) == names
    assert report["miou"] == pytest.approx(100 * brute_force(pairs, 3)["miou"])
    (tmp_path / "names.txt").write_text("a\nb\n\nc\n")
    _, _, report = evaluate(*args, gt_dir=tmp_path / "gt", classes=tmp_path / "names.txt")
    assert list(report["per_class"]) == ["a", "b", "c"]
    with pytest.raises(SSAError, match="needs --gt-dir"):
        plan_eval(*args)
    (tmp_path / "out" / "x1_semantic.json").unlink()
    with pytest.raises(SSAError, match="--classes"):
        plan_eval(*args, gt_dir=tmp_path / "gt")
    with pytest.raises(SSAError, match="class 2, outside 0..1"):
        evaluate(*args, gt_dir=tmp_path / "gt", classes=["a", "b"])


def test_cli_json_and_csv(tmp_path: Path) -> None:
    voted, branch = ade20k_tree(tmp_path)
    out_json, out_csv = tmp_path / "r" / "scores.json", tmp_path / "r" / "scores.csv"
    result = runner.invoke(app, [
        "eval", "--dataset", "ade20k", "--data-dir", str(tmp_path),
        "--pred-dir", str(tmp_path / "preds"), "--json", str(out_json), "--csv", str(out_csv),
    ])
    assert result.exit_code == 0, result.output
    assert "mIoU" in result.output and "ΔIoU" in result.output
    data = json.loads(out_json.read_text())
    assert set(data) == {"miou", "aacc", "macc", "num_images", "per_class", "branch"}
    assert set(data["branch"]) == {"miou", "aacc", "macc", "num_images", "per_class"}
    assert list(data["per_class"]) == list(ADE20K_CLASSES)
    assert data["per_class"]["flag"] == {"iou": None, "acc": None}
    ref = brute_force(voted, 150)
    assert data["miou"] == pytest.approx(100 * ref["miou"])
    assert data["branch"]["miou"] == pytest.approx(100 * brute_force(branch, 150)["miou"])
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 150 and rows[0]["class"] == "wall" and rows[149]["class"] == "flag"
    assert rows[149]["iou"] == ""
    wall = rows[0]
    assert float(wall["iou"]) == pytest.approx(100 * ref["iou"][0], abs=1e-4)
    assert float(wall["delta_iou"]) == pytest.approx(
        float(wall["iou"]) - float(wall["branch_iou"]), abs=2e-4
    )


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    ade20k_tree(tmp_path, branch=False)
    (tmp_path / "preds" / "img_0_semantic.png").unlink()
    result = runner.invoke(app, ["eval", "--dataset", "ade20k", "--data-dir", str(tmp_path),
                                 "--pred-dir", str(tmp_path / "preds")])
    assert result.exit_code == 2
    assert "img_0.jpg" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["eval", "--dataset", "ade20k", "--data-dir", str(tmp_path),
                                 "--pred-dir", str(tmp_path / "preds"), "--allow-missing"])
    assert result.exit_code == 0, result.output
    assert "1 of 5 images had no prediction" in result.output


def test_run_eval_single_process(tmp_path: Path, sam_checkpoint: Path, segformer_5: Path) -> None:
    """`ssa run --eval` scores what the run wrote; the report equals a separate `ssa eval`."""
    make_image(tmp_path / "imgs" / "one.png", 48, 32)
    gt = np.zeros((32, 48), np.uint8)
    gt[16:] = 2
    gt[:4] = 255
    save_png(tmp_path / "gt" / "one.png", gt)
    amg = [f"--amg={k}={v}" for k, v in {**KEEP_ALL, "points_per_side": 2}.items()]
    common = ["--dataset", "folder", "--data-dir", str(tmp_path / "imgs")]
    result = runner.invoke(app, [
        "run", *common, "--out-dir", str(tmp_path / "out"), "--segmentor", f"hf:{segformer_5}",
        "--sam-model", "vit_b", "--sam-checkpoint", str(sam_checkpoint), "--device", "cpu",
        "--save-branch", "--eval", "--gt-dir", str(tmp_path / "gt"), *amg,
    ])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert report["num_images"] == 1
    assert list(report["per_class"]) == ["sky", "tree", "road", "car", "person"]
    from ssa.io import read_label_png

    for scores, name in ((report, "one_semantic.png"), (report["branch"], "one_branch.png")):
        ref = brute_force([(read_label_png(tmp_path / "out" / name), gt)], 5)
        assert scores["miou"] == pytest.approx(100 * ref["miou"]), name
        assert scores["aacc"] == pytest.approx(100 * ref["aacc"]), name
        for cls, iou in zip(report["per_class"], ref["iou"]):
            want = None if math.isnan(iou) else pytest.approx(100 * iou)
            assert scores["per_class"][cls]["iou"] == want, (name, cls)


def test_run_eval_folder_needs_gt_dir(tmp_path: Path) -> None:
    make_image(tmp_path / "imgs" / "one.png")
    result = runner.invoke(app, ["run", "--dataset", "folder", "--data-dir",
                                 str(tmp_path / "imgs"), "--out-dir", str(tmp_path / "o"),
                                 "--eval"])
    assert result.exit_code == 2 and "--gt-dir" in result.output


# The two-process `ssa run --eval` test (every image scored exactly once) belongs with
# `ssa/distributed.py`, which is not on this branch yet: see `EvalCounts.all_reduce`.


@pytest.mark.parametrize("mode", ["L", "I;16", "P"])
def test_read_label_map_matches_pil(tmp_path: Path, mode: str) -> None:
    """The fast reader returns the stored indices (palette indices for "P"), as PIL does."""
    from ssa.io import read_label_map

    rng = np.random.default_rng(0)
    high = 300 if mode == "I;16" else 256
    arr = rng.integers(0, high, (9, 13)).astype(np.uint16 if mode == "I;16" else np.uint8)
    img = Image.fromarray(arr) if mode != "P" else Image.fromarray(arr, mode="L").convert("P")
    if mode == "P":
        img.putpalette(list(rng.integers(0, 256, 768)))
    img.save(tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as ref:
        expected = np.asarray(ref).astype(np.int64)
    got = read_label_map(tmp_path / "m.png")
    assert got.shape == (9, 13) and (got.astype(np.int64) == expected).all()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(SSAError, match=r"rgb\.png has shape \(4, 4, 3\)"):
        read_label_map(tmp_path / "rgb.png")
