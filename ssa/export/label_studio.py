"""`label-studio`: `<out>/tasks.json` (Label Studio tasks with pre-annotations) and
`<out>/label_config.xml` (the matching labelling config), for review and correction by people.

Each task: `data.image` = `--image-root-url` + the image's path relative to the image folder
(default root `/data/local-files/?d=`, Label Studio's local-files URL), and one prediction
(`model_version` "ssa", `score` the mean `predicted_iou`) whose `result` holds one region per
classed mask: `type` "brushlabels", `from_name` "label" (the `<BrushLabels name="label">` tag),
`to_name` "image" (the `<Image name="image">` tag), `value` `{format: "rle", rle, brushlabels:
[class name]}`, `original_width/height`, `score` the mask's `predicted_iou`. Regions are listed
largest first, so smaller masks are drawn on top, as the run painted them.

The RLE is Label Studio's brush format (not COCO's): an RGBA image of the mask (all four
channels 255 inside, 0 outside) flattened row-major, stored as a bit stream of a 32-bit value
count, a 5-bit word size - 1 (7), four 4-bit run-length field sizes - 1 (3, 4, 8, 16), then runs:
`1`, a 2-bit field index (3 here: 16 bits), the run length - 1, and the 8-bit value.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import numpy as np

from ssa.export.base import Exporter, ExportPlan, RunImage, read_part, write_part

RESULT = "result"
FROM_NAME = "label"
TO_NAME = "image"
DEFAULT_ROOT_URL = "/data/local-files/?d="
_RUN_BITS = 16
_MAX_RUN = 1 << _RUN_BITS


def _bits(values: np.ndarray, width: int) -> np.ndarray:
    """`(n, width) uint8` big-endian bits of each value."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return ((values.astype(np.uint64)[:, None] >> shifts) & 1).astype(np.uint8)


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE (a list of byte values) of an `(H, W) bool` mask."""
    flat = np.repeat(np.asarray(mask, dtype=bool).ravel(), 4)  # RGBA, every channel alike
    count = flat.size
    if count:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [count]]))
        values = np.where(flat[starts], 255, 0)
        pieces = np.maximum(1, -(-lengths // _MAX_RUN))  # runs longer than 2^16 are split
        run_values = np.repeat(values, pieces)
        run_lengths = np.full(int(pieces.sum()), _MAX_RUN, dtype=np.int64)
        last = np.cumsum(pieces) - 1
        run_lengths[last] = lengths - (pieces - 1) * _MAX_RUN
    else:
        run_values = run_lengths = np.zeros(0, dtype=np.int64)
    header = np.concatenate([
        _bits(np.array([count]), 32).ravel(),
        _bits(np.array([7]), 5).ravel(),
        _bits(np.array([2, 3, 7, 15]), 4).ravel(),
    ])  # fmt: skip
    runs = np.concatenate([
        np.ones((len(run_lengths), 1), dtype=np.uint8),
        np.ones((len(run_lengths), 2), dtype=np.uint8),  # field index 3: the 16-bit lengths
        _bits(run_lengths - 1, _RUN_BITS),
        _bits(run_values, 8),
    ], axis=1).ravel()  # fmt: skip
    return np.packbits(np.concatenate([header, runs])).tolist()


def label_config(class_names: list[str], colours: np.ndarray) -> str:
    """The labelling config: an Image tag and BrushLabels with one Label per class."""
    labels = "\n".join(
        f'    <Label value={quoteattr(name)} background="#{r:02x}{g:02x}{b:02x}"/>'
        for name, (r, g, b) in zip(class_names, colours.tolist())
    )
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </BrushLabels>\n'
        "</View>\n"
    )


def task(plan: ExportPlan, image: RunImage) -> dict:
    """One Label Studio task with the image's masks as a prediction."""
    root = plan.cfg.image_root_url if plan.cfg.image_root_url is not None else DEFAULT_ROOT_URL
    url = root + quote(image.item.rel.as_posix(), safe="/")
    masks = image.masks()
    areas = image.areas()
    order = sorted(range(len(image.annotations)), key=lambda k: -int(areas[k]))
    results, scores = [], []
    for k in order:
        cls = int(image.class_ids[k])
        if cls < 0:
            continue
        ann = image.annotations[k]
        score = 1.0 if ann.get("predicted_iou") is None else float(ann["predicted_iou"])
        scores.append(score)
        results.append({
            "id": f"{image.item.index + 1}-{k}",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "brushlabels",
            "original_width": image.width,
            "original_height": image.height,
            "image_rotation": 0,
            "score": score,
            "value": {"format": "rle", "rle": brush_rle(masks[k]),
                      "brushlabels": [plan.class_names[cls]]},
        })  # fmt: skip
    prediction = {"model_version": "ssa", "score": float(np.mean(scores)) if scores else 0.0,
                  "result": results}
    return {"id": image.item.index + 1, "data": {TO_NAME: url}, "predictions": [prediction]}


class LabelStudio(Exporter):
    name = "label-studio"
    needs_images = True

    def write_image(self, plan: ExportPlan, image: RunImage, staging: Path) -> None:
        write_part(staging, image.item.index, [task(plan, image)])

    def finish(self, plan: ExportPlan, staging: Path) -> Path:
        from ssa.export.base import category_colors, write_json_stream

        folder = staging / RESULT
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "label_config.xml").write_text(
            label_config(plan.class_names, category_colors(plan))
        )
        tasks = {"tasks": lambda: (next(read_part(staging, item.index)) for item in plan.items)}
        write_json_stream(folder / "tasks.json", None, tasks)
        return folder
