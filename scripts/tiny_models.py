"""Tiny random models in the real formats, and a few drawn sample images, for a first run offline.

    python scripts/tiny_models.py ckp/tiny                  # models in ckp/tiny, images in data/sample
    ssa run --dataset folder --data-dir data/sample --out-dir outputs/quickstart \
        --masks sam:vit_b:ckp/tiny/sam_vit_b_tiny.pth --segmentor hf:ckp/tiny/segformer \
        --amg-preset keep-all --device cpu

Writes, with no network:
- `<out>/sam_vit_b_tiny.pth`: a SAM `state_dict` (what `torch.save(sam.state_dict())` writes, as the
  official checkpoints are; about 2 MB) of an untrained SAM with segment-anything's modules at a
  small size: a 2-block, 32-wide image encoder on a 256 px input (window 8) and 32 channels
  through the prompt encoder and mask decoder. `--masks sam:vit_b:<file>` loads it through the
  same code as a real checkpoint: `ssa.masks.sam.load_sam` reads every size off the file
  (`infer_encoder_config`), as it does for checkpoints trained at another input size. At the
  official geometry (1024 px, 256 channels) the mask decoder alone took about 10 s an image on
  a loaded 2-core CPU; at this size a whole image takes about 2 s;
- `<out>/segformer/`: a `save_pretrained` Segformer folder (config, safetensors weights, image
  processor at 128 px) with a handful of ADE20K class names, for `--segmentor hf:<folder>`;
- `<images>/*.png`: three small street-like scenes (sky, buildings, road, a car, a tree) drawn
  here, since the repository ships no images.

Random weights give random classes and masks of low predicted IoU and stability, which SAM's
default filters remove: `--amg-preset keep-all` keeps every candidate. The script uses ssa's own
SAM builder (`ssa.masks.build_sam_from_config`, the one the loader uses for such a file), so
the file fits the loader by construction. It rewrites only the files named above;
the same seed gives the same files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SAM_FILE = "sam_vit_b_tiny.pth"
SEGFORMER_DIR = "segformer"
# A few ADE20K classes (its names and order of first appearance), so labels read as a scene.
CLASS_NAMES = ("wall", "building", "sky", "floor", "tree", "road", "grass", "car", "person")
IMAGE_SIZE = (320, 240)  # width, height of each drawn image


def save_tiny_sam(path: Path, seed: int = 0) -> Path:
    """An untrained SAM (encoder: embed 32, depth 2, 2 heads, block 1 global, window 8, 256 px
    input; 32 channels in the prompt encoder and mask decoder) saved as a `state_dict` at
    `path`."""
    import torch

    from ssa.masks import EncoderConfig, build_sam_from_config

    torch.manual_seed(seed)
    model = build_sam_from_config(
        EncoderConfig(32, 2, 2, (1,), window_size=8, image_size=256, out_chans=32)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def save_tiny_segformer(folder: Path, class_names: tuple[str, ...] = CLASS_NAMES,
                        seed: int = 0, size: int = 128) -> Path:
    """An untrained Segformer (4 stages of 1 block, widths 8..32) with `class_names`, and its
    image processor (`size` x `size` input), saved with `save_pretrained` in `folder`."""
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for a 250 kB file is noise
    torch.manual_seed(seed)
    config = SegformerConfig(
        num_labels=len(class_names),
        id2label=dict(enumerate(class_names)),
        label2id={n: i for i, n in enumerate(class_names)},
        hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1],
        num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=32,
    )
    model = SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():  # sharper random logits spread the labels over several classes
        model.decode_head.classifier.weight.mul_(100.0)
    model.save_pretrained(folder)  # safetensors weights and config.json
    SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def draw_scene(seed: int, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """A street-like scene (`HWC uint8 RGB`, `size` = width, height): sky, a row of buildings
    with windows, a road, grass, a tree and a car, placed by `seed`, with mild noise."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    width, height = size
    horizon = int(height * rng.uniform(0.45, 0.6))
    image = Image.new("RGB", size, (110, 160, 220))
    draw = ImageDraw.Draw(image)
    x = 0
    while x < width:  # buildings along the horizon
        w = int(rng.integers(width // 8, width // 4))
        top = int(rng.integers(height // 8, horizon - 10))
        colour = tuple(int(c) for c in rng.integers(90, 200, 3))
        draw.rectangle([x, top, x + w, horizon], fill=colour)
        for wy in range(top + 6, horizon - 8, 14):
            for wx in range(x + 5, x + w - 8, 12):
                draw.rectangle([wx, wy, wx + 5, wy + 7], fill=(40, 50, 70))
        x += w + int(rng.integers(0, 6))
    draw.rectangle([0, horizon, width, height], fill=(90, 150, 70))  # grass
    draw.polygon([(width * 0.35, horizon), (width * 0.65, horizon), (width, height),
                  (0, height)], fill=(100, 100, 105))  # road
    cx = int(rng.integers(width // 4, 3 * width // 4))  # a car on the road
    cy = int(horizon + (height - horizon) * 0.6)
    draw.rounded_rectangle([cx - 30, cy - 14, cx + 30, cy + 8], radius=6, fill=(200, 30, 40))
    for wheel in (cx - 18, cx + 18):
        draw.ellipse([wheel - 7, cy + 2, wheel + 7, cy + 16], fill=(20, 20, 20))
    tx = int(rng.choice([rng.integers(10, width // 4), rng.integers(3 * width // 4, width - 10)]))
    draw.rectangle([tx - 3, horizon - 30, tx + 3, horizon + 5], fill=(90, 60, 30))  # a tree
    draw.ellipse([tx - 20, horizon - 65, tx + 20, horizon - 25], fill=(40, 110, 40))
    arr = np.asarray(image).astype(np.int16) + rng.integers(-6, 7, (height, width, 3))
    return np.clip(arr, 0, 255).astype(np.uint8)


def save_samples(folder: Path, count: int = 3) -> list[Path]:
    """`count` drawn scenes as `folder/scene_<i>.png`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"scene_{i}.png"
        Image.fromarray(draw_scene(seed=i)).save(path)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the models (e.g. ckp/tiny)")
    parser.add_argument("--images", type=Path, default=Path("data/sample"),
                        help="folder for the drawn sample images (default: data/sample)")
    parser.add_argument("--num-images", type=int, default=3, help="images to draw (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f"--num-images {args.num_images}: pass at least 1")
    sam = save_tiny_sam(args.out / SAM_FILE, args.seed)
    segformer = save_tiny_segformer(args.out / SEGFORMER_DIR, seed=args.seed)
    images = save_samples(args.images, args.num_images)
    print(f"SAM state_dict:   {sam}  (--masks sam:vit_b:{sam})")
    print(f"Segformer folder: {segformer}  (--segmentor hf:{segformer})")
    print(f"sample images:    {len(images)} in {args.images}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
