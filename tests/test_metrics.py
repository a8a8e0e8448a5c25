"""Metrics against a brute-force reference written with per-class, per-pixel loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ssa.errors import SSAError
from ssa.evaluation.metrics import ConfusionMatrix, compute_metrics, update_confmat


def brute_force(pairs: list[tuple[np.ndarray, np.ndarray]], num_classes: int, ignore: int = 255):
    """mmsegmentation's definitions, the slow way: count per class over every labelled pixel."""
    inter = [0] * num_classes
    gt_area = [0] * num_classes
    pred_area = [0] * num_classes
    for pred, gt in pairs:
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
            if g == ignore:
                continue
            gt_area[g] += 1
            if 0 <= p < num_classes:
                pred_area[p] += 1
                if p == g:
                    inter[g] += 1
    iou, acc = [], []
    for c in range(num_classes):
        union = gt_area[c] + pred_area[c] - inter[c]
        iou.append(inter[c] / union if union else math.nan)
        acc.append(inter[c] / gt_area[c] if gt_area[c] else math.nan)

    def mean(values):
        kept = [v for v in values if not math.isnan(v)]
        return sum(kept) / len(kept) if kept else math.nan

    return {"iou": iou, "acc": acc, "miou": mean(iou), "macc": mean(acc),
            "aacc": sum(inter) / sum(gt_area)}


def random_pairs(seed: int, num_classes: int, absent: set[int], dtype=np.uint8, n: int = 4):
    """Random maps of varied sizes; classes in `absent` never appear in the ground truth, some
    only in the prediction; 255 in both, and out-of-range predictions."""
    rng = np.random.default_rng(seed)
    present = [c for c in range(num_classes) if c not in absent]
    pairs = []
    for i in range(n):
        h, w = 7 + 3 * i, 11 + i
        gt = rng.choice(present, size=(h, w)).astype(dtype)
        gt[rng.random((h, w)) < 0.2] = 255
        pred = gt.copy()
        flip = rng.random((h, w)) < 0.5
        pred[flip] = rng.integers(0, num_classes, flip.sum())
        pred[rng.random((h, w)) < 0.1] = 255
        if num_classes < 250:
            pred[rng.random((h, w)) < 0.05] = num_classes + 3  # out of range: wrong
        pairs.append((pred, gt))
    return pairs


def check(cm: ConfusionMatrix, ref: dict) -> None:
    got = cm.compute()
    np.testing.assert_allclose(got["iou"].numpy(), ref["iou"], equal_nan=True)
    np.testing.assert_allclose(got["acc"].numpy(), ref["acc"], equal_nan=True)
    for key in ("miou", "macc", "aacc"):
        assert got[key] == pytest.approx(ref[key], nan_ok=True), key


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seed: int, dtype) -> None:
    num_classes = 9
    pairs = random_pairs(seed, num_classes, absent={2, 7}, dtype=dtype)
    cm = ConfusionMatrix(num_classes)
    for pred, gt in pairs:
        cm.update(pred, gt)
    ref = brute_force(pairs, num_classes)
    check(cm, ref)
    # A class absent from the ground truth but predicted: IoU 0, accuracy NaN.
    assert math.isnan(ref["acc"][2]) and ref["iou"][2] == 0.0


def test_class_absent_everywhere_is_excluded() -> None:
    gt = np.array([[0, 0, 1, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 0]], dtype=np.uint8)
    got = ConfusionMatrix(3).update(pred, gt).compute()
    # Hand-worked: class 0: inter 1, union 2; class 1: inter 1, union 2; class 2: empty union.
    assert got["iou"][:2].tolist() == [0.5, 0.5] and math.isnan(got["iou"][2])
    assert got["miou"] == 0.5
    assert got["acc"][:2].tolist() == [0.5, 1.0] and got["macc"] == 0.75
    assert got["aacc"] == pytest.approx(2 / 3)


def test_no_label_prediction_is_wrong() -> None:
    gt = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    pred = np.array([[0, 255, 1, 1]], dtype=np.uint8)
    got = ConfusionMatrix(2).update(pred, gt).compute()
    assert got["iou"].tolist() == [0.5, 1.0]  # the 255 pixel adds to class 0's union only
    assert got["aacc"] == 0.75


def test_many_classes_uint16() -> None:
    """C > 255: class 255 is a real class, 65535 is "no label"."""
    num_classes = 300
    pairs = random_pairs(5, num_classes, absent=set(range(0, 300, 3)), dtype=np.uint16)
    for pred, gt in pairs:
        gt[gt == 255] = 65535
        pred[pred == 255] = 65535
        gt[0, 0], pred[0, 0] = 255, 255  # class 255 exists
    cm = ConfusionMatrix(num_classes, ignore_index=65535)
    for pred, gt in pairs:
        cm.update(pred, gt)
    check(cm, brute_force(pairs, num_classes, ignore=65535))


def test_shards_sum_to_the_whole() -> None:
    pairs = random_pairs(3, 6, absent={1}, n=6)
    whole = ConfusionMatrix(6)
    for pred, gt in pairs:
        whole.update(pred, gt)
    a, b = ConfusionMatrix(6), ConfusionMatrix(6)
    for i, (pred, gt) in enumerate(pairs):
        (a if i % 2 else b).update(pred, gt)
    assert torch.equal(a.merge(b).mat, whole.mat)
    assert a.mat.dtype == torch.int64 and a.mat.shape == (6, 7)
    assert a.all_reduce() is a  # no process group: unchanged


def test_missing_prediction_counts_all_wrong() -> None:
    gt = np.array([[0, 1, 255]], dtype=np.uint8)
    cm = ConfusionMatrix(2).update_missing(gt)
    assert cm.mat.tolist() == [[0, 0, 1], [0, 0, 1]]
    assert cm.compute()["miou"] == 0.0


def test_errors_name_the_problem() -> None:
    with pytest.raises(SSAError, match="differ in size"):
        update_confmat(np.zeros((2, 3), np.uint8), np.zeros((3, 2), np.uint8), 4)
    with pytest.raises(SSAError, match="class 9"):
        update_confmat(np.zeros((2, 2), np.uint8), np.full((2, 2), 9, np.uint8), 4)
    with pytest.raises(SSAError, match="class -1"):
        update_confmat(np.zeros((2, 2), np.int64), np.full((2, 2), -1, np.int64), 4)


def test_empty_ground_truth_gives_nan() -> None:
    got = compute_metrics(ConfusionMatrix(3).mat)
    assert math.isnan(got["miou"]) and math.isnan(got["aacc"]) and math.isnan(got["macc"])


def test_uint8_maps_with_more_than_256_classes() -> None:
    """The uint8 fast path when C > 256: every stored value is a class, nothing is ignored."""
    pairs = random_pairs(7, 256, absent={4}, dtype=np.uint8)
    cm = ConfusionMatrix(300, ignore_index=65535)
    for pred, gt in pairs:
        cm.update(pred, gt)
    check(cm, brute_force(pairs, 300, ignore=65535))


def _reduce_on_two_ranks() -> int:
    """A worker for `ssa.distributed.launch`: each rank counts its own pairs, then
    `EvalCounts.all_reduce` (and through it `ConfusionMatrix.all_reduce`) sums both ranks';
    the totals must be brute force over both ranks' pairs. Returns 0 when they are."""
    from ssa.distributed import Group, rank_info_from_env
    from ssa.evaluation.evaluate import EvalCounts

    with Group(rank_info_from_env(), device="cpu") as group:  # gloo, as `ssa run --world-size 2` on CPU
        rank = group.info.rank
        shards = [random_pairs(seed, 6, {4}) for seed in (10, 11)]
        counts = EvalCounts(ConfusionMatrix(6), ConfusionMatrix(6), num_images=len(shards[rank]))
        for pred, gt in shards[rank]:
            counts.voted.update(pred, gt)
            counts.branch.update(gt, gt)  # the branch is perfect
        counts.all_reduce()
        both = shards[0] + shards[1]
        check(counts.voted, brute_force(both, 6))
        check(counts.branch, brute_force([(gt, gt) for _, gt in both], 6))
        assert counts.num_images == len(both)
    return 0


def test_all_reduce_sums_both_ranks_under_gloo() -> None:
    """ConfusionMatrix.all_reduce and EvalCounts.all_reduce in a real two-process gloo group."""
    from ssa.distributed import launch

    lines: list[str] = []
    assert launch(2, _reduce_on_two_ranks, log=lines.append) == 0, lines
