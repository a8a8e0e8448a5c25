"""Issue 23, finding 5: `ssa export` checks every annotation of the run's JSONs before it uses
any (`ssa.export.validate`). A corrupt file is one line naming the file and the annotation,
exit 1, and nothing at `--out`; before, a short RLE made coco-panoptic and label-studio read
uninitialised memory (output that changed from run to run), other faults gave tracebacks and
coco-instances wrote wrong sizes and negative areas."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from export_run import RELS, invoke, make_run, things_file

from ssa import io
from ssa.errors import SSAError


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_validation")
    data, out = make_run(tmp)
    return tmp, data, out


def _short_or_long(rle: dict, delta: int) -> dict:
    """The RLE with its last run `delta` pixels longer (counts no longer sum to H x W)."""
    runs = io.rle_runs(rle["counts"], "x").tolist()
    runs[-1] += delta
    h, w = rle["size"]
    from pycocotools import mask as mask_utils

    coded = mask_utils.frPyObjects({"counts": runs, "size": [h, w]}, h, w)
    return {"size": [h, w], "counts": coded["counts"].decode("ascii")}


def _wrong_size(rle: dict) -> dict:
    h, w = rle["size"]
    return io.encode_rle(np.ones((1, h, w + 1), dtype=bool))[0]


CORRUPTIONS = {
    "short-rle": (lambda d: d["annotations"][2].update(
        segmentation=_short_or_long(d["annotations"][2]["segmentation"], -3)),
        "annotation 2: RLE counts cover"),
    "long-rle": (lambda d: d["annotations"][2].update(
        segmentation=_short_or_long(d["annotations"][2]["segmentation"], 5)),
        "annotation 2: RLE counts cover"),
    "wrong-size-rle": (lambda d: d["annotations"][1].update(
        segmentation=_wrong_size(d["annotations"][1]["segmentation"])),
        "annotation 1 is a 57x48 mask but the image is 56x48"),
    "no-segmentation": (lambda d: d["annotations"][3].pop("segmentation"),
                        "annotation 3 field 'segmentation'"),
    "not-a-dict": (lambda d: d["annotations"].__setitem__(4, 7), "annotation 4 is 7"),
    "bad-height": (lambda d: d["image"].update(height=-48), "field 'image.height' is -48"),
    "height-text": (lambda d: d["image"].update(height="48"), "field 'image.height' is '48'"),
    "negative-area": (lambda d: d["annotations"][0].update(area=-5),
                      "annotation 0 field 'area' is -5"),
    "nan-score": (lambda d: d["annotations"][5].update(predicted_iou=float("nan")),
                  "annotation 5 field 'predicted_iou' is nan"),
    "bbox-outside": (lambda d: d["annotations"][6].update(bbox=[50, 0, 20, 5]),
                     "annotation 6: bbox [50.0, 0.0, 20.0, 5.0] (XYWH) is not inside"),
    "counts-garbage": (lambda d: d["annotations"][0]["segmentation"].update(counts="\x7f\x7f"),
                       "annotation 0: RLE counts holds"),
}


def _args(fmt: str, run_dir, data, target, tmp):
    args = ["export", "--format", fmt, "--pred-dir", run_dir, "--out", target, "--data-dir", data]
    if fmt == "coco-panoptic":
        args += ["--things", things_file(tmp)]
    return args


@pytest.mark.parametrize("fmt", ["coco-instances", "coco-panoptic", "label-studio", "hf-dataset"])
@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_annotation_is_one_line(run, tmp_path, fmt, case):
    if fmt == "hf-dataset":
        pytest.importorskip("datasets", reason="hf-dataset needs the datasets package")
    tmp, data, out = run
    corrupt, phrase = CORRUPTIONS[case]
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    path = copy / "sub" / "b_semantic.json"
    doc = json.loads(path.read_text())
    corrupt(doc)
    path.write_text(json.dumps(doc))
    target = tmp_path / ("x.json" if fmt == "coco-instances" else "x")
    result = invoke(*_args(fmt, copy, data, target, tmp))
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.output.count("Error:") == 1, result.output
    assert "b_semantic.json" in text and phrase in text and "rerun" in text, text
    assert not target.exists()
    assert not list(tmp_path.glob(".ssa-tmp-*"))  # the staging folder went too


def test_good_run_still_exports_and_counts_are_exact(run, tmp_path):
    """The checks refuse nothing a run writes; the vectorised RLE reader agrees with
    pycocotools on every mask of the run."""
    _tmp, data, out = run
    from pycocotools import mask as mask_utils

    from ssa.export.validate import read_document

    for rel in RELS:
        doc = read_document(out / rel.parent / f"{rel.stem}_semantic.json")
        for ann in doc.annotations:
            rle = ann["segmentation"]
            runs = io.rle_runs(rle["counts"], "x")
            mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
            assert int(runs[1::2].sum()) == int(mask.sum()) and int(runs.sum()) == mask.size
    result = invoke(*_args("coco-instances", out, data, tmp_path / "i.json", tmp_path))
    assert result.exit_code == 0, result.output


def test_read_document_names_the_class_mask(run, tmp_path):
    _tmp, _data, out = run
    from ssa.export.validate import read_document

    path = tmp_path / "a_semantic.json"
    doc = json.loads((out / "a_semantic.json").read_text())
    doc["semantic_mask"]["9"] = doc["semantic_mask"][next(iter(doc["semantic_mask"]))]
    path.write_text(json.dumps(doc))
    with pytest.raises(SSAError, match="semantic_mask class '9' is not a class index"):
        read_document(path)
