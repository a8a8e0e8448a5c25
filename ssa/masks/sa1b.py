"""SA-1B-style JSON masks as a mask source (`json:<folder>`, or a bare folder).

One file per image: `<folder>/<rel's parent>/<rel's stem>.json` (else `<folder>/<stem>.json`, see
`ssa.companions`), holding `annotations` with COCO RLE `segmentation` (and any other fields).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import SSAError
from ssa.masks.base import MaskResult


def read_sa1b_json(path: str | Path) -> list[dict[str, Any]]:
    """Mask records from an SA-1B-style JSON (`annotations` with COCO RLE `segmentation`).

    Each record keeps its fields; `segmentation` stays an RLE dict (decode with `ssa.io.decode_rle`).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SSAError(f"cannot read masks {path} ({exc}); pass SA-1B-style JSON files") from None
    annotations = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(annotations, list):
        raise SSAError(f"masks file {path} has no 'annotations' list; pass SA-1B-style JSON files")
    for i, ann in enumerate(annotations):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
            raise SSAError(
                f"masks file {path}: annotation {i} has no COCO RLE 'segmentation' "
                f"({{'size', 'counts'}}); pass SA-1B-style JSON files"
            )
    return annotations


class JsonMasks:
    """Masks read from SA-1B-style JSON files instead of running a model (`--masks json:DIR`).

    `generate(image, path=rel)` reads the image's file and returns its annotations: every field
    of the file kept, `segmentation` as COCO RLE (`counts` str, in pycocotools' one encoding of
    the mask: `ssa.io.canonical_rle`), `area` (pixel count) and `bbox` (`XYWH`, pycocotools'
    `toBbox`, as `ssa.masks.base.mask_bbox`) computed when the file lacks them. The masks are
    an `ssa.io.RleStack`: never decoded all at once, so memory grows with the image's pixels,
    not with masks x pixels. They are at the size the file was made for
    (`masks_at_original_size`: under `--max-pixels` the labeller reads them for the original
    image and resizes them).
    """

    masks_at_original_size = True

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise SSAError(f"--masks {folder} is not a folder; pass the folder of <stem>.json files")

    def generate(self, image: np.ndarray, *, path: Path | None = None) -> MaskResult:
        from pycocotools import mask as mask_utils

        from ssa.companions import find_companion
        from ssa.io import RleStack, canonical_rle, check_rle, rle_runs

        file = find_companion(self.folder, path, (".json",), "mask file")
        height, width = image.shape[:2]
        annotations = read_sa1b_json(file)
        records = []
        for i, ann in enumerate(annotations):
            where = f"masks file {file}: annotation {i}"
            seg = ann["segmentation"]
            check_rle(seg, where)
            size = [int(v) for v in seg["size"]]
            if size != [height, width]:
                raise SSAError(
                    f"{where} is {size[0]}x{size[1]} but the image is "
                    f"{height}x{width}; pass masks made for this image at its full resolution"
                )
            counts = seg["counts"]
            if isinstance(counts, bytes):
                counts = counts.decode("ascii")
            runs = rle_runs(counts, where) if isinstance(counts, str) else np.asarray(counts)
            rle = canonical_rle(runs, size)
            record = {**ann, "segmentation": rle}
            if "area" not in record:
                record["area"] = int(runs[1::2].sum())
            if "bbox" not in record:
                coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
                record["bbox"] = [int(v) for v in mask_utils.toBbox(coded)]
            records.append(record)
        return MaskResult(records, RleStack([r["segmentation"] for r in records], (height, width)))
