"""Benchmark `ssa report`: seconds per image, the size of what index.html and the first gallery
page load, and peak memory (RSS) from a small to a large run.

A synthetic finished `ssa run` in the ADE20K layout (683x512 JPEG images, raw 0..150
annotations, `<stem>_semantic.json` with 60 masks as COCO RLE, `_semantic.png` and
`_branch.png`): `--distinct` different images, hard-linked under as many names as the largest
`--images` (every file is still read and decoded). Each size is built in a fresh process
(scores against the ground truth included), so its peak RSS is its own.

    PYTHONPATH=. python scripts/benchmark_report.py --images 100 2000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 512, 683
MASKS = 60


def _regions(rng: np.random.Generator, seeds: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """`(H, W)` class of the nearest seed (a Voronoi map: ADE-like regions with long borders)."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    best = np.full((HEIGHT, WIDTH), np.inf)
    out = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for (y, x), c in zip(seeds, classes):
        d = (yy - y) ** 2 + (xx - x) ** 2
        closer = d < best
        best[closer] = d[closer]
        out[closer] = c
    return out


def _masks(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    out = []
    for k in range(MASKS):
        h, w = int(rng.integers(8, HEIGHT // 2)), int(rng.integers(8, WIDTH // 2))
        y0, x0 = int(rng.integers(0, HEIGHT - h)), int(rng.integers(0, WIDTH - w))
        cy, cx = y0 + h / 2, x0 + w / 2
        out.append(((yy - cy) / (h / 2)) ** 2 + ((xx - cx) / (w / 2)) ** 2 <= 1)
    return np.stack(out)


def make_template(rng: np.random.Generator, folder: Path, stem: str) -> dict[str, Path]:
    """One image's files: image, raw annotation, the run's JSON and PNGs."""
    from PIL import Image

    from ssa import io
    from ssa.datasets import ADE20K_CLASSES
    from ssa.run.outputs import semantic_document

    names = list(ADE20K_CLASSES)
    seeds = rng.uniform(0, 1, (24, 2)) * [HEIGHT, WIDTH]
    classes = rng.choice(150, 24)
    branch = _regions(rng, seeds, classes)
    gt = _regions(rng, seeds + rng.normal(0, 12, seeds.shape), classes)
    masks = _masks(rng)
    voted = branch.copy()
    anns = []
    for mask, rle in zip(sorted(masks, key=lambda m: -m.sum()), io.encode_rle(masks)):
        cls = int(np.bincount(branch[mask], minlength=150).argmax())
        voted[mask] = cls
        ys, xs = np.nonzero(mask)
        anns.append({"segmentation": rle, "area": int(mask.sum()),
                     "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1,
                              int(np.ptp(ys)) + 1],
                     "predicted_iou": float(rng.uniform(0.6, 1.0)),
                     "point_coords": [[float(xs[0]), float(ys[0])]], "stability_score": 0.95,
                     "crop_box": [0, 0, WIDTH, HEIGHT], "class_name": names[cls],
                     "class_proposals": [names[cls]]})
    paths = {"image": folder / f"{stem}.jpg", "gt": folder / f"{stem}_gt.png",
             "json": folder / f"{stem}_semantic.json", "label": folder / f"{stem}_semantic.png",
             "branch": folder / f"{stem}_branch.png"}
    smooth = rng.integers(0, 255, (HEIGHT // 16, WIDTH // 16, 3), dtype=np.uint8)
    Image.fromarray(smooth).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC).save(
        paths["image"], quality=90)
    Image.fromarray((gt + 1).astype(np.uint8)).save(paths["gt"])  # raw ADE ids 1..150
    io.write_json(paths["json"], semantic_document((HEIGHT, WIDTH), anns, voted, names))
    io.write_label_png(paths["label"], voted, 150)
    io.write_label_png(paths["branch"], branch, 150)
    return paths


def make_run(root: Path, count: int, distinct: int) -> tuple[Path, Path]:
    """(data dir, out dir) of a finished run of `count` images in the ADE20K layout."""
    rng = np.random.default_rng(0)
    templates = root / "templates"
    templates.mkdir(parents=True)
    made = [make_template(rng, templates, f"t{k}") for k in range(distinct)]
    data, out = root / "ade", root / "run"
    images, annotations = data / "images" / "validation", data / "annotations" / "validation"
    for folder in (images, annotations, out):
        folder.mkdir(parents=True)
    for n in range(count):
        src = made[n % distinct]
        stem = f"ADE_val_{n:08d}"
        os.link(src["image"], images / f"{stem}.jpg")
        os.link(src["gt"], annotations / f"{stem}.png")
        for kind, suffix in (("json", "_semantic.json"), ("label", "_semantic.png"),
                             ("branch", "_branch.png")):
            os.link(src[kind], out / f"{stem}{suffix}")
    (out / "ssa_run.json").write_text(json.dumps({"ssa_version": "bench", "settings": {
        "masks": "sam:vit_h", "segmentor": "hf:nvidia/segformer-b5-finetuned-ade-640-640",
        "vote": "hard", "top_k": 3}}))
    return data, out


def build_once(data: Path, out: Path, count: int, report: Path) -> None:
    """One report of the first `count` images (in this process); prints one JSON line."""
    from ssa.report import ReportOptions, build_report

    start = time.perf_counter()
    result = build_report(ReportOptions(pred_dir=out, out=report, dataset="ade20k",
                                        data_dir=data, limit=count))
    seconds = time.perf_counter() - start
    first = ["index.html", "gallery-1.html", "assets/report.css", "assets/report.js"]
    html = sum((report / p).stat().st_size for p in first[:2])
    loaded = sum((report / p).stat().st_size for p in first)
    loaded += sum(p.stat().st_size for p in (report / "charts").iterdir())
    gallery = (report / "gallery-1.html").read_text()
    loaded += sum((report / "thumbs" / f"{i:06d}.jpg").stat().st_size
                  for i in range(result.num_images) if f"thumbs/{i:06d}.jpg" in gallery)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images": result.num_images, "seconds": seconds,
                      "per_image": seconds / result.num_images, "html_bytes": html,
                      "first_view_bytes": loaded, "report_bytes": result.bytes_written,
                      "peak_rss_mib": rss_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--distinct", type=int, default=16)
    parser.add_argument("--keep", type=Path, help="build here and keep it (default: a temp dir)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        data, out, count, report = args.child
        build_once(Path(data), Path(out), int(count), Path(report))
        return
    root = args.keep or Path(tempfile.mkdtemp(prefix="ssa-bench-report-"))
    try:
        start = time.perf_counter()
        data, out = make_run(root, max(args.images), args.distinct)
        print(f"synthetic run of {max(args.images)} images: {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
        for count in args.images:
            report = root / f"report-{count}"
            line = subprocess.run(
                [sys.executable, __file__, "--child", str(data), str(out), str(count),
                 str(report)], check=True, capture_output=True, text=True).stdout
            r = json.loads(line.strip().splitlines()[-1])
            print(f"{r['images']:>6} images: {r['seconds']:7.1f} s, {r['per_image']:.3f} s/image, "
                  f"index+gallery-1 HTML {r['html_bytes'] / 1e6:.2f} MB, with what they load "
                  f"{r['first_view_bytes'] / 1e6:.2f} MB, report {r['report_bytes'] / 1e6:.1f} "
                  f"MB, peak RSS {r['peak_rss_mib']:.0f} MiB")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
