"""A small finished `ssa run` for the export tests, written by the real writer code: SA-1B-style
mask files and precomputed branch labels (`--masks`, `labels:`), so no model runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from ssa.cli.commands import app
from ssa.io import encode_rle

CLASSES = ["sky", "tree", "road", "car", "person"]
THINGS = ["car", "person"]
RELS = [Path("a.png"), Path("sub/b.jpg"), Path("sub/c.png")]

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def blob_masks(rng: np.random.Generator, height: int, width: int, count: int) -> np.ndarray:
    """Rectangles and ellipses of many sizes (SAM-like: large and small, overlapping)."""
    yy, xx = np.mgrid[:height, :width]
    masks = []
    for k in range(count):
        h = int(rng.integers(3, height))
        w = int(rng.integers(3, width))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        if k % 2:
            cy, cx = y0 + h / 2, x0 + w / 2
            m = ((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1
        else:
            m = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
        m[y0, x0] = True
        masks.append(m)
    return np.stack(masks)


def write_masks_json(path: Path, masks: np.ndarray, rng: np.random.Generator) -> None:
    anns = []
    for mask, rle in zip(masks, encode_rle(masks)):
        ys, xs = np.nonzero(mask)
        anns.append({
            "segmentation": rle,
            "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
            "predicted_iou": float(rng.uniform(0.5, 1.0)),
            "point_coords": [[float(xs[0]), float(ys[0])]],
            "stability_score": 0.95,
            "crop_box": [0, 0, mask.shape[1], mask.shape[0]],
        })  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"annotations": anns}))


def make_inputs(tmp_path: Path, seed: int = 3) -> tuple[Path, Path, Path, Path]:
    """Images, SA-1B mask files, branch label PNGs (blocks of classes, an unlabelled corner
    holding one small mask, so that mask gets no class) and a class file."""
    rng = np.random.default_rng(seed)
    data, masks_dir, labels_dir = tmp_path / "images", tmp_path / "masks", tmp_path / "labels"
    for k, rel in enumerate(RELS):
        height, width = 40 + 8 * k, 56
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data / rel, quality=95)
        blocks = rng.integers(0, len(CLASSES), (height // 8 + 1, width // 8 + 1))
        labels = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:height, :width]
        masks = blob_masks(rng, height, width, 9)
        for m in sorted(masks, key=lambda m: -m.sum()):  # most masks vote for their own class
            labels[m] = rng.integers(0, len(CLASSES))
        labels[:6, :6] = 255
        corner = np.zeros((height, width), dtype=bool)
        corner[1:4, 1:4] = True
        write_masks_json(masks_dir / rel.parent / f"{rel.stem}.json",
                         np.concatenate([masks, corner[None]]), rng)
        (labels_dir / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels.astype(np.uint8)).save(labels_dir / rel.parent / f"{rel.stem}.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    return data, masks_dir, labels_dir, classes


def make_run(tmp_path: Path, *extra: str) -> tuple[Path, Path]:
    """`ssa run` over the inputs; returns (data dir, run out dir)."""
    data, masks_dir, labels_dir, classes = make_inputs(tmp_path)
    out = tmp_path / "run"
    result = invoke("run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
                    "--segmentor", f"labels:{labels_dir}", "--classes", classes,
                    "--device", "cpu", *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    return data, out


def things_file(tmp_path: Path) -> Path:
    path = tmp_path / "things.txt"
    path.write_text("\n".join(THINGS) + "\n")
    return path


def run_json(out: Path, rel: Path) -> dict:
    return json.loads((out / rel.parent / f"{rel.stem}_semantic.json").read_text())


def run_label_map(out: Path, rel: Path) -> np.ndarray:
    return np.asarray(Image.open(out / rel.parent / f"{rel.stem}_semantic.png")).astype(np.int64)
