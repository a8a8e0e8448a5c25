"""Benchmark `ssa eval`: N ADE20K-sized synthetic prediction / ground-truth pairs, wall time.

    python scripts/benchmark_eval.py [--num-images 2000] [--width 683 --height 512]
        [--workers 1 2 4] [--branch]

Builds an ADE20K-layout tree in a temporary folder: placeholder images (only listed, never
read), raw annotations (0 = other, 1..150) and `<stem>_semantic.png` predictions. The label maps
are regions with curved boundaries (like real ones, so PNG sizes and decode times are
realistic), and predictions are wrong in regions covering about a third of the area.
`--distinct` pairs are drawn and reused under every name to keep set-up short; every file is
still read and decoded. Then times `ssa.evaluation.evaluate.evaluate` (planning + reading + scoring) per
worker count, on a warm page cache (a first untimed pass reads every file once).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from ssa.evaluation.evaluate import evaluate


def label_map(rng: np.random.Generator, height: int, width: int, num_values: int) -> np.ndarray:
    """Regions of random classes with curved boundaries, `(H, W) uint8` (a smooth warp of a
    coarse grid: compresses and decodes like real annotations, unlike per-pixel noise)."""
    cell = int(rng.integers(24, 64))
    grid = rng.integers(0, num_values, (height // cell + 3, width // cell + 3)).astype(np.uint8)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.random(4) * 6.28
    warp_y = y + 12 * np.sin(x / 37 + phase[0]) + 6 * np.sin((x + y) / 13 + phase[1])
    warp_x = x + 12 * np.sin(y / 29 + phase[2]) + 6 * np.sin((x - y) / 11 + phase[3])
    rows = (warp_y / cell + 1).astype(np.int64).clip(0, grid.shape[0] - 1)
    cols = (warp_x / cell + 1).astype(np.int64).clip(0, grid.shape[1] - 1)
    return grid[rows, cols]


def png_bytes(arr: np.ndarray) -> bytes:
    buf = BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def build(root: Path, num_images: int, height: int, width: int, distinct: int, branch: bool):
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(distinct):
        raw = label_map(rng, height, width, 151)  # 0 = other, 1..150 classes
        truth = np.where(raw == 0, rng.integers(0, 150), raw.astype(np.int64) - 1)
        noise = label_map(rng, height, width, 150)  # the branch: wrong in whole regions
        wrong = label_map(rng, height, width, 3) == 0  # about a third of the area
        pred = np.where(wrong, noise, truth).astype(np.uint8)
        pairs.append((png_bytes(raw), png_bytes(pred), png_bytes(noise) if branch else b""))
    images = root / "images" / "validation"
    annotations = root / "annotations" / "validation"
    preds = root / "preds"
    for folder in (images, annotations, preds):
        folder.mkdir(parents=True)
    for i in range(num_images):
        gt, pred, noise = pairs[i % distinct]
        stem = f"ADE_val_{i:08d}"
        (images / f"{stem}.jpg").write_bytes(b"")
        (annotations / f"{stem}.png").write_bytes(gt)
        (preds / f"{stem}_semantic.png").write_bytes(pred)
        if branch:
            (preds / f"{stem}_branch.png").write_bytes(noise)
    return preds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=683)
    parser.add_argument("--distinct", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--branch", action="store_true", help="also score <stem>_branch.png")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="ssa-bench-eval-") as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        preds = build(root, args.num_images, args.height, args.width, args.distinct, args.branch)
        size = sum(p.stat().st_size for p in preds.glob("*_semantic.png")) / args.num_images / 1024
        print(f"built {args.num_images} pairs of {args.width}x{args.height} in "
              f"{time.perf_counter() - start:.1f} s (prediction PNG {size:.0f} KiB on average)")
        evaluate("ade20k", root, preds)  # warm the page cache
        for workers in args.workers:
            start = time.perf_counter()
            _, counts, report = evaluate("ade20k", root, preds, workers=workers)
            seconds = time.perf_counter() - start
            pixels = counts.voted.mat.sum().item()
            print(f"workers={workers}: {report['num_images']} images in {seconds:.2f} s "
                  f"({report['num_images'] / seconds:.0f} img/s, {pixels / seconds / 1e6:.0f} "
                  f"Mpx/s labelled), mIoU {report['miou']:.2f}")


if __name__ == "__main__":
    main()
