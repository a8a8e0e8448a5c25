"""`ssa export --format coco-instances / coco-panoptic`, read back by pycocotools and by an
independent panoptic decoder (the panopticapi convention: id = R + 256 G + 256^2 B)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from export_run import CLASSES, RELS, THINGS, invoke, make_run, run_json, run_label_map, things_file
from PIL import Image

from ssa.io import decode_rle


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_coco")
    data, out = make_run(tmp)
    return tmp, data, out


def test_coco_instances_read_by_pycocotools(run):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    tmp, data, out = run
    path = tmp / "instances.json"
    result = invoke("export", "--format", "coco-instances", "--pred-dir", out, "--out", path,
                    "--data-dir", data)  # fmt: skip
    assert result.exit_code == 0, result.output
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    assert sorted(coco.getCatIds()) == list(range(1, len(CLASSES) + 1))
    images = coco.loadImgs(sorted(coco.getImgIds()))
    assert [img["file_name"] for img in images] == [r.as_posix() for r in RELS]
    checked = 0
    for img, rel in zip(images, RELS):
        with Image.open(data / img["file_name"]) as pil:
            assert (img["width"], img["height"]) == pil.size
        expected = [a for a in run_json(out, rel)["annotations"] if a["class_name"] is not None]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
        assert len(anns) == len(expected) > 0
        for ann, ref in zip(anns, expected):
            mask = coco.annToMask(ann).astype(bool)
            np.testing.assert_array_equal(mask, decode_rle(ref["segmentation"]))
            assert coco.loadCats(ann["category_id"])[0]["name"] == ref["class_name"]
            assert ann["area"] == int(mask.sum()) and ann["iscrowd"] == 0
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            assert ann["score"] == pytest.approx(ref["predicted_iou"])
            checked += 1
    # Skipped: the mask without a class (all its pixels unlabelled) is not exported.
    assert checked == len(coco.getAnnIds())
    # The same file is a results file: loadRes accepts it, and it scores AP 1.0 against itself.
    dets = coco.loadRes(json.loads(path.read_text())["annotations"])
    evaluator = COCOeval(coco, dets, "segm")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def decode_panoptic(png_path, segments_info, categories):
    """An independent decoder: PNG + segments_info -> class-index map (255 = void)."""
    rgb = np.asarray(Image.open(png_path).convert("RGB")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
    index = {c["id"]: i for i, c in enumerate(categories)}
    out = np.full(ids.shape, 255, dtype=np.int64)
    for seg in segments_info:
        out[ids == seg["id"]] = index[seg["category_id"]]
    return ids, out


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory):
    """A run where some masks hold too small a share of their class and keep the branch's
    labels (painted, so they cover larger masks, but without a class of their own)."""
    tmp = tmp_path_factory.mktemp("export_coco_share")
    data, out = make_run(tmp, "--min-vote-share", "0.6")
    assert any(a["class_name"] is None and a["area"] > 9
               for rel in RELS for a in run_json(out, rel)["annotations"])
    return tmp, data, out


@pytest.mark.parametrize("which", ["run", "shared_run"])
def test_coco_panoptic_decodes_to_the_label_map(which, request):
    tmp, data, out = request.getfixturevalue(which)
    folder = tmp / "panoptic"
    result = invoke("export", "--format", "coco-panoptic", "--pred-dir", out, "--out", folder,
                    "--data-dir", data, "--things", things_file(tmp))  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads((folder / "annotations" / "panoptic_default.json").read_text())
    cats = doc["categories"]
    assert [c["name"] for c in cats] == CLASSES
    assert {c["name"] for c in cats if c["isthing"]} == set(THINGS)
    assert [img["file_name"] for img in doc["images"]] == [r.as_posix() for r in RELS]
    assert [a["image_id"] for a in doc["annotations"]] == [img["id"] for img in doc["images"]]
    kinds = set()
    for ann, rel in zip(doc["annotations"], RELS):
        ids, labels = decode_panoptic(folder / "annotations" / "panoptic_default" / ann["file_name"],
                                      ann["segments_info"], cats)  # fmt: skip
        np.testing.assert_array_equal(labels, run_label_map(out, rel))
        seg_ids = [s["id"] for s in ann["segments_info"]]
        assert len(seg_ids) == len(set(seg_ids)) and 0 not in seg_ids
        assert set(np.unique(ids)) - {0} == set(seg_ids)
        masks = [(decode_rle(a["segmentation"]), a["class_name"])
                 for a in run_json(out, rel)["annotations"]]  # fmt: skip
        for seg in ann["segments_info"]:
            pixels = ids == seg["id"]
            ys, xs = np.nonzero(pixels)
            assert seg["area"] == int(pixels.sum())
            assert seg["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
            name = cats[seg["category_id"] - 1]["name"]
            if name in THINGS and not seg["iscrowd"]:  # a thing instance lies inside its mask
                assert any((pixels <= m).all() and n == name for m, n in masks)
                kinds.add("thing")
            elif name not in THINGS:
                assert seg["iscrowd"] == 0
                assert int(pixels.sum()) == int((labels == CLASSES.index(name)).sum())
                kinds.add("stuff")
        # one stuff segment per class present
        stuff = [cats[s["category_id"] - 1]["name"] for s in ann["segments_info"]
                 if not cats[s["category_id"] - 1]["isthing"]]  # fmt: skip
        assert len(stuff) == len(set(stuff))
    assert kinds == {"thing", "stuff"}, "the fixture must hold thing instances and stuff"


def test_coco_panoptic_imported_by_datumaro(run):
    """datumaro's own coco_panoptic importer (skipped where datumaro is not installed: it pins
    older pillow/pyarrow/pandas than this project's environment, see the README)."""
    dm = pytest.importorskip(
        "datumaro", reason="datumaro's coco_panoptic importer is an optional reader")
    tmp, data, out = run
    folder = tmp / "panoptic_dm"
    result = invoke("export", "--format", "coco-panoptic", "--pred-dir", out, "--out", folder,
                    "--data-dir", data, "--things", things_file(tmp), "--split", "val")
    assert result.exit_code == 0, result.output
    doc = json.loads((folder / "annotations" / "panoptic_val.json").read_text())
    dataset = dm.Dataset.import_from(str(folder), "coco_panoptic")
    items = list(dataset)
    assert len(items) == len(doc["images"]) == len(RELS)
    labels = dataset.categories()[dm.AnnotationType.label]
    assert [label.name for label in labels] == CLASSES
    segments = {seg["id"]: seg for ann in doc["annotations"] for seg in ann["segments_info"]}
    total = 0
    for item in items:
        ann = next(a for a in doc["annotations"] if a["image_id"] == item.attributes["id"])
        by_id = {s["id"]: s for s in ann["segments_info"]}
        assert item.media.has_data  # the image, through <out>/images/val
        assert sorted(m.id for m in item.annotations) == sorted(by_id)
        for mask in item.annotations:
            assert int(mask.image.sum()) == by_id[mask.id]["area"]
            assert labels[mask.label].name == CLASSES[by_id[mask.id]["category_id"] - 1]
        total += len(item.annotations)
    assert total == sum(len(a["segments_info"]) for a in doc["annotations"]) > 0
    assert segments


def test_panoptic_segments_hand_worked():
    """A large car mask under a small mask that kept the branch's labels (person): the person
    pixels are no car instance but a crowd person segment; uncovered thing pixels likewise;
    sky (stuff) is one segment."""
    from ssa.export.base import RunImage, RunItem
    from ssa.export.coco_panoptic import segments
    from ssa.io import encode_rle

    height, width = 6, 8
    car = np.zeros((height, width), bool)
    car[:, :6] = True
    small = np.zeros((height, width), bool)
    small[2:4, 2:4] = True
    label = np.full((height, width), 0)  # sky
    label[car] = 3
    label[small] = 4  # the small mask kept the branch's labels: person
    label[0, 7] = 4  # a person pixel no mask covers
    label[5, 7] = 255
    anns = [{"segmentation": rle, "area": int(m.sum())}
            for m, rle in zip((car, small), encode_rle(np.stack([car, small])))]

    item = RunItem(0, Path("x.png"), Path("none.json"), Path("none.png"), None)
    image = RunImage(item, height, width, anns, np.array([3, -1]), len(CLASSES))
    image.label_map = lambda: label  # the run's map, as its PNG would give it
    things = np.array([n in THINGS for n in CLASSES])
    ids, info = segments(image, things)
    by_id = {s["id"]: s for s in info}
    cat = {s["id"]: CLASSES[s["category_id"] - 1] for s in info}
    car_ids = {i for i, c in cat.items() if c == "car"}
    (car_id,) = car_ids
    assert by_id[car_id]["iscrowd"] == 0
    np.testing.assert_array_equal(ids == car_id, car & ~small)
    (person,) = [i for i, c in cat.items() if c == "person"]
    assert by_id[person]["iscrowd"] == 1 and by_id[person]["area"] == 5
    np.testing.assert_array_equal(ids == person, label == 4)
    (sky,) = [i for i, c in cat.items() if c == "sky"]
    np.testing.assert_array_equal(ids == sky, label == 0)
    assert (ids == 0).sum() == 1 and ids[5, 7] == 0
    assert by_id[sky]["bbox"] == [6, 0, 2, 6]


def test_builtin_thing_splits():
    from ssa.datasets import ADE20K_CLASSES, CITYSCAPES_CLASSES
    from ssa.export.base import ExportConfig, ExportPlan
    from ssa.export.coco_panoptic import thing_flags

    def flags(names):
        return thing_flags(ExportPlan(ExportConfig("coco-panoptic", ".", "x"), [], list(names)))

    ade = flags(ADE20K_CLASSES)
    assert ade.sum() == 100
    assert ade[ADE20K_CLASSES.index("person")] and ade[ADE20K_CLASSES.index("car")]
    assert not ade[ADE20K_CLASSES.index("wall")] and not ade[ADE20K_CLASSES.index("sky")]
    city = flags(CITYSCAPES_CLASSES)
    assert [n for n, f in zip(CITYSCAPES_CLASSES, city) if f] == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
