"""Dataset layouts, ground-truth pairing, label conversion, and config precedence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import CITY_STEM, CITYSCAPES, need

from ssa.config import build_config, load_yaml
from ssa.datasets import (
    ADE20K_CLASSES,
    CITYSCAPES_CLASSES,
    cityscapes_labelids_to_trainids,
    get_dataset,
    read_ade20k_gt,
)
from ssa.errors import SSAError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_class_counts():
    assert len(ADE20K_CLASSES) == 150 and len(set(ADE20K_CLASSES)) == 150
    assert len(CITYSCAPES_CLASSES) == 19
    assert get_dataset("foggy_driving").classes == CITYSCAPES_CLASSES


def test_ade20k_layout(tmp_path):
    touch(tmp_path / "images" / "validation" / "ADE_val_00000002.jpg")
    touch(tmp_path / "images" / "validation" / "ADE_val_00000001.jpg")
    touch(tmp_path / "images" / "training" / "ADE_train_00000001.jpg")
    gt = touch(tmp_path / "annotations" / "validation" / "ADE_val_00000001.png")
    spec = get_dataset("ade20k")
    root, rels = spec.list_images(tmp_path)
    assert root == tmp_path / "images" / "validation"
    assert [str(r) for r in rels] == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"]
    assert spec.gt_path(tmp_path, None, rels[0]) == gt
    assert spec.gt_path(tmp_path, None, rels[1]) is None


def test_cityscapes_every_city_and_foggy_driving(tmp_path):
    for city in ("munster", "frankfurt", "lindau"):
        touch(tmp_path / "leftImg8bit" / "val" / city / f"{city}_000000_000019_leftImg8bit.png")
    touch(tmp_path / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png")
    spec = get_dataset("cityscapes")
    _, rels = spec.list_images(tmp_path)
    assert [r.parts[0] for r in rels] == ["frankfurt", "lindau", "munster"]
    assert spec.gt_path(tmp_path, None, rels[1]).name == "lindau_000000_000019_gtFine_labelIds.png"
    touch(tmp_path / "leftImg8bit" / "test" / "public" / "a.png")
    touch(tmp_path / "leftImg8bit" / "test" / "pedestrian" / "b.jpg")
    _, rels = get_dataset("foggy_driving").list_images(tmp_path)
    assert [str(r) for r in rels] == ["pedestrian/b.jpg", "public/a.png"]


def test_folder_is_recursive_and_skips_only_its_outputs(tmp_path):
    touch(tmp_path / "a.png")
    touch(tmp_path / "deep" / "er" / "b.JPG")
    touch(tmp_path / "notes.txt")
    # Names that look like outputs are images unless they lie under the out-dir.
    for name in ("deep/b_semantic.png", "c_branch.png", "d_vis.jpg"):
        touch(tmp_path / name)
    touch(tmp_path / ".ssa-tmp-x1.png")  # a killed run's temporary file
    touch(tmp_path / "out" / "a_semantic.png")
    touch(tmp_path / "out" / "a_vis.jpg")
    touch(tmp_path / "out" / "sub" / ".ssa-tmp-x2.png")
    spec = get_dataset("folder")
    everything = ["a.png", "c_branch.png", "d_vis.jpg", "deep/b_semantic.png", "deep/er/b.JPG"]
    _, rels = spec.list_images(tmp_path, out_dir=tmp_path / "out")
    assert [r.as_posix() for r in rels] == everything
    _, rels = spec.list_images(tmp_path, out_dir=tmp_path / "elsewhere")
    assert [r.as_posix() for r in rels] == everything + ["out/a_semantic.png", "out/a_vis.jpg"]


def test_out_dir_equal_to_the_image_folder(tmp_path):
    for name in ("a.jpg", "a_semantic.png", "a_branch.png", "a_vis.jpg", "b_semantic.png",
                 "b_semantic_semantic.png", "sub/c.png", "sub/c_vis.jpg", "sub/a_vis.jpg"):
        touch(tmp_path / name)
    _, rels = get_dataset("folder").list_images(tmp_path, out_dir=tmp_path)
    # b_semantic.png has no b.* beside it: an image; its own output goes.
    assert [r.as_posix() for r in rels] == ["a.jpg", "b_semantic.png", "sub/a_vis.jpg",
                                            "sub/c.png"]


def test_bad_dataset_inputs(tmp_path):
    with pytest.raises(SSAError, match="ade20k, cityscapes"):
        get_dataset("coco")
    with pytest.raises(SSAError, match="is not a folder"):
        get_dataset("folder").list_images(tmp_path / "missing")
    with pytest.raises(SSAError, match="no image folder"):
        get_dataset("ade20k").list_images(tmp_path)


def test_labelids_to_trainids_on_real_frame():
    from PIL import Image

    folder = need(CITYSCAPES)
    ids = np.asarray(Image.open(folder / f"{CITY_STEM}_gtFine_labelIds.png"))
    official = np.asarray(Image.open(folder / f"{CITY_STEM}_gtFine_labelTrainIds.png"))
    ours = cityscapes_labelids_to_trainids(ids)
    # The fixture's two maps were downscaled separately, so a few boundary pixels disagree
    # (77 of 32768); every labelId must map to the trainId the official file gives it most.
    assert (ours == official).mean() > 0.997
    for label_id in np.unique(ids):
        values, counts = np.unique(official[ids == label_id], return_counts=True)
        assert ours[ids == label_id][0] == values[counts.argmax()], label_id


def test_ade20k_reduce_zero_label(tmp_path):
    from PIL import Image

    path = tmp_path / "a.png"
    Image.fromarray(np.array([[0, 1, 150]], dtype=np.uint8)).save(path)
    assert read_ade20k_gt(path).tolist() == [[255, 0, 149]]


def test_config_precedence(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("dataset: ade20k\ntop-k: 5\nsam_model: vit_b\namg:\n  points_per_side: 8\n")
    values = load_yaml(cfg_file)
    cfg = build_config(values, {"top_k": 2, "sam_model": None, "amg": {"crop_n_layers": 1}})
    assert cfg.dataset == "ade20k" and cfg.top_k == 2 and cfg.sam_model == "vit_b"
    assert cfg.amg == {"points_per_side": 8, "crop_n_layers": 1}
    assert build_config({}, {}).sam_model == "vit_h"


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datset: ade20k\n")
    with pytest.raises(SSAError, match="unknown key 'datset'"):
        load_yaml(bad)
    with pytest.raises(SSAError, match="does not exist"):
        load_yaml(tmp_path / "none.yaml")
    bad.write_text("- a\n- b\n")
    with pytest.raises(SSAError, match="mapping"):
        load_yaml(bad)


@pytest.mark.parametrize("name", ["ade20k", "cityscapes", "foggy_driving"])
def test_shipped_configs_load(name):
    values = load_yaml(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert build_config(values, {}).dataset == name


def test_run_and_engine_list_without_their_out_dir(tmp_path):
    from ssa.datasets import select_images

    touch(tmp_path / "x_semantic.png")
    touch(tmp_path / "out" / "x_semantic_semantic.png")
    touch(tmp_path / "out" / ".ssa-tmp-k1ll3d.png")
    cfg = build_config({}, {"data_dir": tmp_path, "out_dir": tmp_path / "out"})
    _, rels = select_images(cfg.dataset, cfg.data_dir, cfg.split, cfg.limit, cfg.out_dir)
    assert [r.as_posix() for r in rels] == ["x_semantic.png"]
    _, rels = select_images("folder", tmp_path, None, None, tmp_path / "out")  # as the engine
    assert [r.as_posix() for r in rels] == ["x_semantic.png"]


def test_cityscapes_tables_are_the_official_ones():
    """Names, palette and labelId -> trainId against cityscapesScripts' own `labels` table."""
    labels = pytest.importorskip(
        "cityscapesscripts.helpers.labels",
        reason="the official Cityscapes tables come with the optional cityscapesscripts")
    from ssa.datasets import CITYSCAPES_ID_TO_TRAINID, CITYSCAPES_PALETTE

    train = sorted((lab for lab in labels.labels if 0 <= lab.trainId < 255),
                   key=lambda lab: lab.trainId)
    assert [lab.trainId for lab in train] == list(range(19))
    assert CITYSCAPES_CLASSES == tuple(lab.name for lab in train)
    assert CITYSCAPES_PALETTE == tuple(tuple(lab.color) for lab in train)
    official = {lab.id: lab.trainId for lab in labels.labels
                if lab.id >= 0 and 0 <= lab.trainId < 255}
    assert CITYSCAPES_ID_TO_TRAINID == official
    ids = np.array([[lab.id for lab in labels.labels]])  # every labelId, -1 (license plate) too
    want = [lab.trainId if 0 <= lab.trainId < 255 else 255 for lab in labels.labels]
    assert cityscapes_labelids_to_trainids(ids)[0].tolist() == want
