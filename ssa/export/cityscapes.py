"""`cityscapes`: per image `labelIds/<city>/<stem>_labelIds.png` (trainIds mapped back to the
official labelIds; "no label" becomes 0, `unlabeled`) and `color/<city>/<stem>_color.png` (the
official colours), mirroring the city folders; `<stem>` is the image's stem without
`_leftImg8bit`.

The two kinds sit in separate trees because cityscapesscripts' evaluation finds a frame's
prediction by the glob `<city>_<seq>_<frame>*.png` under `CITYSCAPES_RESULTS` and stops at a
second match: point it at `<out>/labelIds`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssa.errors import SSAError
from ssa.export.base import Exporter, ExportPlan, RunImage

UNLABELED = 0  # the official labelId of `unlabeled` (ignored in evaluation)


def trainid_to_labelid_lut() -> np.ndarray:
    """`(65536,) uint8`: trainId (0..18) -> labelId; anything else -> 0 (unlabeled)."""
    from ssa.datasets import CITYSCAPES_ID_TO_TRAINID

    lut = np.full(65536, UNLABELED, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        lut[train_id] = label_id
    return lut


def out_stem(image: RunImage) -> Path:
    stem = image.item.stem_rel
    return stem.parent / stem.name.removesuffix("_leftImg8bit")


class Cityscapes(Exporter):
    name = "cityscapes"

    def check(self, plan: ExportPlan) -> None:
        from ssa.datasets import CITYSCAPES_CLASSES

        if plan.class_names != list(CITYSCAPES_CLASSES):
            raise SSAError(
                f"--format cityscapes needs a run with the 19 Cityscapes classes, but this run "
                f"has {plan.num_classes} ({', '.join(plan.class_names[:5])}...); use "
                f"coco-panoptic, coco-instances or hf-dataset for other classes"
            )

    def write_image(self, plan: ExportPlan, image: RunImage, staging: Path) -> None:
        from ssa import io
        from ssa.datasets import CITYSCAPES_PALETTE

        train_ids = image.label_map()
        label_ids = trainid_to_labelid_lut()[np.clip(train_ids, 0, 65535)]
        colours = np.zeros((65536, 3), dtype=np.uint8)
        colours[: len(CITYSCAPES_PALETTE)] = CITYSCAPES_PALETTE
        colour = colours[np.clip(train_ids, 0, 65535)]
        stem = out_stem(image)
        folder = staging / "result" / "labelIds" / stem.parent
        io.write_label_png(folder / f"{stem.name}_labelIds.png", label_ids, 255)
        path = staging / "result" / "color" / stem.parent / f"{stem.name}_color.png"
        io.write_rgb_png(path, colour)

    def finish(self, plan: ExportPlan, staging: Path) -> Path:
        (staging / "result" / "labelIds").mkdir(parents=True, exist_ok=True)
        (staging / "result" / "color").mkdir(parents=True, exist_ok=True)
        return staging / "result"
