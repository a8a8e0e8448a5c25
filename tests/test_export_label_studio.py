"""`ssa export --format label-studio`, read back by Label Studio's own converter
(`label_studio_converter`: its config parser and brush RLE decoder)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from export_run import CLASSES, RELS, invoke, make_run, run_json

from ssa.io import decode_rle

brush = pytest.importorskip(
    "label_studio_converter.brush",
    reason="the Label Studio export is read back with the optional label-studio-converter")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_ls")
    data, out = make_run(tmp)
    folder = tmp / "ls"
    result = invoke("export", "--format", "label-studio", "--pred-dir", out, "--out", folder,
                    "--data-dir", data, "--image-root-url", "https://example.org/imgs/")
    assert result.exit_code == 0, result.output
    return out, folder


def test_brush_rle_decodes_to_the_run_masks(exported):
    out, folder = exported
    tasks = json.loads((folder / "tasks.json").read_text())
    assert [t["data"]["image"] for t in tasks] == [
        f"https://example.org/imgs/{rel.as_posix()}" for rel in RELS]
    regions = 0
    for task, rel in zip(tasks, RELS):
        anns = run_json(out, rel)["annotations"]
        (prediction,) = task["predictions"]
        results = prediction["result"]
        assert len(results) == sum(a["class_name"] is not None for a in anns)
        for result in results:
            k = int(result["id"].split("-")[1])
            height, width = result["original_height"], result["original_width"]
            rgba = brush.decode_rle(result["value"]["rle"]).reshape(height, width, 4)
            np.testing.assert_array_equal(rgba[..., 3] > 0, decode_rle(anns[k]["segmentation"]))
            assert result["value"]["brushlabels"] == [anns[k]["class_name"]]
            assert result["from_name"] == "label" and result["to_name"] == "image"
            regions += 1
    assert regions > 10


def test_config_parses_and_converter_reads_the_tasks(exported):
    Converter = pytest.importorskip(
        "label_studio_converter.converter", reason="label-studio-converter's Converter"
    ).Converter

    out, folder = exported
    config = (folder / "label_config.xml").read_text()
    tree = ET.fromstring(config)
    assert [lab.get("value") for lab in tree.iter("Label")] == CLASSES
    converter = Converter(config=config, project_dir=str(folder), download_resources=False)
    tasks = json.loads((folder / "tasks.json").read_text())
    for task, rel in zip(tasks, RELS):
        # A reviewer who accepts the prediction turns it into an annotation.
        accepted = dict(task, annotations=[{"id": 1, "result": task["predictions"][0]["result"]}])
        (item,) = list(converter.annotation_result_from_task(accepted))
        layers = brush.decode_from_annotation("label", item["output"]["label"])
        anns = [a for a in run_json(out, rel)["annotations"] if a["class_name"] is not None]
        by_class: dict[str, list[np.ndarray]] = {}
        for ann in anns:
            by_class.setdefault(ann["class_name"], []).append(decode_rle(ann["segmentation"]))
        got: dict[str, list[np.ndarray]] = {}
        for name, layer in layers.items():  # "label-<class>-<n>"
            got.setdefault(name.split("-")[1], []).append(layer > 0)
        assert sorted(got) == sorted(by_class)
        for name, masks in by_class.items():
            key = lambda m: m.tobytes()
            assert sorted(map(key, got[name])) == sorted(map(key, masks))


@pytest.mark.parametrize("shape", [(200, 300), (1, 1), (7, 5)])
def test_brush_rle_long_runs_and_edges(shape):
    """Runs longer than 2^16 values are split; empty, full and one-pixel masks round-trip."""
    from ssa.export.label_studio import brush_rle

    rng = np.random.default_rng(0)
    for mask in (np.zeros(shape, bool), np.ones(shape, bool), rng.random(shape) < 0.5):
        rgba = brush.decode_rle(brush_rle(mask)).reshape(*shape, 4)
        np.testing.assert_array_equal(rgba[..., 3] > 0, mask)
        assert (rgba[..., :3] == rgba[..., 3:]).all()
