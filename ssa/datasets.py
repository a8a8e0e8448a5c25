"""Dataset specs: image discovery, ground-truth pairing, label conversion, class names, palettes.

Every dataset-specific fact lives here, so the rest of the package sees a `DatasetSpec` only.
Images are listed sorted by their path relative to the dataset's image folder; outputs and
predictions mirror that relative path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ssa.errors import SSAError
from ssa.words import did_you_mean

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
)  # fmt: skip

# The official Cityscapes labelId -> trainId table (cityscapesScripts `labels.py`, checked against
# it by test_datasets_config); ids not
# listed (0-6, parking, rail track, guard rail, bridge, tunnel, polegroup, caravan, trailer,
# license plate) are ignored.
CITYSCAPES_ID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def default_palette(num_classes: int) -> np.ndarray:
    """A distinct colour per class (the PASCAL VOC bit-interleaving colour map), `(C, 3) uint8`."""
    palette = np.zeros((num_classes, 3), dtype=np.uint8)
    for index in range(num_classes):
        value, r, g, b = index + 1, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def cityscapes_labelids_to_trainids(label_ids: np.ndarray) -> np.ndarray:
    """Convert a Cityscapes `_gtFine_labelIds` map (HW, any int) to trainIds (HW uint8, 255 = ignore)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
        lut[label_id] = train_id
    ids = np.asarray(label_ids)
    # labelId -1 (license plate) and anything outside 0..255 is ignored.
    out = np.full(ids.shape, IGNORE_INDEX, dtype=np.uint8)
    valid = (ids >= 0) & (ids < 256)
    out[valid] = lut[ids[valid].astype(np.int64)]
    return out


def _read_png(path: Path) -> np.ndarray:
    from ssa.io import read_label_map

    return read_label_map(path)


def read_ade20k_gt(path: Path) -> np.ndarray:
    """ADE20K SceneParsing annotation: 0 = other (ignored), 1..150 -> 0..149 (`reduce_zero_label`)."""
    raw = _read_png(path)
    if raw.dtype == np.uint8:  # a lookup table: faster than int64 arithmetic (BENCHMARKS.md)
        return _ADE20K_LUT[raw]
    out = raw.astype(np.int64) - 1
    out[(raw == 0) | (raw > 150)] = IGNORE_INDEX
    return out.astype(np.uint8)


_ADE20K_LUT = np.full(256, IGNORE_INDEX, dtype=np.uint8)
_ADE20K_LUT[1:151] = np.arange(150)


def read_cityscapes_gt(path: Path) -> np.ndarray:
    """A `_labelTrainIds.png` as it is, or a `_labelIds.png` converted to trainIds."""
    raw = _read_png(path)
    if path.name.endswith("_labelIds.png"):
        return cityscapes_labelids_to_trainids(raw)
    return raw.astype(np.uint8)


def read_index_gt(path: Path) -> np.ndarray:
    """A PNG of class indices 0..C-1 with 255 = ignore, as `ssa run` writes them."""
    return _read_png(path).astype(np.int64)


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's images and labels are, and what its classes are.

    `classes` is None for `folder`, whose class names come from the segmentor.
    """

    name: str
    classes: tuple[str, ...] | None
    image_dir: Callable[[Path, str], Path]
    default_split: str
    gt_candidates: Callable[[Path, str, Path], list[Path]] = field(default=lambda r, s, p: [])
    read_gt: Callable[[Path], np.ndarray] = read_index_gt
    palette: tuple[tuple[int, int, int], ...] | None = None
    default_segmentor: str | None = None
    default_amg_preset: str = "ssa"

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def palette_array(self, num_classes: int) -> np.ndarray:
        if self.palette is not None and len(self.palette) >= num_classes:
            return np.asarray(self.palette[:num_classes], dtype=np.uint8)
        return default_palette(num_classes)

    def list_images(
        self, data_dir: Path, split: str | None = None, out_dir: Path | None = None
    ) -> tuple[Path, list[Path]]:
        """Return the image folder and the sorted relative paths of every image under it.

        Only ssa's own outputs are left out, found by `out_dir` (the run's `--out-dir`, or the
        `--pred-dir` scored): everything under it when it is a folder inside the image folder;
        when it is the image folder itself, the outputs (`<stem>_semantic.png`, `_branch.png`,
        `_vis.jpg`) of images listed beside them. Any other name is an image, `_semantic` and
        all. Temporary files of a killed run (`.ssa-tmp-*`) are never listed.
        """
        from ssa.io import TMP_PREFIX

        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise SSAError(f"--data-dir {data_dir} is not a folder; pass the dataset's root folder")
        root = self.image_dir(data_dir, split or self.default_split)
        if not root.is_dir():
            raise SSAError(
                f"no image folder {root} for --dataset {self.name}; check --data-dir "
                f"(see README 'Folder layouts') or use --dataset folder"
            )
        inside = _relative_inside(Path(out_dir), root) if out_dir is not None else None
        rels = sorted(
            p.relative_to(root)
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
            and not p.name.startswith(TMP_PREFIX)
        )
        if inside is not None and inside != Path("."):
            rels = [r for r in rels if not r.is_relative_to(inside)]
        elif inside == Path("."):
            rels = _without_own_outputs(rels)
        return root, rels

    def gt_path(self, data_dir: Path, split: str | None, rel: Path) -> Path | None:
        """The ground-truth file paired with image `rel`, or None when none exists."""
        for candidate in self.gt_candidates(Path(data_dir), split or self.default_split, rel):
            if candidate.is_file():
                return candidate
        return None


def _relative_inside(folder: Path, root: Path) -> Path | None:
    """`folder` relative to `root` when it is root or lies under it (symlinks resolved)."""
    try:
        return folder.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return None


OUTPUT_SUFFIXES = ("_semantic.png", "_branch.png", "_vis.jpg")  # see ssa.pipeline.output_paths


def _without_own_outputs(rels: list[Path]) -> list[Path]:
    """Images and outputs in one folder (out-dir = image folder): drop the files that are the
    outputs of another image kept, shortest stems first (an output's stem is longer than its
    image's), so `a_semantic.png` goes when `a.jpg` is there and stays when it is alone."""
    kept: list[Path] = []
    outputs: set[Path] = set()
    for rel in sorted(rels, key=lambda r: (len(r.stem), r.as_posix())):
        if rel in outputs:
            continue
        kept.append(rel)
        outputs.update(rel.parent / f"{rel.stem}{suffix}" for suffix in OUTPUT_SUFFIXES)
    return sorted(kept)


def _ade20k_gt(root: Path, split: str, rel: Path) -> list[Path]:
    return [root / "annotations" / split / rel.with_suffix(".png")]


def _cityscapes_gt(root: Path, split: str, rel: Path) -> list[Path]:
    stem = rel.stem.removesuffix("_leftImg8bit")
    out = []
    for kind in ("gtFine", "gtCoarse"):
        folder = root / kind / split / rel.parent
        out += [folder / f"{stem}_{kind}_labelTrainIds.png", folder / f"{stem}_{kind}_labelIds.png"]
    return out


DATASETS: dict[str, DatasetSpec] = {
    "ade20k": DatasetSpec(
        name="ade20k",
        classes=ADE20K_CLASSES,
        image_dir=lambda root, split: root / "images" / split,
        default_split="validation",
        gt_candidates=_ade20k_gt,
        read_gt=read_ade20k_gt,
        default_segmentor="hf:nvidia/segformer-b5-finetuned-ade-640-640",
    ),
    "cityscapes": DatasetSpec(
        name="cityscapes",
        classes=CITYSCAPES_CLASSES,
        image_dir=lambda root, split: root / "leftImg8bit" / split,
        default_split="val",
        gt_candidates=_cityscapes_gt,
        read_gt=read_cityscapes_gt,
        palette=CITYSCAPES_PALETTE,
        default_segmentor="hf:nvidia/segformer-b5-finetuned-cityscapes-1024-1024",
    ),
    "folder": DatasetSpec(
        name="folder",
        classes=None,
        image_dir=lambda root, split: root,
        default_split="",
        default_amg_preset="default",
    ),
}

# Foggy Driving: Cityscapes' classes and layout, test split (public + pedestrian).
DATASETS["foggy_driving"] = replace(DATASETS["cityscapes"], name="foggy_driving", default_split="test")


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise SSAError(
            f"unknown --dataset {name!r}{did_you_mean(name, DATASETS)}; choose one of: "
            f"{', '.join(DATASETS)}"
        ) from None


def select_images(
    dataset: str, data_dir: Path | None, split: str | None, limit: int | None,
    out_dir: Path | None = None,
) -> tuple[Path, list[Path]]:
    """The image folder and the sorted relative paths of its images (outputs under `out_dir`
    left out, see `DatasetSpec.list_images`), the first `limit` only."""
    if data_dir is None:
        raise SSAError("--data-dir is required; pass the dataset's root folder")
    root, rels = get_dataset(dataset).list_images(Path(data_dir), split, out_dir)
    if limit is not None:
        if limit < 1:
            raise SSAError(f"--limit {limit} must be at least 1")
        rels = rels[:limit]
    if not rels:
        raise SSAError(f"no images under {root}; check --data-dir and --dataset")
    return root, rels
