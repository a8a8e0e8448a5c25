"""`labels:<folder>`: precomputed label maps from any framework (mmsegmentation, detectron2,
Keras...) as the semantic branch.

Files are matched to images by relative path and stem (`ssa.companions`): image
`city/a_leftImg8bit.png` reads `<folder>/city/a_leftImg8bit.png` (or `.npy`, `.tif`...), else
`<folder>/a_leftImg8bit.<ext>`. Accepted contents:
- a single-channel PNG/TIFF (8 or 16 bit; palette PNGs give their indices): `(H, W)` class ids;
- `.npy`: `(H, W)` integer class ids, or `(C, H, W)` float scores (enables `--vote soft`).
Stored ids are class indices 0..C-1 (anything else = no label) unless a `label_map`
`{stored id: class index}` is given, in which case ids absent from it are "no label".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ssa.companions import find_companion
from ssa.errors import SSAError
from ssa.io import no_label_value

SUFFIXES = (".png", ".npy", ".tif", ".tiff")


class LabelsSegmentor:
    """A folder of precomputed predictions as a `Segmentor` that needs each image's `path`."""

    def __init__(
        self,
        folder: str | Path,
        classes: Sequence[str],
        label_map: Mapping[int, int] | None = None,
    ) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise SSAError(f"segmentor labels:{folder}: no such folder; pass the predictions' folder")
        self.classes = list(classes)
        self.label_map = None if label_map is None else {int(k): int(v) for k, v in label_map.items()}
        self.no_label = no_label_value(len(self.classes))

    def __call__(self, image: np.ndarray, *, path: Path | None = None) -> np.ndarray:
        """image: `HWC uint8 RGB` (for its size); path: the image's relative path.

        Returns `(H, W) int64` class indices (no label = 255, or 65535 beyond 255 classes), or
        `(C, H, W) float32` scores from a `.npy` of scores.
        """
        file = find_companion(self.folder, path, SUFFIXES, "precomputed labels")
        data = _read(file)
        if data.ndim == 3 and file.suffix != ".npy":
            raise SSAError(
                f"{file} is a colour image; save class ids as a single-channel PNG (L, I;16 or P)"
            )
        if data.ndim == 3:
            if not np.issubdtype(data.dtype, np.floating):
                raise SSAError(f"{file}: a 3-D array must hold float (C, H, W) scores")
            if self.label_map is not None:
                raise SSAError(f"{file}: --label-map applies to label ids, not to score arrays")
            return data.astype(np.float32, copy=False)
        if data.ndim != 2 or not np.issubdtype(data.dtype, np.integer):
            raise SSAError(
                f"{file}: expected (H, W) integer class ids or (C, H, W) float scores, got "
                f"{data.dtype} {data.shape}"
            )
        ids = data.astype(np.int64)
        if self.label_map is None:
            valid = (ids >= 0) & (ids < len(self.classes))
            return np.where(valid, ids, self.no_label)
        out = np.full(ids.shape, self.no_label, dtype=np.int64)
        for stored, cls in self.label_map.items():
            out[ids == stored] = cls
        return out


def _read(file: Path) -> np.ndarray:
    if file.suffix == ".npy":
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise SSAError(f"cannot read {file} ({exc}); save it with numpy.save") from None
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            return np.asarray(img)
    except (OSError, UnidentifiedImageError) as exc:
        raise SSAError(f"cannot read {file} ({exc}); pass single-channel label PNGs") from None
