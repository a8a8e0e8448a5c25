"""Batched against one-mask-at-a-time naming in the open-vocabulary engine, same models.

Builds small random BLIP, CLIP, CLIPSeg and OneFormer models (the test suite's builder, sized up
with --width/--layers/--image), takes a real ADE20K fixture image (downscaled to --side pixels
on its long side) and its ground-truth object instances as masks, computes the close-set
candidates once, then times stages 2-4 (captions, CLIP ranking, CLIPSeg) two ways:

- batched: `EngineLabeller.name_masks` on all masks at once (what `ssa engine` does);
- one at a time: the same call once per mask (what the original engine did, 33 s per image on an
  A6000 with the large models).

Both ways give the same names (checked here). Run from the repository root:

    python scripts/benchmark_engine.py [--masks 48] [--side 640] [--batch-size 16] [--repeat 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssa.engine.labeller import EngineLabeller
from tests.conftest import ADE20K_FULL
from tests.test_engine import save_tiny_models


def ade_instances(stem: str, side: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The image downscaled to `side` on its long side, and its `count` largest object instances
    (distinct RGB triplets of the full-ontology `_seg.png`) as `(N, H, W) bool` masks."""
    from PIL import Image

    with Image.open(ADE20K_FULL / f"{stem}.jpg") as img:
        scale = side / max(img.size)
        size = (round(img.width * scale), round(img.height * scale))
        image = np.array(img.convert("RGB").resize(size, Image.BILINEAR))
    with Image.open(ADE20K_FULL / f"{stem}_seg.png") as seg:
        seg = np.asarray(seg.convert("RGB").resize(size, Image.NEAREST)).astype(np.int64)
    ids = (seg[..., 0] << 16) | (seg[..., 1] << 8) | seg[..., 2]
    values, counts = np.unique(ids, return_counts=True)
    keep = values[np.argsort(-counts, kind="stable")][:count]
    return image, np.stack([ids == v for v in keep])


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stem", default="ADE_train_00016869")
    parser.add_argument("--side", type=int, default=640)
    parser.add_argument("--masks", type=int, default=48)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=128, help="hidden size of the towers")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--image", type=int, default=96, help="model input side")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    image, masks = ade_instances(args.stem, args.side, args.masks)
    with tempfile.TemporaryDirectory() as tmp:
        models = save_tiny_models(Path(tmp), args.width, args.layers, args.image)
        labeller = EngineLabeller(models, "cpu", args.batch_size, args.top_k)
    stack = torch.from_numpy(masks)
    close_s, close = timed(lambda: labeller.close_set(image, stack), 1)
    labeller.name_masks(image, stack[:2], close[:2])  # warm-up

    def one_at_a_time():
        return [labeller.name_masks(image, stack[i : i + 1], close[i : i + 1])
                for i in range(len(stack))]

    batched_s, batched = timed(lambda: labeller.name_masks(image, stack, close), args.repeat)
    single_s, singles = timed(one_at_a_time, args.repeat)
    same = all(s.names[0] == batched.names[i] for i, s in enumerate(singles))
    n = len(stack)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads, torch {torch.__version__}")
    print(f"image {args.stem} at {image.shape[1]}x{image.shape[0]}, {n} masks, top-k "
          f"{args.top_k}, towers width {args.width} x {args.layers} layers at {args.image} px, "
          f"batch size {args.batch_size}, median of {args.repeat}")
    print(f"close-set (2 OneFormer, once per image): {close_s:.2f} s")
    print("| mode | seconds per image (stages 2-4) | masks/s |")
    print("|---|---|---|")
    print(f"| one mask at a time | {single_s:.2f} | {n / single_s:.1f} |")
    print(f"| batched ({args.batch_size}) | {batched_s:.2f} | {n / batched_s:.1f} |")
    print(f"speed-up {single_s / batched_s:.1f}x; same names both ways: {same}")


if __name__ == "__main__":

    main()
