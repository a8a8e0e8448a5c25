"""The benchmark half of the device check (`scripts/gpu_check.sh` runs the tests first).

On one CUDA GPU, vit_h with random weights (no pretrained weights are needed), in this order
so that the goals are measured first and the rest runs while the time budget lasts:

1. the 2048x1024 frame at the SSA preset (64 points per side, one crop layer): stock vs ssa
   fp32 vs ssa bf16 vs ssa bf16 + compile;
2. the 2200x1467 ADE20K fixture at 32 points per side: stock vs ssa fp32 vs bf16;
3. the 2200x1467 fixture at the SSA preset and the frame at 32 points per side (fp32, bf16);
4. throughput: 16 frames of 2048x1024 in one run of `ssa run`'s pipeline (`ssa.run.runner.run`:
   prefetch and the background writer), ssa fp32 at the SSA preset, in images/s;
5. (run second, after step 1) `hf:` mask models: transformers' `pipeline("mask-generation")`
   + vote against ssa's `hf:` source + vote (`benchmark.py --mask-source`), a random SAM 2
   (reduced Hiera, full-size decoder, 1024 input) on the frame's centre square, 16 points per
   side, filters off: ssa fp32, bf16 and bf16 + compile beside the one pipeline run; then the
   same with a random full-size EdgeTAM (fp32, bf16) where timm is installed.

Random weights give no stable masks: every comparison sets stability 0, box and crop NMS 1.0
and a predicted-IoU threshold chosen on the image (`benchmark.py --target-masks`) so that
about `--target-masks` (default 300) masks survive per image, as real SAM weights give.

Goals reported (benchmarks, not timed tests): ssa fp32 >= 10x stock at the SSA preset, voting
<= 2% of the image's time, peak GPU memory <= 8 GB at 2048x1024 (`torch.cuda.max_memory_allocated`).

`--cpu-smoke` runs step 1 (without the crop layer and compile), step 4 (2 frames) and step 5
(SAM 2 only, 2 points per side, fp32 and bf16) on the CPU with vit_b, 256x128 images, 4 points
per side and 20 masks, to check the script itself where no GPU is at hand.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / ".." / "shared" / "fixtures"
ADE = FIXTURES / "ade20k_full_samples" / "ADE_train_00016964.jpg"
FRAME = FIXTURES / "cityscapes_sample" / "mmseg_demo.png"
GOAL_SPEEDUP, GOAL_VOTING, GOAL_PEAK_GIB = 10.0, 0.02, 8.0


def bench(args: argparse.Namespace, tag: str, extra: list[str], deadline: float) -> dict | None:
    """One `scripts/benchmark.py` run (its JSON report), or None when the budget is spent or
    it failed (said on stderr)."""
    left = deadline - time.monotonic()
    if left < 30:
        print(f"[{tag}] skipped: {left:.0f} s of the budget left", file=sys.stderr, flush=True)
        return None
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--work-dir",
           str(args.work_dir / tag), "--checkpoint-dir", str(args.work_dir), "--sam-model",
           args.sam_model, "--device", args.device, "--target-masks", str(args.target_masks),
           *extra]
    print(f"[{tag}] {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left, check=False)
    except subprocess.TimeoutExpired:
        print(f"[{tag}] stopped at the budget", file=sys.stderr, flush=True)
        return None
    (args.out / f"{tag}.log").write_text(proc.stderr)
    if proc.returncode:
        print(f"[{tag}] failed:\n{proc.stderr[-2000:]}", file=sys.stderr, flush=True)
        return None
    report = json.loads(proc.stdout[proc.stdout.index("{"):])
    report["wall_s"] = time.monotonic() - start
    (args.out / f"{tag}.json").write_text(json.dumps(report, indent=2))
    print(f"[{tag}] done in {report['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return report


def frames(src: Path, size: str, folder: Path, count: int) -> list[Path]:
    """`count` distinct frames of `size` (`WxH`) from `src`: shifted by a few pixels each."""
    import numpy as np
    from PIL import Image

    width, height = (int(v) for v in size.split("x"))
    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as img:
        base = np.asarray(img.convert("RGB").resize((width, height), Image.BILINEAR))
    out = []
    for i in range(count):
        path = folder / f"frame_{i:02d}.png"
        if not path.exists():
            Image.fromarray(np.roll(base, 7 * i, axis=1)).save(path)
        out.append(path)
    return out


def goals(results: dict) -> list[str]:
    """Lines `goal: value -> met / NOT met` from the SSA-preset frame's report."""
    rep = results.get("frame_ssa_preset")
    if rep is None:
        return ["goals: the SSA-preset frame run did not complete; nothing to judge"]
    fp32 = rep["variants"].get("ssa_fp32", {})
    lines = []
    speed = fp32.get("speedup")
    voting = fp32.get("voting_share")
    peak = fp32.get("peak_gpu_gib")
    for name, value, ok, goal in (
        ("ssa fp32 speedup over stock, SSA preset", speed, speed is not None and
         speed >= GOAL_SPEEDUP, f">= {GOAL_SPEEDUP:g}x"),
        ("voting share of the image's time", voting, voting is not None and
         voting <= GOAL_VOTING, f"<= {100 * GOAL_VOTING:g}%"),
        ("peak GPU memory at 2048x1024 (GiB)", peak, peak is not None and
         peak <= GOAL_PEAK_GIB, f"<= {GOAL_PEAK_GIB:g}"),
    ):
        shown = "n/a" if value is None else f"{value:.4g}"
        lines.append(f"goal {name} {goal}: {shown} -> {'met' if ok else 'NOT met'}")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/ssa-gpu-check"))
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/ssa-gpu-work"))
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="seconds for all benchmark steps (later steps are skipped past it)")
    p.add_argument("--target-masks", type=int, default=300)
    p.add_argument("--cpu-smoke", action="store_true",
                   help="tiny settings on the CPU: checks the script, measures nothing")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    if args.cpu_smoke:
        args.sam_model, args.device, args.target_masks = "vit_b", "cpu", 20
        frame, big, pps, ssa_pps, count = "256x128", "240x160", "4", "4", 2
        # No crop layer: one encoder pass per image, so the smoke ends in minutes on a CPU.
        preset = ["--preset", "ssa", "--points-per-side", ssa_pps, "--amg", "crop_n_layers=0"]
        variants = "fp32,bf16"
    else:
        args.sam_model, args.device = "vit_h", "cuda"
        frame, big, pps, count = "2048x1024", None, "32", 16
        preset = ["--preset", "ssa"]
        variants = "fp32,bf16,bf16+compile"
    ade = str(ADE if ADE.exists() else FRAME)
    ade_size = ["--resize", big] if big else []
    results = {}
    steps = [
        ("frame_ssa_preset", ["--image", str(FRAME), "--resize", frame, *preset,
                              "--variants", variants]),
        ("ade_32", ["--image", ade, *ade_size, "--points-per-side", pps,
                    "--variants", "fp32,bf16"]),
        ("ade_ssa_preset", ["--image", ade, *ade_size, *preset, "--variants", "fp32,bf16"]),
        ("frame_32", ["--image", str(FRAME), "--resize", frame, "--points-per-side", pps,
                      "--variants", "fp32,bf16"]),
    ]
    # Step 5 (the hf: path) right after the goals' step, so a short budget still gives it.
    hf_steps = [("hf_sam2", "sam2_random", "--make-random-sam2",
                 "fp32,bf16" if args.cpu_smoke else "fp32,bf16,bf16+compile")]
    if not args.cpu_smoke and importlib.util.find_spec("timm") is not None:
        hf_steps.append(("hf_edgetam", "edgetam_random", "--make-random-edgetam", "fp32,bf16"))
    hf_steps = [(tag, ["--mask-source", f"hf:{args.work_dir / folder}", make, "--image",
                       str(FRAME), "--square", "--points-per-side",
                       "2" if args.cpu_smoke else "16", "--variants", hf_variants])
                for tag, folder, make, hf_variants in hf_steps]
    steps = [steps[0], *hf_steps, *steps[1:]]
    if args.cpu_smoke:
        # The other steps run the same code on other images and settings.
        steps = steps[:1 + len(hf_steps)]
    for tag, extra in steps:
        rep = bench(args, tag, extra, deadline)
        if rep is not None:
            results[tag] = rep
    many = frames(FRAME, frame, args.work_dir / "frames", count)
    rep = bench(args, "throughput", [*[x for f in many for x in ("--image", str(f))], *preset,
                                     "--no-stock", "--variants", "fp32"], deadline + 120)
    if rep is not None:
        results["throughput"] = rep
    summary = summarise(results) + goals(results)
    text = "\n".join(summary)
    print(text)
    (args.out / "summary.txt").write_text(text + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return 0 if results else 1


def summarise(results: dict) -> list[str]:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    lines = [f"torch {torch.__version__}, {device}"]
    for tag, rep in results.items():
        if tag.startswith("hf_"):
            pipe = rep["pipeline"]
            lines.append(f"{tag}: pipeline + vote {pipe['total']:.2f} s, "
                         f"{int(pipe['count'])} masks")
            for name, agree in rep["agreement"].items():
                side = rep[name]
                split = ", ".join(f"{k.strip()} {v:.3f}" for k, v in side.items()
                                  if k.startswith("  "))
                lines.append(f"  {name}: {side['total']:.2f} s "
                             f"({rep['speedup_' + name]:.1f}x the pipeline), agreement {agree}; "
                             f"split: {split}")
            continue
        if tag == "throughput":
            for name, v in rep["variants"].items():
                lines.append(f"{tag} {name}: {len(rep['images'])} images in {v['seconds']:.2f} s "
                             f"= {v['images_per_s']:.2f} images/s, peak GPU "
                             f"{v.get('peak_gpu_gib')} GiB")
            continue
        th = rep["settings"].get("pred_iou_thresh")
        lines.append(f"{tag}: stock {rep['stock']['seconds']:.2f} s, pred_iou_thresh {th:.4f}, "
                     f"stock masks {rep['agreement']['mask_counts']}")
        for name, v in rep["variants"].items():
            split = v.get("split") or {}
            parts = ", ".join(f"{k} {s:.3f}" for k, s in split.items())
            agree = v["agreement"]
            lines.append(
                f"  {name}: {v['seconds']:.2f} s ({v['speedup']:.1f}x), voting "
                f"{100 * v['voting_share']:.2f}%, peak GPU {v.get('peak_gpu_gib')} GiB, masks "
                f"{agree['mask_counts']}, mean matched IoU {agree['mean_matched_iou']}, label "
                f"agreement {agree['label_map_pixel_agreement']:.4f}; split: {parts}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
