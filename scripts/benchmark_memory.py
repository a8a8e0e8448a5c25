"""Peak memory of `ssa run` against image size, for hard and soft voting.

    PYTHONPATH=. python scripts/benchmark_memory.py [--mp 1 6 24] [--masks 8] [--work-dir DIR]
    PYTHONPATH=/work/main python scripts/benchmark_memory.py --mp 1 6   # another checkout
    # issue 23: no model at all (`labels:` branch), masks x pixels, every output written
    PYTHONPATH=. python scripts/benchmark_memory.py --branch labels --mp 30 --masks 48 192 \
        --votes hard --save-branch --save-vis

Each (size, policy) runs `python -m ssa run` on one image in a fresh subprocess and reads that
process's peak resident set size from `os.wait4` (the kernel's `ru_maxrss`, the figure
`resource.getrusage` gives), so nothing of an earlier run counts. A 64x48 image gives the
baseline: interpreter, torch, transformers and the models loaded.

No pretrained weights are needed: a tiny random Segformer with 150 classes (ADE20K-sized head,
512x512 training crop) is saved with `save_pretrained` in `--work-dir`; masks come from
SA-1B-style JSON (`--masks`, one or more counts): ellipses at full resolution, so SAM's own
memory is not what is measured. Images are 3:2, smooth random colours, JPEG. `--branch labels`
replaces the Segformer by precomputed branch labels (`labels:`, a class-index PNG per image, 150
classes): no model is loaded, so the figure is ssa's own memory for the image and its masks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

NUM_CLASSES = 150
CROP = 512


def make_segformer(folder: Path) -> Path:
    if (folder / "config.json").exists():
        return folder
    import torch
    from transformers import (
        SegformerConfig,
        SegformerForSemanticSegmentation,
        SegformerImageProcessor,
    )

    torch.manual_seed(0)
    names = [f"class{i}" for i in range(NUM_CLASSES)]
    config = SegformerConfig(
        num_labels=NUM_CLASSES, id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}, hidden_sizes=[8, 16, 24, 32],
        depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=32,
    )  # fmt: skip
    SegformerForSemanticSegmentation(config).eval().save_pretrained(folder)
    SegformerImageProcessor(size={"height": CROP, "width": CROP}).save_pretrained(folder)
    return folder


def make_case(root: Path, width: int, height: int, num_masks: int, seed: int = 0) -> Path:
    """`root/images/img.jpg` and `root/masks/img.json` (ellipses); returns root."""
    from PIL import Image

    from ssa import io

    images, masks = root / "images", root / "masks"
    if (masks / "img.json").exists():
        return root
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8))
    small.resize((width, height), Image.BILINEAR).save(images / "img.jpg", quality=90)
    annotations = []
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    for _ in range(num_masks):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.05, 0.4) * width, rng.uniform(0.05, 0.4) * height
        mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
        rle = io.encode_rle(mask[None])[0]
        annotations.append({"segmentation": rle, "area": int(mask.sum())})
        del mask
    (masks / "img.json").write_text(json.dumps({"annotations": annotations}))
    return root


def make_labels(case: Path, width: int, height: int, seed: int = 1) -> tuple[Path, Path]:
    """`case/labels/img.png` (blocks of the 150 classes) and `case/classes.txt`."""
    from PIL import Image

    labels, classes = case / "labels", case / "classes.txt"
    if not (labels / "img.png").exists():
        labels.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        blocks = rng.integers(0, NUM_CLASSES, (24, 36)).astype(np.uint8)
        Image.fromarray(blocks).resize((width, height), Image.NEAREST).save(labels / "img.png")
        classes.write_text("".join(f"class{i}\n" for i in range(NUM_CLASSES)))
    return labels, classes


def measure(case: Path, segmentor: list[str], vote: str, out: Path, extra: list[str]) -> dict:
    """Run `ssa run` once in a fresh process; its peak RSS (MiB), wall time and exit code."""
    command = [
        sys.executable, "-m", "ssa", "run", "--dataset", "folder",
        "--data-dir", str(case / "images"), "--out-dir", str(out), "--masks", str(case / "masks"),
        *segmentor, "--vote", vote, "--device", "cpu", "--overwrite", *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    # Not the repository's folder: `python -m` puts the working directory first on sys.path,
    # which would shadow the ssa of PYTHONPATH.
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=case)
    output = proc.stdout.read().decode(errors="replace")  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    failed = (out / "failures.jsonl").exists()
    return {
        "peak_rss_mib": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "seconds": round(seconds, 1),
        "exit": os.waitstatus_to_exitcode(status),
        "failed": failed,
        "tail": output.strip().splitlines()[-1:] if output.strip() else [],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mp", type=float, nargs="+", default=[1, 6, 24])
    parser.add_argument("--votes", nargs="+", default=["hard", "soft"])
    parser.add_argument("--masks", type=int, nargs="+", default=[8])
    parser.add_argument("--branch", choices=["segformer", "labels"], default="segformer")
    parser.add_argument("--save-branch", action="store_true")
    parser.add_argument("--save-vis", action="store_true")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/ssa_benchmark_memory"))
    args = parser.parse_args()
    import ssa

    if os.environ.get("PYTHONPATH"):  # children run elsewhere: make it absolute
        os.environ["PYTHONPATH"] = os.pathsep.join(
            str(Path(p).resolve()) for p in os.environ["PYTHONPATH"].split(os.pathsep)
        )
    work = args.work_dir
    extra = [flag for flag, on in (("--save-branch", args.save_branch),
                                   ("--save-vis", args.save_vis)) if on]
    segformer = make_segformer(work / "segformer150") if args.branch == "segformer" else None
    print(f"ssa from {Path(ssa.__file__).parent}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; branch {args.branch}, "
          f"{NUM_CLASSES} classes, crop {CROP}; {' '.join(extra) or 'no extra outputs'}")
    sizes = [(64, 48)] + [
        (round(math.sqrt(mp * 1e6 * 1.5)), round(math.sqrt(mp * 1e6 / 1.5))) for mp in args.mp
    ]
    print("| image | MP | masks | vote | peak RSS (MiB) | s | exit |")
    print("|---|---|---|---|---|---|---|")
    for width, height in sizes:
        for num_masks in args.masks:
            case = make_case(work / f"case_{width}x{height}_{num_masks}", width, height,
                             num_masks)
            if segformer is not None:
                segmentor = ["--segmentor", f"hf:{segformer}"]
            else:
                labels, classes = make_labels(case, width, height)
                segmentor = ["--segmentor", f"labels:{labels}", "--classes", str(classes)]
            for vote in args.votes:
                out = work / f"out_{width}x{height}_{num_masks}_{vote}"
                row = measure(case, segmentor, vote, out, extra)
                status = "failed: " + " ".join(row["tail"]) if row["failed"] else row["exit"]
                print(f"| {width}x{height} | {width * height / 1e6:.2f} | {num_masks} | {vote} | "
                      f"{row['peak_rss_mib']:.0f} | {row['seconds']} | {status} |", flush=True)


if __name__ == "__main__":
    main()
