"""`ssa predict`: three SAM masks for a prompt, each labelled by the voting rule.

References: segment-anything's own `SamPredictor` built by its own builder from the same
checkpoint; a brute-force numpy vote; pycocotools for the JSON's RLE.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CITY_STEM, CITYSCAPES, make_image
from typer.testing import CliRunner

from ssa.cli.commands import app
from ssa.config import RunConfig
from ssa.errors import SSAError
from ssa.io import read_image
from ssa.plan import plan_predict
from ssa.run.predictor import GRANULARITIES, SemanticPredictor, build_predictor

NAMES5 = ["sky", "tree", "road", "car", "person"]
PROMPTS = {
    "point": {"points": [(100, 60)]},
    "point+negative": {"points": [(100, 60), (20, 100)], "labels": [1, 0]},
    "two points": {"points": [(40, 30), (200, 90)]},
    "box": {"box": (30, 20, 180, 110)},
    "box+negative": {"points": [(100, 60)], "labels": [0], "box": (30, 20, 180, 110)},
}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    """The real 256x128 Cityscapes frame when the fixtures are here, else a synthetic one."""
    real = CITYSCAPES / f"{CITY_STEM}_leftImg8bit.png"
    if real.is_file():
        return real
    return make_image(tmp_path_factory.mktemp("img") / "street.png", width=256, height=128)


@pytest.fixture(scope="module")
def image(image_path) -> np.ndarray:
    return read_image(image_path)


@pytest.fixture(scope="module")
def predictor(sam_checkpoint, segformer_5, image) -> SemanticPredictor:
    cfg = RunConfig(
        dataset="folder", sam_model="vit_b", sam_checkpoint=sam_checkpoint,
        segmentor=f"hf:{segformer_5}", device="cpu", top_k=3,
    )
    pred = build_predictor(plan_predict(cfg))
    pred.set_image(image)
    return pred


@pytest.fixture(scope="module")
def reference(sam_checkpoint, image):
    """Stock SamPredictor, built by segment-anything's own builder from the same file."""
    from segment_anything import SamPredictor
    from segment_anything.build_sam import _build_sam

    # The tiny test SAM: embed 32, depth 2, 2 heads, global attention at block 1.
    sam = _build_sam(32, 2, 2, [1], checkpoint=str(sam_checkpoint)).eval()
    ref = SamPredictor(sam)
    ref.set_image(image)
    return ref


def _ref_predict(ref, prompt: dict):
    points = prompt.get("points")
    labels = prompt.get("labels", [1] * len(points) if points else None)
    return ref.predict(
        point_coords=np.asarray(points, dtype=np.float32) if points else None,
        point_labels=np.asarray(labels) if points else None,
        box=np.asarray(prompt["box"], dtype=np.float32) if "box" in prompt else None,
        multimask_output=True,
    )


def brute_force_vote(mask: np.ndarray, labels: np.ndarray, num_classes: int, k: int):
    """The SSA rule by hand: counts of branch labels inside the mask, most first, ties to the
    lowest index, classes without votes not proposed."""
    inside = labels[mask]
    inside = inside[(inside >= 0) & (inside < num_classes)]
    counts = np.bincount(inside, minlength=num_classes)
    ranked = sorted((c for c in range(num_classes) if counts[c] > 0), key=lambda c: (-counts[c], c))
    total = counts.sum()
    return ranked[:k], [counts[c] / total for c in ranked[:k]]


@pytest.mark.parametrize("name", list(PROMPTS))
def test_masks_equal_stock_sam_predictor(predictor, reference, name):
    prompt = PROMPTS[name]
    records = predictor.predict(**prompt)
    ref_masks, ref_ious, _ = _ref_predict(reference, prompt)
    assert [r["granularity"] for r in records] == list(GRANULARITIES)
    assert sorted(r["multimask_index"] for r in records) == [0, 1, 2]
    for r in records:
        i = r["multimask_index"]
        np.testing.assert_array_equal(r["segmentation"], ref_masks[i])
        assert r["predicted_iou"] == pytest.approx(float(ref_ious[i]), abs=1e-6)
        assert r["area"] == int(ref_masks[i].sum())
        if r["area"]:
            ys, xs = np.nonzero(ref_masks[i])
            assert r["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
    # whole -> subpart: area descending, SAM's order among equal areas
    keys = [(-r["area"], r["multimask_index"]) for r in records]
    assert keys == sorted(keys)


@pytest.mark.parametrize("name", ["point", "point+negative", "box"])
def test_labels_follow_voting_rule(predictor, image, name):
    labels = predictor.segmentor(image).argmax(dim=0).numpy()  # the branch's own labels
    assert len(np.unique(labels)) >= 3  # votes that can go more than one way
    for r in predictor.predict(**PROMPTS[name]):
        ranked, shares = brute_force_vote(r["segmentation"], labels, len(NAMES5), 3)
        assert r["class_name"] == (NAMES5[ranked[0]] if ranked else None)
        assert r["class_proposals"] == [NAMES5[c] for c in ranked]
        assert r["proposal_shares"] == pytest.approx(shares, abs=1e-5)


class LabelSegmentor:
    """A segmentor that returns a fixed `(H, W)` label map (255 = no label) and counts its calls."""

    def __init__(self, labels: np.ndarray, names: list[str]) -> None:
        self.labels = labels
        self.id2label = dict(enumerate(names))
        self.calls = 0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        self.calls += 1
        return self.labels


@pytest.fixture(scope="module")
def tiny_sam(sam_checkpoint):
    from ssa.masks import load_sam

    return load_sam("vit_b", sam_checkpoint)


def test_voting_rule_on_many_classes_and_no_label(tiny_sam, image):
    height, width = image.shape[:2]
    rng = np.random.default_rng(3)
    names = [f"c{i}" for i in range(6)]
    # Coarse random blocks of 6 classes, a third of the blocks "no label".
    blocks = rng.integers(0, 9, size=(height // 16 + 1, width // 16 + 1))
    labels = np.kron(blocks, np.ones((16, 16), dtype=np.int64))[:height, :width]
    labels = np.where(labels >= 6, 255, labels)
    pred = SemanticPredictor(tiny_sam, LabelSegmentor(labels, names), top_k=4)
    pred.set_image(image)
    for prompt in PROMPTS.values():
        for r in pred.predict(**prompt):
            ranked, shares = brute_force_vote(r["segmentation"], labels, 6, 4)
            assert r["class_name"] == (names[ranked[0]] if ranked else None)
            assert r["class_proposals"] == [names[c] for c in ranked]
            assert r["proposal_shares"] == pytest.approx(shares, abs=1e-5)
    # No pixel votes: no class, no proposals.
    empty = SemanticPredictor(tiny_sam, LabelSegmentor(np.full_like(labels, 255), names))
    empty.set_image(image)
    for r in empty.predict(points=[(100, 60)]):
        assert r["class_name"] is None and r["class_proposals"] == []


def test_several_clicks_run_the_encoder_once(tiny_sam, image):
    segmentor = LabelSegmentor(np.zeros(image.shape[:2], dtype=np.int64), ["thing"])
    pred = SemanticPredictor(tiny_sam, segmentor)
    calls = []
    hook = pred.masks.predictor.model.image_encoder.register_forward_hook(
        lambda *args: calls.append(1)
    )
    try:
        pred.set_image(image)
        for prompt in PROMPTS.values():
            assert len(pred.predict(**prompt)) == 3
        assert (len(calls), segmentor.calls) == (1, 1)
        pred.set_image(image[:, ::-1].copy())  # a new image: one more pass of each branch
        pred.predict(points=[(10, 10)])
        assert (len(calls), segmentor.calls) == (2, 2)
    finally:
        hook.remove()


def test_python_one_call_api(predictor, image_path, sam_checkpoint, segformer_5):
    import ssa

    records = ssa.predict(
        image_path, points=[(100, 60)], sam_model="vit_b", sam_checkpoint=sam_checkpoint,
        segmentor=f"hf:{segformer_5}", device="cpu",
    )
    expected = predictor.predict(points=[(100, 60)])
    for got, want in zip(records, expected):
        np.testing.assert_array_equal(got["segmentation"], want["segmentation"])
        assert got["class_name"] == want["class_name"]
    assert ssa.SemanticPredictor is SemanticPredictor


def test_cli_json_and_overlay(
    tmp_path, image_path, image, predictor, sam_checkpoint, segformer_5
):
    from PIL import Image
    from pycocotools import mask as mask_utils

    out_json, out_vis = tmp_path / "pred.json", tmp_path / "pred.jpg"
    result = CliRunner().invoke(app, [
        "predict", str(image_path), "--point", "100,60", "--negative", "20,100",
        "--sam-model", "vit_b", "--sam-checkpoint", str(sam_checkpoint),
        "--segmentor", f"hf:{segformer_5}", "--device", "cpu",
        "--json", str(out_json), "--save-vis", str(out_vis),
    ])
    assert result.exit_code == 0, result.output
    assert "granularity" in result.output and "subpart" in result.output
    doc = json.loads(out_json.read_text())
    expected = predictor.predict(**PROMPTS["point+negative"])
    height, width = image.shape[:2]
    assert [m["granularity"] for m in doc["masks"]] == list(GRANULARITIES)
    for m, want in zip(doc["masks"], expected):
        rle = dict(m["segmentation"], counts=m["segmentation"]["counts"].encode())
        decoded = mask_utils.decode(rle)
        assert decoded.shape == (height, width)
        np.testing.assert_array_equal(decoded.astype(bool), want["segmentation"])
        assert m["area"] == int(mask_utils.area(rle)) == want["area"]
        assert m["bbox"] == want["bbox"]
        assert m["class_name"] == want["class_name"]
        assert m["class_proposals"] == want["class_proposals"]
        assert m["predicted_iou"] == pytest.approx(want["predicted_iou"])
    assert doc["prompt"] == {"points": [[100, 60], [20, 100]], "point_labels": [1, 0], "box": None}
    with Image.open(out_vis) as vis:
        assert vis.size == (width, height)


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--point", "12"], "--point '12' is not X,Y"),
        (["--point", "a,b"], "--point 'a,b' is not X,Y"),
        (["--point", "999,5"], "--point 999,5 lies outside the 256x128 image"),
        (["--point", "5,-1"], "--point 5,-1 lies outside"),
        (["--negative", "5,5"], "no prompt"),
        ([], "no prompt"),
        (["--box", "1,2,3"], "--box '1,2,3' is not X0,Y0,X1,Y1"),
        (["--box", "50,50,10,60"], "--box 50,50,10,60 is empty"),
        (["--box", "0,0,300,100"], "--box 0,0,300,100 leaves the 256x128 image"),
    ],
)
def test_cli_bad_prompt(tmp_path, args, expected):
    # The prompt is checked against the image before any model loads: no checkpoint needed.
    img = make_image(tmp_path / "img.png", width=256, height=128)
    result = CliRunner().invoke(app, ["predict", str(img), *args, "--sam-checkpoint", "nope.pth"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert expected in result.output


def test_cli_unreadable_image(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    for path in (bad, tmp_path / "missing.png"):
        result = CliRunner().invoke(app, ["predict", str(path), "--point", "1,1"])
        assert result.exit_code == 2
        assert str(path) in result.output and len(result.output.strip().splitlines()) == 1


def test_api_bad_input(tiny_sam, image):
    pred = SemanticPredictor(tiny_sam, LabelSegmentor(np.zeros(image.shape[:2], int), ["a"]))
    with pytest.raises(SSAError, match="no image is set"):
        pred.predict(points=[(1, 1)])
    with pytest.raises(SSAError, match="not HWC uint8 RGB"):
        pred.set_image(image.astype(np.float32))
    pred.set_image(image)
    with pytest.raises(SSAError, match="one 1 .* or 0"):
        pred.predict(points=[(1, 1), (2, 2)], labels=[1])
    with pytest.raises(SSAError, match="not \\(x, y\\) pairs"):
        pred.predict(points=[(1, 2, 3)])
    with pytest.raises(SSAError, match="without points"):
        pred.predict(labels=[1])
    with pytest.raises(SSAError, match="--top-k 0"):
        SemanticPredictor(tiny_sam, LabelSegmentor(np.zeros((2, 2), int), ["a"]), top_k=0)


def test_granularity_order_is_by_area():
    from ssa.run.predictor import granularity_order

    assert granularity_order([10, 30, 20]) == [1, 2, 0]
    assert granularity_order([5, 5, 9]) == [2, 0, 1]  # ties keep SAM's order
