"""`coco-panoptic`: the COCO panoptic format in COCO's layout, `<out>/annotations/
panoptic_<subset>.json` and one PNG per image under `<out>/annotations/panoptic_<subset>/`
(`<rel.parent>/<rel.stem>.png`, segment id = R + 256 G + 256^2 B, 0 = void); `<subset>` is
`--split`, else the dataset's default split, else `default` (the PNG folder is named after the
JSON, as COCO, datumaro and detectron2's builtin datasets expect), and `<out>/images/<subset>`,
a symbolic link to the run's image folder, so the folder is a whole COCO-layout dataset.

Segments come from the run's label map (`<stem>_semantic.png`), so decoding the PNG and the JSON
gives back that map exactly:
- a thing class: one segment per mask of that class, its pixels where the mask is the top
  labelled mask (masks painted largest first, as the run painted them) and the map shows its
  class; thing pixels no such mask explains (the segmentor's own, between masks) form one
  `iscrowd: 1` segment per class;
- a stuff class: one segment per class per image;
- "no label" pixels are void (id 0).
Segment ids are 1..S per image (things in mask order, then classes by index); `category_id` is
class index + 1; `categories` carry `isthing` and a colour. Thing classes: the ADE20K-150 split
of its panoptic release (100 things) and Cityscapes' 8 instance classes built in; `--things
FILE` (one class name per line) for any other class list.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssa.errors import SSAError
from ssa.export.base import Exporter, ExportPlan, RunImage, read_part, write_json_stream, write_part
from ssa.words import did_you_mean

RESULT = "result"


def subset_name(plan: ExportPlan) -> str:
    from ssa.datasets import get_dataset

    return plan.cfg.split or get_dataset(plan.cfg.dataset).default_split or "default"


def json_path(plan: ExportPlan) -> Path:
    """The JSON's path relative to `--out`; its PNG folder is the same without `.json`."""
    return Path("annotations") / f"panoptic_{subset_name(plan)}.json"

# ADE20K-150 class indices that are things in the ADE20K panoptic split (its instance classes).
ADE20K_THING_IDS = (
    7, 8, 10, 12, 14, 15, 18, 19, 20, 22, 23, 24, 27, 30, 31, 32, 33, 35, 36, 37, 38, 39, 41,
    42, 43, 44, 45, 47, 49, 50, 53, 55, 56, 57, 58, 62, 64, 65, 66, 67, 69, 70, 71, 72, 73, 74,
    75, 76, 78, 80, 81, 82, 83, 85, 86, 87, 88, 89, 90, 92, 93, 95, 97, 98, 102, 103, 104, 107,
    108, 110, 111, 112, 115, 116, 118, 119, 120, 121, 123, 124, 125, 126, 127, 129, 130, 132,
    133, 134, 135, 136, 137, 138, 139, 142, 143, 144, 146, 147, 148, 149,
)  # fmt: skip
CITYSCAPES_THINGS = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


def thing_flags(plan: ExportPlan) -> np.ndarray:
    """`(C,) bool`: which classes are things (built-in splits or `--things FILE`)."""
    from ssa.datasets import ADE20K_CLASSES, CITYSCAPES_CLASSES
    from ssa.evaluation.evaluate import load_class_names

    names = plan.class_names
    flags = np.zeros(len(names), dtype=bool)
    if plan.cfg.things is not None:
        things = load_class_names(Path(plan.cfg.things))
        unknown = [t for t in things if t not in names]
        if unknown:
            raise SSAError(
                f"--things {plan.cfg.things} names {', '.join(map(repr, unknown[:5]))}, not among "
                f"the run's classes{did_you_mean(unknown[0], names)}; use the run's class names"
            )
        flags[[names.index(t) for t in things]] = True
    elif names == list(ADE20K_CLASSES):
        flags[list(ADE20K_THING_IDS)] = True
    elif names == list(CITYSCAPES_CLASSES):
        flags[[names.index(t) for t in CITYSCAPES_THINGS]] = True
    else:
        raise SSAError(
            "--format coco-panoptic needs to know which classes are things: pass --things FILE "
            "(thing class names, one per line; the others are stuff)"
        )
    return flags


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """`(H, W)` segment ids -> `(H, W, 3) uint8` with id = R + 256 G + 256^2 B."""
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], axis=-1).astype(np.uint8)


def segments(image: RunImage, things: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """The image's panoptic segments: `(H, W) int64` segment ids (0 = void) and their
    `segments_info` (`id, category_id, area, bbox XYWH, iscrowd`)."""
    import torch

    from ssa.voting import paint

    label = image.label_map()
    num_classes = image.num_classes
    valid = (label >= 0) & (label < num_classes)
    lab = np.where(valid, label, num_classes)  # num_classes: the void bucket
    classes = image.class_ids
    n = len(classes)
    if n:
        order_ids = torch.where(torch.from_numpy(classes) >= 0, torch.arange(n), -1)
        areas = torch.from_numpy(image.areas())
        top = paint(torch.from_numpy(image.masks()), order_ids,
                    torch.full(label.shape, -1), areas=areas).numpy()
    else:
        top = np.full(label.shape, -1, dtype=np.int64)
    top_class = np.append(classes, -2)[top]  # top -1 (no mask) indexes the -2 sentinel
    is_thing = np.append(things, False)
    inst = np.where(is_thing[lab] & (top_class == lab), top, -1)
    key = np.where(inst >= 0, inst, n + lab)  # mask k, or n + class (n + C = void)
    uniq, inverse = np.unique(key.ravel(), return_inverse=True)
    void = n + num_classes
    seg_ids = np.zeros(len(uniq), dtype=np.int64)
    keep = uniq != void
    seg_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    id_map = seg_ids[inverse].reshape(label.shape)
    areas_px = np.bincount(inverse, minlength=len(uniq))
    height, width = label.shape
    rows = np.repeat(np.arange(height), width)
    cols = np.tile(np.arange(width), height)
    big = np.iinfo(np.int64).max
    y0, x0 = np.full(len(uniq), big), np.full(len(uniq), big)
    y1, x1 = np.full(len(uniq), -1), np.full(len(uniq), -1)
    np.minimum.at(y0, inverse, rows)
    np.minimum.at(x0, inverse, cols)
    np.maximum.at(y1, inverse, rows)
    np.maximum.at(x1, inverse, cols)
    info = []
    for j, k in enumerate(uniq.tolist()):
        if k == void:
            continue
        cls = int(classes[k]) if k < n else k - n
        info.append({
            "id": int(seg_ids[j]),
            "category_id": cls + 1,
            "area": int(areas_px[j]),
            "bbox": [int(x0[j]), int(y0[j]), int(x1[j] - x0[j] + 1), int(y1[j] - y0[j] + 1)],
            "iscrowd": int(k >= n and bool(things[cls])),
        })  # fmt: skip
    return id_map, info


class CocoPanoptic(Exporter):
    name = "coco-panoptic"
    needs_images = True

    def check(self, plan: ExportPlan) -> None:
        self.things = thing_flags(plan)

    def write_image(self, plan: ExportPlan, image: RunImage, staging: Path) -> None:
        from ssa import io

        id_map, info = segments(image, self.things)
        png = (image.item.stem_rel.parent / f"{image.item.stem_rel.name}.png").as_posix()
        io.write_rgb_png(staging / RESULT / json_path(plan).with_suffix("") / png,
                         id_to_rgb(id_map))
        image_id = image.item.index + 1
        write_part(staging, image.item.index, [
            {"id": image_id, "file_name": image.item.rel.as_posix(), "height": image.height,
             "width": image.width},
            {"image_id": image_id, "file_name": png, "segments_info": info},
        ])  # fmt: skip

    def finish(self, plan: ExportPlan, staging: Path) -> Path:
        from ssa.export.base import category_colors

        colours = category_colors(plan).tolist()
        cats = [{"id": i + 1, "name": name, "supercategory": name, "isthing": int(self.things[i]),
                 "color": colours[i]} for i, name in enumerate(plan.class_names)]
        indices = [item.index for item in plan.items]

        def nth(which: int):
            def gen():
                for i in indices:
                    parts = read_part(staging, i)
                    record = next(parts)
                    yield record if which == 0 else next(parts)
            return gen

        (staging / RESULT / json_path(plan).with_suffix("")).mkdir(parents=True, exist_ok=True)
        images = staging / RESULT / "images" / subset_name(plan)
        images.parent.mkdir(parents=True, exist_ok=True)
        images.symlink_to(Path(plan.image_root).resolve(), target_is_directory=True)
        head = {"info": {"description": f"ssa export of {plan.cfg.pred_dir}"}, "licenses": [],
                "categories": cats}
        write_json_stream(staging / RESULT / json_path(plan), head,
                          {"images": nth(0), "annotations": nth(1)})
        return staging / RESULT
