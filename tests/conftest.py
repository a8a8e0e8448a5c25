"""Shared fixtures: tiny random models saved and loaded through the real loading code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures"
CITYSCAPES = FIXTURES / "cityscapes_sample"
ADE20K_FULL = FIXTURES / "ade20k_full_samples"
ENET = FIXTURES / "enet_cityscapes"
CITY_STEM = "frankfurt_000000_000294"

# Random SAM weights give large overlapping masks of low stability; these keep every candidate
# (see ../shared/fixtures/README.md).
KEEP_ALL = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"fixture {path} is absent")
    return path


@pytest.fixture(scope="session")
def sam_checkpoint(tmp_path_factory) -> Path:
    """A tiny random SAM (encoder: embed 32, depth 2) saved as a state_dict file."""
    from ssa.masks import EncoderConfig, build_sam_from_config

    torch.manual_seed(0)
    model = build_sam_from_config(EncoderConfig(32, 2, 2, (1,)))
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def save_segformer(folder: Path, class_names: list[str], seed: int = 0, size: int = 128) -> Path:
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(seed)
    config = SegformerConfig(
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={n: i for i, n in enumerate(class_names)},
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=32,
    )
    model = SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():  # sharper random logits spread the labels over many classes
        model.decode_head.classifier.weight.mul_(100.0)
    model.save_pretrained(folder)
    SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def segformer_city(tmp_path_factory) -> Path:
    from ssa.datasets import CITYSCAPES_CLASSES

    return save_segformer(tmp_path_factory.mktemp("segformer_city"), list(CITYSCAPES_CLASSES))


@pytest.fixture(scope="session")
def segformer_5(tmp_path_factory) -> Path:
    return save_segformer(
        tmp_path_factory.mktemp("segformer_5"), ["sky", "tree", "road", "car", "person"], seed=1
    )


def make_image(path: Path, width: int = 96, height: int = 64, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[: height // 2] = (70, 130, 180)
    arr[height // 2 :] = (128, 64, 128)
    arr[height // 4 : height // 2, width // 4 : width // 2] = (220, 20, 60)
    arr = np.clip(arr.astype(int) + rng.integers(-10, 10, arr.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture()
def cityscapes_root(tmp_path) -> Path:
    """A Cityscapes-layout root holding the real fixture frame (skips when absent)."""
    import shutil

    src = need(CITYSCAPES)
    root = tmp_path / "cityscapes"
    img_dir = root / "leftImg8bit" / "val" / "frankfurt"
    gt_dir = root / "gtFine" / "val" / "frankfurt"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    shutil.copy(src / f"{CITY_STEM}_leftImg8bit.png", img_dir)
    for kind in ("labelIds", "labelTrainIds"):
        shutil.copy(src / f"{CITY_STEM}_gtFine_{kind}.png", gt_dir)
    return root
