"""`coco-instances`: one COCO instances JSON for the whole run, also a valid COCO results file.

- `images`: `{id, file_name, height, width}`; id = position in the export + 1, file_name the
  image's path relative to the image folder (the `image_root` of detectron2/mmdet).
- `categories`: `{id, name, supercategory}`, id = class index + 1 (see `ssa.export.base`).
- `annotations`: one per mask that has a class: `segmentation` (COCO RLE, `counts` a str),
  `area` and `bbox` (XYWH) as pycocotools computes them from that RLE, `iscrowd` 0, `score`
  (the mask's `predicted_iou`, 1.0 when absent), `id` 1..M in image order. Masks may overlap:
  they are the run's masks, not the painted label map.
"""

from __future__ import annotations

from pathlib import Path

from ssa.export.base import (
    OWNER_KEY,
    Exporter,
    ExportPlan,
    RunImage,
    read_part,
    write_json_stream,
    write_part,
)

RESULT = "instances.json"


def image_record(image: RunImage) -> dict:
    rel = image.item.rel.as_posix()
    return {"id": image.item.index + 1, "file_name": rel, "height": image.height,
            "width": image.width}


def categories(plan: ExportPlan) -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": name}
            for i, name in enumerate(plan.class_names)]


def mask_annotations(image: RunImage) -> list[dict]:
    """The image's classed masks as COCO annotations without `id` (assigned when assembled)."""
    from pycocotools import mask as mask_utils

    out = []
    for ann, cls in zip(image.annotations, image.class_ids.tolist()):
        if cls < 0:
            continue
        rle = dict(ann["segmentation"])
        coded = {"size": rle["size"], "counts": str(rle["counts"]).encode("ascii")}
        score = ann.get("predicted_iou")
        out.append({
            "image_id": image.item.index + 1,
            "category_id": cls + 1,
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": str(rle["counts"])},
            "area": int(mask_utils.area(coded)),
            "bbox": [float(v) for v in mask_utils.toBbox(coded)],
            "iscrowd": 0,
            "score": 1.0 if score is None else float(score),
        })  # fmt: skip
    return out


class CocoInstances(Exporter):
    name = "coco-instances"
    needs_images = True

    def write_image(self, plan: ExportPlan, image: RunImage, staging: Path) -> None:
        write_part(staging, image.item.index, [image_record(image), *mask_annotations(image)])

    def finish(self, plan: ExportPlan, staging: Path) -> Path:
        indices = [item.index for item in plan.items]

        def images():
            for i in indices:
                yield next(read_part(staging, i))

        def annotations():
            next_id = 1
            for i in indices:
                parts = read_part(staging, i)
                next(parts)
                for ann in parts:
                    yield {"id": next_id, **ann}
                    next_id += 1

        path = staging / RESULT
        info = {"description": f"ssa export of {plan.cfg.pred_dir}", OWNER_KEY: self.name}
        head = {"info": info, "licenses": [],
                "categories": categories(plan)}
        write_json_stream(path, head, {"images": images, "annotations": annotations})
        return path
