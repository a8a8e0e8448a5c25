"""`ssa predict` takes every segmentor spec that `ssa run` takes: `py:` with `--segmentor-arg`,
`labels:` with `--classes` and `--label-map`.

Reference: the masks come back in the JSON (decoded with pycocotools); each mask's class is
recomputed by brute force from the label map the segmentor was given (counts inside the mask,
most first, ties to the lowest index).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image
from typer.testing import CliRunner

from ssa.cli.commands import app

NAMES = ["sky", "tree", "road"]

PLUGIN = textwrap.dedent(
    """
    import numpy as np

    class Rows:
        classes = ["sky", "tree", "road"]

        def __init__(self, split):
            self.split = split

        def __call__(self, image):  # labels: sky above `split`, road below, tree at the left
            labels = np.full(image.shape[:2], 2, dtype=np.int64)
            labels[: self.split] = 0
            labels[:, :20] = 1
            return labels

    def make(split: int):
        return Rows(split)
    """
)


def rows_labels(height: int, width: int, split: int) -> np.ndarray:
    labels = np.full((height, width), 2, dtype=np.int64)
    labels[:split] = 0
    labels[:, :20] = 1
    return labels


def top_class(mask: np.ndarray, labels: np.ndarray) -> str | None:
    inside = labels[mask]
    inside = inside[(inside >= 0) & (inside < len(NAMES))]
    if inside.size == 0:
        return None
    counts = np.bincount(inside, minlength=len(NAMES))
    return NAMES[int(np.argmax(counts))]  # argmax: ties to the lowest index


def predicted(tmp_path: Path, image: Path, sam_checkpoint: Path, *extra: str) -> list[dict]:
    from pycocotools import mask as mask_utils

    out = tmp_path / "pred.json"
    result = CliRunner().invoke(app, [
        "predict", str(image), "--box", "10,8,90,56", "--sam-model", "vit_b",
        "--sam-checkpoint", str(sam_checkpoint), "--device", "cpu", "--json", str(out), *extra,
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    masks = json.loads(out.read_text())["masks"]
    for m in masks:
        rle = dict(m["segmentation"], counts=m["segmentation"]["counts"].encode())
        m["array"] = mask_utils.decode(rle).astype(bool)
    return masks


@pytest.fixture()
def image(tmp_path) -> Path:
    return make_image(tmp_path / "street.png", width=96, height=64)


def test_predict_py_spec_with_segmentor_arg(tmp_path, image, sam_checkpoint):
    plugin = tmp_path / "rows.py"
    plugin.write_text(PLUGIN)
    masks = predicted(tmp_path, image, sam_checkpoint, "--segmentor", f"py:{plugin}:make",
                      "--segmentor-arg", "split=30")
    labels = rows_labels(64, 96, 30)
    assert len(masks) == 3
    for m in masks:
        assert m["class_name"] == top_class(m["array"], labels)


def test_predict_labels_spec_with_classes_and_label_map(tmp_path, image, sam_checkpoint):
    folder = tmp_path / "labels"
    folder.mkdir()
    rng = np.random.default_rng(3)
    stored = rng.choice([10, 20, 30, 99], size=(64, 96)).astype(np.uint8)  # 99: unlisted
    Image.fromarray(stored).save(folder / "street.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(NAMES) + "\n")
    label_map = tmp_path / "map.json"
    label_map.write_text(json.dumps({"10": "sky", "20": 1, "30": "road"}))
    masks = predicted(tmp_path, image, sam_checkpoint, "--segmentor", f"labels:{folder}",
                      "--classes", str(classes), "--label-map", str(label_map))
    labels = np.full(stored.shape, 255, dtype=np.int64)
    for value, cls in ((10, 0), (20, 1), (30, 2)):
        labels[stored == value] = cls
    assert len(masks) == 3
    for m in masks:
        assert m["class_name"] == top_class(m["array"], labels)


def test_predict_top_k_zero_refused_like_run_and_engine(tmp_path, image):
    for command in (["predict", str(image), "--point", "5,5"],
                    ["run", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")],
                    ["engine", "--data-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")]):
        result = CliRunner().invoke(app, [*command, "--top-k", "0"])
        assert result.exit_code == 2, result.output
        assert "--top-k 0" in result.output and "int >= 1" in result.output, result.output
