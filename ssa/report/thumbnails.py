"""The report's pictures, made with Pillow: the image at display size, label maps in the class
colours, and overlay thumbnails for the gallery.

Label maps are `(H, W)` integer class indices 0..C-1 with `no_label` (255, or 65535 when
C > 255) for "no class"; they are shrunk with nearest-neighbour sampling (a class is never
blended into another) and saved as palette PNGs when C <= 255 (small and fast to encode), RGB
PNGs otherwise. "No class" is drawn in `NO_CLASS_RGB`.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np

DISPLAY_SIDE = 640  # the longest side of an image page's pictures, in pixels
THUMB_SIDE = 200  # the longest side of a gallery thumbnail
NO_CLASS_RGB = (40, 40, 40)
OVERLAY_ALPHA = 0.5


def fit(height: int, width: int, side: int) -> tuple[int, int]:
    """`(H, W)` scaled so the longest side is at most `side` (never enlarged, at least 1)."""
    scale = min(1.0, side / max(height, width, 1))
    return max(1, round(height * scale)), max(1, round(width * scale))


def colour_table(palette: np.ndarray, no_label: int) -> np.ndarray:
    """`(V, 3) uint8` colour of every label value 0..no_label (classes, then grey for the rest)."""
    table = np.empty((no_label + 1, 3), dtype=np.uint8)
    table[:] = NO_CLASS_RGB
    table[: min(len(palette), no_label)] = palette[:no_label]
    return table


def shrink_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour `(H, W)` -> `size` (`(h, w)`), by index sampling (any integer dtype)."""
    height, width = labels.shape
    h, w = size
    if (h, w) == (height, width):
        return labels
    rows = (np.arange(h) * height // h).astype(np.intp)
    cols = (np.arange(w) * width // w).astype(np.intp)
    return labels[rows[:, None], cols[None, :]]


def labels_png(labels: np.ndarray, table: np.ndarray, no_label: int) -> bytes:
    """A label map (already at display size) as PNG bytes in the class colours."""
    from PIL import Image

    values = np.minimum(labels, no_label)
    if no_label <= 255:
        img = Image.fromarray(values.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: len(table)] = table
        img.putpalette(flat.reshape(-1).tobytes())
    else:
        img = Image.fromarray(table[values.astype(np.int64)])
    buffer = BytesIO()
    img.save(buffer, format="PNG", compress_level=1)  # speed over a few percent of size
    return buffer.getvalue()


def read_display_image(path: Path, side: int = DISPLAY_SIDE) -> np.ndarray | None:
    """An image file as `HWC uint8 RGB` with its longest side at most `side`, EXIF orientation
    applied (as `ssa run` reads images); None when it cannot be read.

    JPEGs are decoded at a reduced scale (`Image.draft`), which is most of the speed on large
    photographs.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.draft("RGB", (side, side))
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((side, side), Image.Resampling.BILINEAR)
            return np.asarray(img)
    except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
        return None


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`HWC uint8` resized to `size` (`(h, w)`), bilinear."""
    from PIL import Image

    if rgb.shape[:2] == size:
        return rgb
    img = Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(img)


def jpeg(rgb: np.ndarray, quality: int = 80) -> bytes:
    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def overlay(rgb: np.ndarray | None, labels: np.ndarray, table: np.ndarray,
            no_label: int) -> np.ndarray:
    """The label map's colours blended over the image (`HWC uint8`, same size as `labels`);
    the colours alone when there is no image. Pixels without a class keep the image."""
    colours = table[np.minimum(labels, no_label).astype(np.int64)]
    if rgb is None:
        return colours
    rgb = resize_rgb(rgb, labels.shape)
    out = rgb.astype(np.float32)
    labelled = labels < no_label
    out[labelled] = (1 - OVERLAY_ALPHA) * out[labelled] + OVERLAY_ALPHA * colours[labelled]
    return out.astype(np.uint8)
