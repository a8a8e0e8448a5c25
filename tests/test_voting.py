"""Voting against a brute-force reference of the SSA rule, on hand-made and real data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ADE20K_FULL, need

from ssa.voting import NO_CLASS, paint, vote


def brute_force(masks: np.ndarray, labels: np.ndarray, num_classes: int, top_k: int):
    """The rule written the slow, obvious way: loops over masks, classes and pixels."""
    classes, proposals = [], []
    for mask in masks:
        counts = [0] * num_classes
        for y, x in zip(*np.nonzero(mask)):
            lab = labels[y, x]
            if 0 <= lab < num_classes:
                counts[lab] += 1
        ranked = sorted(range(num_classes), key=lambda c: (-counts[c], c))
        ranked = [c for c in ranked if counts[c] > 0][:top_k]
        proposals.append(ranked)
        classes.append(ranked[0] if ranked else NO_CLASS)
    out = labels.copy()
    areas = [int(m.sum()) for m in masks]
    order = sorted(range(len(masks)), key=lambda i: -areas[i])  # stable: ties keep input order
    for i in order:
        if classes[i] != NO_CLASS:
            out[masks[i]] = classes[i]
    return classes, proposals, out


def check(masks: np.ndarray, labels: np.ndarray, num_classes: int, top_k: int = 3):
    result = vote(torch.from_numpy(masks), torch.from_numpy(labels), num_classes, top_k)
    classes, proposals, label_map = brute_force(masks, labels, num_classes, top_k)
    assert result.classes.tolist() == classes
    got = [[p for p in row if p != NO_CLASS] for row in result.proposals.tolist()]
    assert got == proposals
    np.testing.assert_array_equal(result.label_map.numpy(), label_map)
    return result


def test_overlapping_masks_smaller_wins():
    labels = np.zeros((6, 6), dtype=np.int64)
    labels[:, 3:] = 1
    labels[4:, :] = 2
    big = np.zeros((6, 6), bool)
    big[:, :] = True
    small = np.zeros((6, 6), bool)
    small[0:2, 3:6] = True
    result = check(np.stack([small, big]), labels, 3)
    # Worked by hand: the big mask holds 12 pixels of each class, a three-way tie -> class 0;
    # the small one lies on class 1 and, painted last, keeps it.
    assert result.classes.tolist() == [1, 0]
    assert (result.label_map.numpy()[0:2, 3:6] == 1).all()
    assert (result.label_map.numpy()[2:, :] == 0).all()


def test_tie_goes_to_lowest_class_and_shares():
    labels = np.array([[2, 2, 1, 1]])
    mask = np.ones((1, 1, 4), bool)
    result = check(mask, labels, 3)
    assert result.classes.tolist() == [1]
    assert result.proposals.tolist() == [[1, 2, NO_CLASS]]
    assert result.shares.tolist()[0][:2] == [0.5, 0.5]


def test_empty_mask_and_uncovered_pixels_keep_branch():
    labels = np.array([[0, 1, 2], [2, 1, 0]])
    empty = np.zeros((2, 3), bool)
    left = np.zeros((2, 3), bool)
    left[:, 0] = True
    result = check(np.stack([empty, left]), labels, 3)
    assert result.classes.tolist() == [NO_CLASS, 0]
    assert result.label_map.numpy()[:, 1:].tolist() == [[1, 2], [1, 0]]


def test_no_label_pixels_do_not_vote():
    labels = np.array([[255, 255, 255, 1]])
    mask = np.ones((1, 1, 4), bool)
    result = check(mask, labels, 2)
    assert result.classes.tolist() == [1]
    all_ignored = np.array([[255, 255]])
    result = check(np.ones((1, 1, 2), bool), all_ignored, 2)
    assert result.classes.tolist() == [NO_CLASS]
    assert result.label_map.tolist() == [[255, 255]]


def test_equal_areas_later_mask_wins():
    labels = np.array([[0, 0, 1, 1]])
    a = np.array([[True, True, True, False]])
    b = np.array([[False, True, True, True]])
    result = check(np.stack([a, b]), labels, 2)
    assert result.label_map.tolist() == [[0, 1, 1, 1]]


def test_no_masks():
    labels = np.array([[0, 1]])
    result = check(np.zeros((0, 1, 2), bool), labels, 2)
    assert result.classes.shape == (0,)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=(17, 23))
    labels[rng.random(labels.shape) < 0.1] = 255
    masks = rng.random((9, 17, 23)) < rng.random((9, 1, 1))
    check(masks, labels, 6, top_k=4)


def test_chunked_paint_matches(monkeypatch):
    from ssa import voting

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(20, 20))
    masks = rng.random((12, 20, 20)) < 0.3
    monkeypatch.setattr(voting, "_CHUNK_ELEMENTS", 450)  # two masks per chunk
    check(masks, labels, 4)


def _ade_instances(path):
    from PIL import Image

    seg = np.asarray(Image.open(path)).astype(np.int64)
    classes = seg[..., 0] // 10 * 256 + seg[..., 1]
    instances = seg[..., 2]
    return classes, instances


def test_real_ade20k_objects_against_brute_force():
    """Masks are the real ADE20K object instances; labels a shifted class map (a blurry branch)."""
    seg_path = need(ADE20K_FULL) / "ADE_train_00016964_seg.png"
    classes, instances = _ade_instances(seg_path)
    # Work on a quarter-resolution copy: the brute force loops over pixels in Python.
    classes, instances = classes[::4, ::4], instances[::4, ::4]
    ids = [i for i in np.unique(instances) if i != 0]
    masks = np.stack([instances == i for i in ids])
    _, dense = np.unique(classes, return_inverse=True)
    dense = dense.reshape(classes.shape)
    shifted = np.roll(dense, shift=(7, 11), axis=(0, 1))  # boundaries off by a few pixels
    result = check(masks, shifted, int(dense.max()) + 1)
    assert len(ids) > 5 and (result.classes >= 0).all()


def test_paint_skips_masks_without_class():
    masks = torch.ones((1, 2, 2), dtype=torch.bool)
    out = paint(masks, torch.tensor([NO_CLASS]), torch.tensor([[0, 1], [1, 0]]))
    assert out.tolist() == [[0, 1], [1, 0]]


@pytest.mark.parametrize("shape", [(7, 13, 11), (40, 16, 24)])
def test_counts_many_classes_against_brute_force(monkeypatch, shape):
    """The one-hot integer GEMM with more classes present than one pass takes (70 of 80, passes
    of 32 and a ragged last one), pixels not a multiple of 8, labels that do not vote (-1, 80,
    255), chunks of a few masks; and the bincount fallback on the same input."""
    from ssa import voting

    rng = np.random.default_rng(sum(shape))
    n, h, w = shape
    masks = rng.random((n, h, w)) < 0.4
    labels = rng.choice(np.r_[np.arange(70), -1, 80, 255], size=(h, w))
    expected = np.zeros((n, 80), dtype=np.int64)
    for i in range(n):
        under = labels[masks[i]]
        under = under[(under >= 0) & (under < 80)]
        expected[i] = np.bincount(under, minlength=80)
    monkeypatch.setattr(voting, "_CHUNK_ELEMENTS", h * w * 3)
    got = voting.hard_vote_counts(torch.from_numpy(masks), torch.from_numpy(labels), 80)
    np.testing.assert_array_equal(got.numpy(), expected)

    def no_int_mm(*_):
        raise RuntimeError("no int8 GEMM here")

    monkeypatch.setattr(voting, "_onehot_counts", no_int_mm)
    got = voting.hard_vote_counts(torch.from_numpy(masks), torch.from_numpy(labels), 80)
    np.testing.assert_array_equal(got.numpy(), expected)
