"""Hugging Face adapters against the library's own processor + model + post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssa.errors import SSAError
from ssa.segmentors import BranchOutput, class_names
from ssa.segmentors.hf import HFSegmentor, _windows
from ssa.specs.segmentors import load_segmentor, parse_spec


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


def tiny_maskformer(folder, num_labels=5):
    from transformers import (
        DetrConfig,
        MaskFormerConfig,
        MaskFormerForInstanceSegmentation,
        MaskFormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(1)
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                      num_heads=[1, 1, 1, 1], window_size=4,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    detr = DetrConfig(d_model=32, decoder_layers=1, decoder_attention_heads=2,
                      decoder_ffn_dim=32, encoder_layers=1, num_queries=8)
    config = MaskFormerConfig(
        backbone_config=swin, decoder_config=detr, mask_feature_size=32, fpn_feature_size=32,
        num_queries=8, num_labels=num_labels, id2label={i: f"c{i}" for i in range(num_labels)},
        label2id={f"c{i}": i for i in range(num_labels)},
    )
    MaskFormerForInstanceSegmentation(config).save_pretrained(folder)
    MaskFormerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder


def tiny_oneformer(folder):
    from test_engine import save_tiny_models

    models = save_tiny_models(folder)
    return models["oneformer_coco"]  # 5 classes, a 64-pixel short side


UNIVERSAL = {"mask2former": tiny_mask2former, "maskformer": tiny_maskformer,
             "oneformer": tiny_oneformer}


@pytest.mark.parametrize("family", list(UNIVERSAL))
def test_universal_model_matches_stock_post_processing(tmp_path, family):
    """Mask2Former, MaskFormer and OneFormer (semantic task): the label map of our
    working-resolution class mass, after `BranchOutput`'s upsampling, against transformers' own
    `post_process_semantic_segmentation` on the stock processor and model. Tolerance: 99.9% of
    the pixels (the stock path upsamples each query's mask logits before combining them, ours
    combines at the working resolution; here both are 64x64, so only float ties may differ), and
    per-pixel class probabilities within 2e-3 of the stock semantic scores normalised."""
    from transformers import AutoProcessor

    folder = UNIVERSAL[family](tmp_path / family)
    image = _image(64, 64, seed=2)
    seg = load_segmentor(f"hf:{folder}")
    assert seg.universal and seg.model_type == family and len(class_names(seg)) == 5
    ours = _full_probabilities(seg, image)
    torch.testing.assert_close(ours.sum(dim=0), torch.ones(64, 64))
    processor = AutoProcessor.from_pretrained(folder)
    model = type(seg.model).from_pretrained(folder).eval()
    kwargs = {"task_inputs": ["semantic"]} if family == "oneformer" else {}
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt", **kwargs))
    expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[(64, 64)])[0]
    assert (ours.argmax(dim=0) == expected).float().mean() > 0.999
    # Random heads give one class nearly everywhere, so the scores too: transformers' semantic
    # scores (its post-processing's sum over queries of class probability x mask probability,
    # mask logits upsampled to the image first) divided by their per-pixel sum.
    classes = outputs.class_queries_logits.softmax(dim=-1)[0, :, :-1]
    masks = F.interpolate(outputs.masks_queries_logits, size=(64, 64), mode="bilinear",
                          align_corners=False)[0].sigmoid()
    mass = torch.einsum("qc,qhw->chw", classes, masks)
    torch.testing.assert_close(ours, mass / mass.sum(dim=0, keepdim=True), atol=2e-3, rtol=0)


def test_resize_false_keeps_the_image_scale(segformer_5):
    """`HFSegmentor(resize=False)` works on a 96x200 image at its own scale (with resizing its
    short side would go to the 128 crop): 96x128 windows at x = 0 and 72, each the stock
    processor (without its resize) and model, logits averaged."""
    from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

    image = _image(96, 200, seed=3)
    seg = HFSegmentor(str(segformer_5), resize=False)
    assert seg(image).shape == (5, 96, 200)
    assert HFSegmentor(str(segformer_5))(image).shape == (5, 128, 267)
    ours = _full_probabilities(seg, image)
    processor = AutoImageProcessor.from_pretrained(segformer_5)
    model = AutoModelForSemanticSegmentation.from_pretrained(segformer_5).eval()
    total, hits = torch.zeros(5, 96, 200), torch.zeros(1, 96, 200)
    assert _windows(200, 128, 85) == [0, 72]
    for x0 in (0, 72):
        window = image[:, x0 : x0 + 128]
        with torch.no_grad():
            logits = model(**processor(images=window, do_resize=False, return_tensors="pt")).logits
        total[:, :, x0 : x0 + 128] += F.interpolate(logits, size=(96, 128), mode="bilinear",
                                                    align_corners=False)[0]
        hits[:, :, x0 : x0 + 128] += 1
    torch.testing.assert_close(ours, (total / hits).softmax(dim=0), atol=1e-4, rtol=1e-4)


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
