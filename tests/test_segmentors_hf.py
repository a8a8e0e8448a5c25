"""Hugging Face adapters against the library's own processor + model + post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssa.errors import SSAError
from ssa.segmentors import BranchOutput, class_names, load_segmentor, parse_spec
from ssa.segmentors.hf import HFSegmentor, _windows


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _full_probabilities(seg: HFSegmentor, image: np.ndarray) -> torch.Tensor:
    """The segmentor's working-resolution scores made full-resolution probabilities by
    `BranchOutput` (band by band), as `ssa run` uses them."""
    branch = BranchOutput.from_raw(seg(image), seg.num_classes, image.shape[:2],
                                   kind=seg.scores_kind)
    return branch.probabilities()


def _reference_logits(folder, image: np.ndarray) -> torch.Tensor:
    """The stock path: the saved image processor, the model, logits upsampled to the input."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    return F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)[0]


def test_image_at_training_size_matches_stock(segformer_5):
    image = _image(128, 128)
    ours = _full_probabilities(HFSegmentor(str(segformer_5)), image)
    expected = _reference_logits(segformer_5, image).softmax(dim=0)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


def test_sliding_windows_average_stock_windows(segformer_5):
    """A 128x256 image with a 128 crop: windows at x = 0, 85, 128, logits averaged."""
    image = _image(128, 256, seed=1)
    ours = _full_probabilities(HFSegmentor(str(segformer_5)), image)
    total = torch.zeros(5, 128, 256)
    hits = torch.zeros(1, 128, 256)
    assert _windows(256, 128, 85) == [0, 85, 128]
    for x0 in (0, 85, 128):
        total[:, :, x0 : x0 + 128] += _reference_logits(segformer_5, image[:, x0 : x0 + 128])
        hits[:, :, x0 : x0 + 128] += 1
    torch.testing.assert_close(ours, (total / hits).softmax(dim=0), atol=1e-4, rtol=1e-4)


def test_large_image_is_resized_not_squashed(segformer_5):
    seg = HFSegmentor(str(segformer_5))
    seen = []
    original = seg._forward
    seg._forward = lambda batch: seen.append(tuple(batch.shape)) or original(batch)
    out = seg(_image(300, 900))
    assert out.shape == (5, 128, 384)  # the working resolution; BranchOutput upsamples it
    # Short side 300 -> 128, long side 900 -> 384: 128x128 windows at x = 0, 85, 170, 255, 256,
    # never a 128x128 squash of the whole image.
    assert {shape[-2:] for shape in seen} == {(128, 128)}
    assert sum(shape[0] for shape in seen) == 5


def tiny_mask2former(folder, num_labels=5):
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    backbone = SwinConfig(
        embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"], image_size=64,
    )  # fmt: skip
    config = Mask2FormerConfig(
        backbone_config=backbone, num_labels=num_labels,
        id2label={i: f"c{i}" for i in range(num_labels)},
        label2id={f"c{i}": i for i in range(num_labels)},
        hidden_dim=32, mask_feature_size=32, feature_size=32, encoder_layers=1, decoder_layers=2,
        num_queries=8, encoder_feedforward_dim=64, dim_feedforward=64, num_attention_heads=2,
        use_pretrained_backbone=False,
    )  # fmt: skip
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    Mask2FormerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def test_universal_model_matches_stock_post_processing(tmp_path):
    from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

    folder = tiny_mask2former(tmp_path / "m2f")
    image = _image(64, 64, seed=2)
    seg = load_segmentor(f"hf:{folder}")
    assert seg.universal and class_names(seg) == [f"c{i}" for i in range(5)]
    ours = _full_probabilities(seg, image)
    torch.testing.assert_close(ours.sum(dim=0), torch.ones(64, 64))
    processor = AutoImageProcessor.from_pretrained(folder)
    model = Mask2FormerForUniversalSegmentation.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 64)])[0]
    assert (ours.argmax(dim=0) == expected).float().mean() > 0.999


@pytest.mark.parametrize(
    "spec, kind, target",
    [
        ("hf:nvidia/segformer-b0-finetuned-ade-512-512", "hf", "nvidia/segformer-b0-finetuned-ade-512-512"),
        ("hf:/abs/folder", "hf", "/abs/folder"),
        ("hf: ./rel ", "hf", "./rel"),
    ],
)
def test_parse_hf_spec(spec, kind, target):
    parsed = parse_spec(spec)
    assert (parsed.kind, parsed.target) == (kind, target)


@pytest.mark.parametrize("spec", ["", "hf:", "nvidia/segformer", "tf:model", ":x"])
def test_parse_bad_spec(spec):
    with pytest.raises(SSAError, match="accepted forms"):
        parse_spec(spec)


def test_offline_hub_id_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(SSAError) as err:
        load_segmentor("hf:nvidia/segformer-b0-does-not-exist")
    assert "nvidia/segformer-b0-does-not-exist" in str(err.value)
    assert "\n" not in str(err.value)


def test_branch_output_validation():
    scores = torch.rand(3, 4, 5)
    out = BranchOutput.from_raw(scores.numpy(), 3, (4, 5))
    assert torch.equal(out.labels, scores.argmax(dim=0))
    labels = BranchOutput.from_raw(np.zeros((4, 5), np.uint8), 3, (4, 5))
    assert labels.scores is None and labels.labels.dtype == torch.uint8
    with pytest.raises(SSAError, match="score channels"):
        BranchOutput.from_raw(scores, 4, (4, 5))
    with pytest.raises(SSAError, match="full resolution"):
        BranchOutput.from_raw(scores.argmax(dim=0), 3, (8, 10))
    # Scores at another resolution are upsampled (bilinear, as F.interpolate) to the image's.
    low = BranchOutput.from_raw(scores, 3, (8, 10))
    up = F.interpolate(scores[None], size=(8, 10), mode="bilinear", align_corners=False)[0]
    assert torch.equal(low.labels.long(), up.argmax(dim=0))
