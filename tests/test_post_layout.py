"""The column-major mask stack of the fast generator and the passes over it: the padded counts
against sums, RLE of the column-major layout
against pycocotools on the plain masks, and voting on it against the brute-force rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_voting import brute_force

from ssa.voting import NO_CLASS, mask_areas, paint, vote


def column_major(masks: np.ndarray) -> torch.Tensor:
    """`(N, H, W)` view of a contiguous `(N, W, H)` tensor: the fast generator's layout."""
    stack = torch.from_numpy(np.ascontiguousarray(masks.transpose(0, 2, 1)))
    view = stack.transpose(1, 2)
    assert len(masks) == 0 or not view.is_contiguous()
    return view


@pytest.mark.parametrize("seed", [0, 1])
def test_vote_on_column_major_stack_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=(17, 23))
    labels[rng.random(labels.shape) < 0.1] = 255
    masks = rng.random((9, 17, 23)) < rng.random((9, 1, 1))
    result = vote(column_major(masks), torch.from_numpy(labels), 6, 4)
    classes, proposals, label_map = brute_force(masks, labels, 6, 4)
    assert result.classes.tolist() == classes
    assert [[p for p in row if p != NO_CLASS] for row in result.proposals.tolist()] == proposals
    assert result.label_map.shape == (17, 23)
    np.testing.assert_array_equal(result.label_map.numpy(), label_map)
    assert mask_areas(column_major(masks)).tolist() == masks.sum((1, 2)).tolist()


@pytest.mark.parametrize("policy,share", [("soft", 0.0), ("hard", 0.6), ("soft", 0.5)])
def test_policies_on_both_layouts_against_brute_force(policy, share, monkeypatch):
    """Both layouts, chunked over masks, against the brute-force rule of every policy."""
    from test_voting_policies import brute_force as policy_brute_force
    from test_voting_policies import softmax

    from ssa import voting

    rng = np.random.default_rng(7)
    labels = rng.integers(0, 5, size=(13, 19))
    raw = rng.normal(size=(5, 13, 19)).astype(np.float32)
    masks = rng.random((11, 13, 19)) < rng.random((11, 1, 1))
    monkeypatch.setattr(voting, "_CHUNK_ELEMENTS", 600)  # several chunks of masks
    probs = softmax(raw) if policy == "soft" else None
    classes, trusted, label_map = policy_brute_force(masks, labels, 5, probs, share)
    kw = {"scores": torch.from_numpy(raw), "policy": policy, "min_vote_share": share}
    for stack in (torch.from_numpy(masks), column_major(masks)):
        got = vote(stack, torch.from_numpy(labels), 5, 3, **kw)
        assert got.classes.tolist() == classes
        if got.trusted is not None:
            assert got.trusted.tolist() == trusted
        np.testing.assert_array_equal(got.label_map.numpy(), label_map)


def test_chunked_paint_on_column_major_stack(monkeypatch):
    """Chunked painting of the column-major stack against painting by hand: largest first
    (ties in input order), NO_CLASS masks leave the base."""
    from ssa import voting

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=(20, 21))
    masks = rng.random((12, 20, 21)) < rng.random((12, 1, 1))
    classes = rng.integers(-1, 4, size=12)
    monkeypatch.setattr(voting, "_CHUNK_ELEMENTS", 450)
    want = labels.copy()
    for i in sorted(range(len(masks)), key=lambda i: -int(masks[i].sum())):
        if classes[i] != NO_CLASS:
            want[masks[i]] = classes[i]
    got = paint(column_major(masks), torch.from_numpy(classes), torch.from_numpy(labels))
    np.testing.assert_array_equal(got.numpy(), want)


def test_rle_of_column_major_stack_matches_pycocotools():
    from ssa import io
    from ssa.masks.device_rle import encode_rle_device

    masks = np.random.default_rng(1).random((5, 37, 23)) > 0.5
    assert encode_rle_device(column_major(masks)) == io.encode_rle(masks)
    assert encode_rle_device(column_major(masks[:0])) == []


def test_count_buffer_counts_like_a_sum():
    from ssa.masks.bilinear import CountBuffer

    x = torch.randn(3, 47, 61, generator=torch.Generator().manual_seed(4))
    buf = CountBuffer(x.shape, x.device)
    for level in (-1.0, 0.0, 1.0, 10.0):
        assert buf.count_above(x[:2], level).tolist() == (x[:2] > level).flatten(1).sum(1).tolist()
        assert torch.equal(buf.mask(2), x[:2] > level)
