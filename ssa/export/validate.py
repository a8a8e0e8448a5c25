"""Typed models of a run's `<stem>_semantic.json`, and the one reader every export uses.

`read_document(path)` parses the file and checks all of it before an export uses any of it:
the image size (two integers >= 1, under 2^32 pixels), every annotation (a mapping whose
`segmentation` is a COCO RLE of exactly the image's size whose counts cover height x width
pixels, `ssa.io.check_rle`; `area` an integer in 0..H x W; `bbox` four finite numbers XYWH
inside the image; `predicted_iou`, `stability_score` finite; `class_name` a string or null;
`class_proposals` strings), `class_names` (strings) and `semantic_mask` (class index ->
RLE of the image's size). pycocotools decodes a short RLE into uninitialised memory and
writes a long one past its buffer, so no RLE reaches it unchecked. A bad file is one SSAError
line naming the file, the annotation's index, the field and the fix. Fields ssa does not use
are kept as they are (a mask source may add its own).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ssa import io
from ssa.errors import SSAError

MAX_PIXELS = (1 << 32) - 1  # pycocotools counts runs in 32 bits
FIX = "rerun `ssa run --overwrite` on that image"

Count = Annotated[int, Field(strict=True, ge=0)]
Side = Annotated[int, Field(strict=True, ge=1)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class Rle(BaseModel):
    """COCO RLE: `size` `[H, W]`, `counts` a compressed string or a list of run lengths."""

    model_config = ConfigDict(extra="allow")
    size: tuple[Count, Count]
    counts: Annotated[str, Field(strict=True)] | list[Count]


class Annotation(BaseModel):
    """One mask record of a run (see DESIGN.md, "Contracts")."""

    model_config = ConfigDict(extra="allow")
    segmentation: Rle
    area: Count | None = None
    bbox: tuple[Finite, Finite, Finite, Finite] | None = None
    predicted_iou: Finite | None = None
    stability_score: Finite | None = None
    class_name: Annotated[str, Field(strict=True)] | None = None
    class_proposals: list[Annotated[str, Field(strict=True)]] = []


class ImageSize(BaseModel):
    model_config = ConfigDict(extra="allow")
    height: Side
    width: Side


class RunDocument(BaseModel):
    """A whole `<stem>_semantic.json`; `height`/`width` are filled from `image` (or, for a
    document without one, from its first annotation) by `read_document`."""

    model_config = ConfigDict(extra="allow")
    image: ImageSize | None = None
    annotations: list[Annotation]
    class_names: list[Annotated[str, Field(strict=True)]] | None = None
    semantic_mask: dict[str, Rle] | None = None


def _where(path: Path, loc: tuple[Any, ...]) -> str:
    if len(loc) >= 2 and loc[0] == "annotations" and isinstance(loc[1], int):
        field = ".".join(str(p) for p in loc[2:])
        return f"{path}: annotation {loc[1]}" + (f" field {field!r}" if field else "")
    return f"{path}: field {'.'.join(str(p) for p in loc)!r}" if loc else f"{path}"


def _first_error(path: Path, exc: ValidationError) -> SSAError:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    # A union (RLE counts: str | list) reports one error per branch; the loc names the branch.
    loc = tuple(p for p in loc if not (isinstance(p, str) and p in ("str", "list[int]")
                                       or str(p).startswith(("list[", "constrained-str"))))
    message = err["msg"]
    if "counts" in loc:  # both branches of the union failed: say what either needs
        loc = loc[: loc.index("counts") + 1]
        message = "RLE counts must be a string or a list of integers >= 0"
    value = err.get("input")
    shown = repr(value) if len(repr(value)) <= 60 else type(value).__name__
    return SSAError(f"{_where(path, loc)} is {shown}: {message}; {FIX}")


def _check_bbox(bbox: tuple[float, ...], height: int, width: int) -> bool:
    x, y, w, h = bbox
    return x >= 0 and y >= 0 and w >= 0 and h >= 0 and x + w <= width and y + h <= height


@dataclass(frozen=True)
class CheckedDocument:
    """A run's JSON that passed every check: the image's size, its annotations as the file
    holds them (plain dicts, each a valid `Annotation`), its `class_names` (None when absent)."""

    path: Path
    height: int
    width: int
    annotations: list[dict[str, Any]]
    class_names: list[str] | None


def read_document(path: str | Path) -> CheckedDocument:
    """The run's JSON at `path`, every field checked (module docstring), or one SSAError."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SSAError(f"cannot read {path} ({exc}); {FIX}") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SSAError(f"{path} has no 'annotations' list; it is not an `ssa run` output")
    try:
        doc = RunDocument.model_validate(data)
    except ValidationError as exc:
        raise _first_error(path, exc) from None
    if doc.image is not None:
        height, width = doc.image.height, doc.image.width
    elif doc.annotations:
        height, width = doc.annotations[0].segmentation.size
    else:
        raise SSAError(f"{path} has no image size and no masks; {FIX}")
    if height < 1 or width < 1 or height * width > MAX_PIXELS:
        raise SSAError(f"{path}: image size {width}x{height} is not 1..2^32 pixels; {FIX}")
    pixels = height * width
    for i, ann in enumerate(doc.annotations):
        where = f"{path}: annotation {i}"
        rle = ann.segmentation
        if list(rle.size) != [height, width]:
            raise SSAError(
                f"{where} is a {rle.size[1]}x{rle.size[0]} mask but the image is "
                f"{width}x{height}; {FIX}"
            )
        io.check_rle({"size": list(rle.size), "counts": rle.counts}, where, FIX)
        if ann.area is not None and ann.area > pixels:
            raise SSAError(f"{where}: area {ann.area} is over the image's {pixels} pixels; {FIX}")
        if ann.bbox is not None and not _check_bbox(ann.bbox, height, width):
            raise SSAError(
                f"{where}: bbox {list(ann.bbox)} (XYWH) is not inside the {width}x{height} "
                f"image; {FIX}"
            )
    for key, rle in (doc.semantic_mask or {}).items():
        where = f"{path}: semantic_mask class {key!r}"
        if not key.isdigit() or (doc.class_names is not None
                                 and int(key) >= len(doc.class_names)):
            raise SSAError(f"{where} is not a class index of the run; {FIX}")
        if list(rle.size) != [height, width]:
            raise SSAError(f"{where} is {rle.size[1]}x{rle.size[0]}, not {width}x{height}; {FIX}")
        io.check_rle({"size": list(rle.size), "counts": rle.counts}, where, FIX)
    return CheckedDocument(path, int(height), int(width), data["annotations"], doc.class_names)
