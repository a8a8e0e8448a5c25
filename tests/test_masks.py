"""Mask branch: knobs, presets, checkpoint loading, and masks equal to the stock generator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CITY_STEM, CITYSCAPES, KEEP_ALL, need

from ssa.errors import SSAError
from ssa.masks import (
    AMG_PRESETS,
    SAM_ENCODERS,
    SamMaskSource,
    ensure_checkpoint,
    infer_encoder_config,
    load_sam,
    parse_amg,
    resolve_amg,
)


def test_parse_amg_types():
    out = parse_amg(
        ["points_per_side=16", "pred_iou_thresh=0.5", "crop-n-layers=1", "box_nms_thresh=1"]
    )
    assert out == {
        "points_per_side": 16,
        "pred_iou_thresh": 0.5,
        "crop_n_layers": 1,
        "box_nms_thresh": 1.0,
    }
    assert isinstance(out["box_nms_thresh"], float)
    assert parse_amg(["points_per_side=none"]) == {"points_per_side": None}


def test_unknown_amg_key_lists_valid_ones():
    with pytest.raises(SSAError) as err:
        parse_amg(["points_per_sid=3"])
    msg = str(err.value)
    assert "points_per_sid" in msg and "points_per_side" in msg and "\n" not in msg


@pytest.mark.parametrize("item", ["points_per_side=abc", "pred_iou_thresh", "stability_score_thresh=x"])
def test_bad_amg_values(item):
    with pytest.raises(SSAError):
        parse_amg([item])


def test_presets():
    import inspect

    from segment_anything import SamAutomaticMaskGenerator

    defaults = {
        k: p.default
        for k, p in inspect.signature(SamAutomaticMaskGenerator.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    default = resolve_amg("default")
    assert all(default[k] == defaults[k] for k in default)
    ssa = resolve_amg("ssa", {"points_per_side": 8})
    assert ssa["points_per_side"] == 8  # overrides win over the preset
    assert ssa["pred_iou_thresh"] == 0.86 and ssa["min_mask_region_area"] == 100
    assert AMG_PRESETS["ssa"]["crop_n_points_downscale_factor"] == 2
    with pytest.raises(SSAError, match="--amg-preset"):
        resolve_amg("fast")


def test_infer_official_encoder_configs():
    from ssa.masks import build_sam_from_config

    # Shapes only: a meta-device build avoids allocating ViT-H.
    for name, cfg in SAM_ENCODERS.items():
        with torch.device("meta"):
            state = build_sam_from_config(cfg).state_dict()
        assert infer_encoder_config(state) == cfg, name


def test_load_refuses_wrong_model_type(tmp_path):
    from ssa.masks import build_sam_from_config

    with torch.device("meta"):
        state = build_sam_from_config(SAM_ENCODERS["vit_b"]).state_dict()
    path = tmp_path / "b.pth"
    torch.save({k: torch.zeros(v.shape) for k, v in state.items()}, path)
    with pytest.raises(SSAError, match="pass --sam-model vit_b"):
        load_sam("vit_h", path)


def test_missing_and_bad_checkpoints(tmp_path, monkeypatch):
    with pytest.raises(SSAError, match="does not exist"):
        ensure_checkpoint("vit_b", tmp_path / "nope.pth")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SSAError) as err:
        ensure_checkpoint("vit_b", None)
    msg = str(err.value)
    assert "ckp/sam_vit_b_01ec64.pth" in msg and "dl.fbaipublicfiles.com" in msg
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SSAError, match="cannot load SAM checkpoint"):
        load_sam("vit_b", bad)


def test_failed_download_leaves_no_partial(tmp_path, monkeypatch):
    from ssa.masks import sam as masks

    monkeypatch.setattr(masks, "CHECKPOINT_URL", "http://127.0.0.1:9/")
    dest = tmp_path / "ckp" / "sam_vit_b_01ec64.pth"
    with pytest.raises(SSAError, match="could not be downloaded"):
        masks.download_checkpoint("vit_b", dest)
    assert list(dest.parent.iterdir()) == []


def test_download_moves_the_whole_file_in(tmp_path, monkeypatch):
    from ssa.masks import sam as masks

    served = tmp_path / "server" / "sam_vit_b_01ec64.pth"
    served.parent.mkdir()
    served.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    monkeypatch.setattr(masks, "CHECKPOINT_URL", served.parent.as_uri() + "/")
    dest = tmp_path / "ckp" / "sam_vit_b_01ec64.pth"
    seen: list[tuple[int, int | None]] = []
    assert masks.download_checkpoint("vit_b", dest, lambda d, t: seen.append((d, t))) == dest
    assert dest.read_bytes() == served.read_bytes()
    assert list(dest.parent.iterdir()) == [dest] and seen[-1] == (2**20, 2**20)


def test_official_sizes_are_segment_anythings_own_models():
    """build_sam_from_config gives the modules of segment-anything's registry builders."""
    from segment_anything import sam_model_registry

    from ssa.masks.sam import SAM_ENCODERS, build_sam_from_config

    ours = build_sam_from_config(SAM_ENCODERS["vit_b"])
    stock = sam_model_registry["vit_b"](checkpoint=None)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in stock.state_dict().items()}
    assert repr(ours) == repr(stock)


def _stock(sam, image, **settings):
    from segment_anything import SamAutomaticMaskGenerator

    with torch.inference_mode():
        return SamAutomaticMaskGenerator(sam, **settings).generate(image)


@pytest.mark.parametrize(
    "settings",
    [
        {"points_per_side": 4, **KEEP_ALL},
        {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
    ],
)
def test_masks_equal_stock_generator(sam_checkpoint, settings):
    from ssa.io import read_image

    image = read_image(need(CITYSCAPES) / f"{CITY_STEM}_leftImg8bit.png")
    sam = load_sam("vit_b", sam_checkpoint)
    ours = SamMaskSource(sam, **resolve_amg("default", settings)).generate_records(image)
    stock = _stock(load_sam("vit_b", sam_checkpoint), image, **settings)
    assert len(ours) == len(stock) > 0
    for a, b in zip(ours, stock):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert a["bbox"] == b["bbox"] and a["area"] == b["area"]
        # The fused decoder sums in another order: scores agree to float rounding.
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], rel=1e-5, abs=1e-6)
