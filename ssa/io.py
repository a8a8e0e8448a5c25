"""Image reading, COCO RLE, and atomic writers for JSON, PNG and overlays.

Every writer writes to a temporary name in the destination folder and renames it into place, so
a file either exists whole or not at all (an image is done exactly when its JSON exists).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import SSAError

TMP_PREFIX = ".ssa-tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as `HWC uint8 RGB`, with its EXIF orientation applied.

    Raises SSAError naming the file when it is missing, empty, truncated or not an image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            rgb = np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise SSAError(f"image {path} does not exist; check the path") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise SSAError(
            f"cannot read image {path} ({type(exc).__name__}: {exc}); replace or remove the file"
        ) from None
    if rgb.ndim != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise SSAError(f"image {path} is empty; replace or remove the file")
    return np.ascontiguousarray(rgb)


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO RLE (`counts` as str) of each mask in an `(N, H, W)` bool array."""
    from pycocotools import mask as mask_utils

    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.asarray(masks, dtype=np.uint8).transpose(1, 2, 0)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """An `(H, W)` bool mask from a COCO RLE dict (`counts` str, bytes or an uncompressed list)."""
    from pycocotools import mask as mask_utils

    rle = dict(rle)
    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(rle.get("counts"), str):
        rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_temp_files(out_dir: str | Path) -> int:
    """Remove the temporary files (`.ssa-tmp-*`) a killed run left under out_dir; return how many.

    Call it before any worker of the new run writes: a running writer's file would go too.
    """
    removed = 0
    for folder, _, files in os.walk(out_dir):
        for name in files:
            if name.startswith(TMP_PREFIX):
                Path(folder, name).unlink(missing_ok=True)
                removed += 1
    return removed


def write_text(path: str | Path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(Path(path), write)


def write_json(path: str | Path, data: Any) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())

    _atomic_write(Path(path), write)


def no_label_value(num_classes: int) -> int:
    """The "no label" value of a label map: 255, or 65535 when class 255 exists (C > 255)."""
    return 255 if num_classes <= 255 else 65535


def write_label_png(path: str | Path, labels: np.ndarray, num_classes: int) -> None:
    """A class-index PNG: uint8 when C <= 255, else uint16; "no label" is `no_label_value(C)`."""
    from PIL import Image

    arr = np.asarray(labels).astype(np.uint8 if num_classes <= 255 else np.uint16)
    _atomic_write(Path(path), lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a class-index PNG as `(H, W) int64`, values as written (see `no_label_value`)."""
    return read_label_map(path).astype(np.int64)


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    label_map: np.ndarray,
    palette: np.ndarray,
    masks: Sequence[np.ndarray] = (),
    names: Sequence[str | None] = (),
    alpha: float = 0.5,
) -> None:
    """A JPEG of the label map blended over the image, masks outlined and named at their centres."""
    from PIL import Image, ImageDraw

    colours = np.zeros((max(256, len(palette)), 3), dtype=np.uint8)
    colours[: len(palette)] = palette
    valid = label_map != 255
    blend = image.astype(np.float32)
    blend[valid] = (1 - alpha) * blend[valid] + alpha * colours[label_map[valid]]
    out = blend.astype(np.uint8)
    for mask in masks:
        edge = mask & ~(
            np.pad(mask, 1)[2:, 1:-1] & np.pad(mask, 1)[:-2, 1:-1]
            & np.pad(mask, 1)[1:-1, 2:] & np.pad(mask, 1)[1:-1, :-2]
        )
        out[edge] = 255
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    for mask, name in zip(masks, names):
        if name is None or not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        draw.text((float(xs.mean()), float(ys.mean())), name, fill=(255, 255, 255), anchor="mm")
    _atomic_write(Path(path), lambda tmp: pil.save(tmp, format="JPEG", quality=90))


def read_label_map(path: str | Path) -> np.ndarray:
    """A single-channel label image (class indices) as stored: `(H, W)` uint8, uint16 or int32.

    Greyscale PNGs go through OpenCV (faster than PIL, and it releases the GIL for the whole
    decode); palette and other PNGs through PIL, which returns palette indices, not colours.
    """
    from io import BytesIO

    from PIL import Image, UnidentifiedImageError

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SSAError(f"cannot read label map {path} ({exc}); check the file") from None
    arr = None
    # PNG colour type 0 (greyscale) is byte 25 of the file, in the IHDR chunk.
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[25] == 0:
        import cv2

        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        try:
            with Image.open(BytesIO(data)) as img:
                arr = np.asarray(img)
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise SSAError(f"cannot read label map {path} ({exc}); replace the file") from None
    if arr.ndim != 2:
        raise SSAError(
            f"label map {path} has shape {arr.shape}, not (H, W); pass single-channel class-index "
            f"PNGs"
        )
    return arr


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    """An `HWC uint8 RGB` array as a PNG, atomically (colour maps, panoptic id PNGs)."""
    from PIL import Image

    arr = np.ascontiguousarray(rgb, dtype=np.uint8)
    _atomic_write(Path(path), lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))
