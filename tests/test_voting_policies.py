"""Soft voting and the minimum vote share against brute-force references of their rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssa.errors import SSAError
from ssa.voting import NO_CLASS, as_probabilities, paint, vote


def softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def brute_force(
    masks: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    scores: np.ndarray | None = None,
    min_share: float = 0.0,
):
    """The policies written the slow, obvious way: loops over masks, classes and pixels."""
    classes, trusted = [], []
    for mask in masks:
        pixels = list(zip(*np.nonzero(mask)))
        hard = [0] * num_classes
        for y, x in pixels:
            if 0 <= labels[y, x] < num_classes:
                hard[labels[y, x]] += 1
        if scores is None:
            votes = hard
        else:
            votes = [
                sum(float(scores[c, y, x]) for y, x in pixels) / max(len(pixels), 1)
                for c in range(num_classes)
            ]
        best = min(range(num_classes), key=lambda c: (-votes[c], c))
        cls = best if votes[best] > 0 else NO_CLASS
        ok = True
        if min_share > 0 and cls != NO_CLASS:
            ok = sum(hard) > 0 and hard[cls] / sum(hard) >= min_share
        trusted.append(ok)
        classes.append(cls if ok else NO_CLASS)
    out = labels.copy()
    areas = [int(m.sum()) for m in masks]
    for i in sorted(range(len(masks)), key=lambda i: -areas[i]):
        if not trusted[i]:
            out[masks[i]] = labels[masks[i]]
        elif classes[i] != NO_CLASS:
            out[masks[i]] = classes[i]
    return classes, trusted, out


def run_vote(masks, labels, num_classes, scores=None, policy="hard", min_share=0.0):
    return vote(
        torch.from_numpy(masks),
        torch.from_numpy(labels),
        num_classes,
        scores=None if scores is None else torch.from_numpy(scores),
        policy=policy,
        min_vote_share=min_share,
    )


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("logits", [False, True])
def test_soft_against_brute_force(seed, logits):
    rng = np.random.default_rng(seed)
    num_classes = 5
    raw = rng.normal(size=(num_classes, 13, 19)).astype(np.float32) * 2
    probs = softmax(raw)
    labels = probs.argmax(axis=0)
    masks = rng.random((8, 13, 19)) < rng.random((8, 1, 1))
    masks[0] = False  # an empty mask gets no class
    given = raw if logits else probs
    result = run_vote(masks, labels, num_classes, given, policy="soft")
    classes, _, label_map = brute_force(masks, labels, num_classes, scores=probs)
    assert result.classes.tolist() == classes
    np.testing.assert_array_equal(result.label_map.numpy(), label_map)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("share", [0.3, 0.45, 0.6])
@pytest.mark.parametrize("policy", ["hard", "soft"])
def test_min_vote_share_against_brute_force(seed, share, policy):
    rng = np.random.default_rng(seed)
    num_classes = 4
    probs = softmax(rng.normal(size=(num_classes, 11, 17)).astype(np.float32))
    labels = probs.argmax(axis=0)
    labels[rng.random(labels.shape) < 0.1] = 255  # no-label pixels do not count in the share
    masks = rng.random((10, 11, 17)) < rng.random((10, 1, 1))
    scores = probs if policy == "soft" else None
    result = run_vote(masks, labels, num_classes, scores, policy=policy, min_share=share)
    classes, trusted, label_map = brute_force(masks, labels, num_classes, scores, share)
    assert result.classes.tolist() == classes
    assert result.trusted.tolist() == trusted
    np.testing.assert_array_equal(result.label_map.numpy(), label_map)


def test_min_vote_share_hand_worked():
    # One 2x4 mask over a branch that says 5 pixels class 0, 3 pixels class 1: share 5/8.
    labels = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])
    mask = np.ones((1, 2, 4), bool)
    kept = run_vote(mask, labels, 2, min_share=0.6)
    assert kept.classes.tolist() == [0]
    assert kept.label_map.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    refused = run_vote(mask, labels, 2, min_share=0.7)
    assert refused.classes.tolist() == [NO_CLASS] and refused.trusted.tolist() == [False]
    assert refused.label_map.tolist() == labels.tolist()
    # The proposals survive for the JSON even when the mask is not trusted.
    assert refused.proposals[0, :2].tolist() == [0, 1]


def test_untrusted_small_mask_keeps_branch_inside_trusted_big_mask():
    labels = np.zeros((4, 4), dtype=np.int64)
    labels[0, 0:2] = 1
    labels[1, 0] = 2
    big = np.ones((4, 4), bool)  # 13 of 16 pixels class 0: trusted at 0.5
    small = np.zeros((4, 4), bool)
    small[0:2, 0:2] = True  # 2 x class 1, 1 x class 2, 1 x class 0: top share 0.5 < 0.6
    result = run_vote(np.stack([big, small]), labels, 3, min_share=0.6)
    assert result.trusted.tolist() == [True, False]
    out = result.label_map.numpy()
    assert out[0:2, 0:2].tolist() == [[1, 1], [2, 0]]  # the branch's own labels
    assert (out[2:, :] == 0).all() and (out[:, 2:] == 0).all()


def test_hard_and_soft_disagree_hand_worked():
    # Three pixels: two weakly class 0 (0.4 vs 0.35 vs 0.25) and one strongly class 1.
    probs = np.array(
        [[[0.40, 0.40, 0.05]], [[0.35, 0.35, 0.90]], [[0.25, 0.25, 0.05]]], dtype=np.float32
    )
    labels = probs.argmax(axis=0)
    mask = np.ones((1, 1, 3), bool)
    assert run_vote(mask, labels, 3).classes.tolist() == [0]  # 2 votes against 1
    # Mean probability: class 0 0.283, class 1 0.533.
    assert run_vote(mask, labels, 3, probs, policy="soft").classes.tolist() == [1]


def test_soft_without_scores_and_bad_values_are_errors():
    mask = np.ones((1, 1, 2), bool)
    labels = np.array([[0, 1]])
    with pytest.raises(SSAError, match="labels only"):
        run_vote(mask, labels, 2, policy="soft")
    with pytest.raises(SSAError, match="voting policy"):
        run_vote(mask, labels, 2, policy="mean")
    with pytest.raises(SSAError, match="min-vote-share"):
        run_vote(mask, labels, 2, min_share=1.5)


def test_as_probabilities_keeps_probabilities_and_softmaxes_logits():
    probs = torch.tensor([[[0.2]], [[0.8]]])
    assert torch.equal(as_probabilities(probs), probs)
    logits = torch.tensor([[[0.5]], [[2.0]]])
    np.testing.assert_allclose(as_probabilities(logits).numpy(), softmax(logits.numpy()), 1e-6)


def test_paint_keep_branch_chunked(monkeypatch):
    from ssa import voting

    rng = np.random.default_rng(5)
    labels = rng.integers(0, 4, size=(10, 10))
    masks = rng.random((9, 10, 10)) < 0.4
    classes = rng.integers(-1, 4, size=9)
    keep = rng.random(9) < 0.4
    reference = labels.copy()
    areas = masks.sum(axis=(1, 2))
    for i in sorted(range(9), key=lambda i: -areas[i]):
        if keep[i]:
            reference[masks[i]] = labels[masks[i]]
        elif classes[i] != NO_CLASS:
            reference[masks[i]] = classes[i]
    monkeypatch.setattr(voting, "_CHUNK_ELEMENTS", 200)
    out = paint(
        torch.from_numpy(masks), torch.from_numpy(classes), torch.from_numpy(labels),
        keep_branch=torch.from_numpy(keep),
    )
    np.testing.assert_array_equal(out.numpy(), reference)
