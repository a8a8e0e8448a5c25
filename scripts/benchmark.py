"""The stock pipeline against `ssa run`'s, on the same images, checkpoint and settings.

Stock: segment-anything's `SamAutomaticMaskGenerator` (COCO RLE output), the Hugging Face
segmentor, per-mask voting by decoding each RLE, writing, one image at a time. ssa: `ssa.run.runner.label_dataset`
(fast generator, one-pass device voting, prefetch and background writer). Each runs in its own
subprocess (so peak RSS is its own); the parent prints the ratio, a per-stage breakdown, peak
memory and mask agreement (counts; mean IoU of masks matched one-to-one by IoU, pycocotools).

No pretrained weights are needed: a random full-size SAM state dict and a small random Segformer
are built in `--work-dir` on first use.

    python scripts/benchmark.py --image ../shared/fixtures/ade20k_full_samples/ADE_train_00016964.jpg

Both totals leave out loading the two models (timed apart as "load (models, not in total)"),
so the ratio compares the per-image work a dataset run repeats.

`--mask-source hf:<folder>` compares instead, in this one process on the same image, labels and
settings: transformers' `pipeline("mask-generation")` + ssa's vote (`ssa.voting.vote`) against
ssa's `hf:` source (`ssa.masks.hf`) + the same vote. `--make-random-sam2` first saves a random
SAM 2 (a reduced Hiera, full-size decoder, 1024 input) to that folder if it has no model:

    python scripts/benchmark.py --mask-source hf:/tmp/ssa-benchmark/sam2_random --make-random-sam2 \
        --image ../shared/fixtures/cityscapes_sample/mmseg_demo.png
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout, or two levels up from a worktree (/work/wt/<name>).
_SHARED = next((p / "shared" for p in (ROOT.parent, ROOT.parents[1]) if (p / "shared").is_dir()),
               ROOT.parent / "shared")
DEFAULT_IMAGE = _SHARED / "fixtures" / "ade20k_full_samples" / "ADE_train_00016964.jpg"
LOAD = "load (models, not in total)"
STAGES = [LOAD, "read", "semantic", "image_encoder", "mask_decoder", "mask_postprocess", "voting",
          "writing"]


# ---------------------------------------------------------------- models


def make_models(work: Path, sam_model: str) -> tuple[Path, Path]:
    import torch

    from ssa.masks import SAM_ENCODERS, build_sam_from_config

    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / f"sam_{sam_model}_random.pth"
    if not ckpt.exists():
        torch.manual_seed(0)
        torch.save(build_sam_from_config(SAM_ENCODERS[sam_model]).state_dict(), ckpt)
    seg = work / "segformer_random"
    if not (seg / "config.json").exists():
        from transformers import (
            SegformerConfig,
            SegformerForSemanticSegmentation,
            SegformerImageProcessor,
        )

        from ssa.datasets import get_dataset

        names = list(get_dataset("ade20k").classes)
        torch.manual_seed(0)
        config = SegformerConfig(
            num_labels=len(names), id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)}, hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 4], decoder_hidden_size=64,
        )
        model = SegformerForSemanticSegmentation(config).eval()
        with torch.no_grad():
            model.decode_head.classifier.bias.copy_(torch.randn(len(names)) * 0.05)
        model.save_pretrained(seg)
        SegformerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(seg)
    return ckpt, seg


class Timers:
    """Seconds per stage; `hook(module, stage)` times a module's forward calls."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def hook(self, module, stage: str) -> None:
        import torch

        starts: list[float] = []

        def pre(*_):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            starts.append(time.perf_counter())

        def post(*_):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds[stage] += time.perf_counter() - starts.pop()

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    def wrap(self, fn, stage: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - start

        return timed


def peak_memory() -> dict[str, float]:
    import torch

    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_gpu_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    return out


# ---------------------------------------------------------------- the two pipelines


def run_stock(args: argparse.Namespace, images: list[Path], out_dir: Path) -> dict:
    """The original SSA flow, one image at a time, with the stock generator."""
    import torch
    from pycocotools import mask as mask_utils
    from segment_anything import SamAutomaticMaskGenerator

    from ssa import io
    from ssa.masks import load_sam
    from ssa.run.outputs import output_paths, semantic_mask_rles
    from ssa.segmentors.base import BranchOutput, class_names
    from ssa.specs.segmentors import load_segmentor

    device = args.device
    if args.stock_keep_heap:
        from ssa.run.heap import keep_freed_memory

        keep_freed_memory()
    load_start = time.perf_counter()
    segmentor = load_segmentor(f"hf:{args.segformer}", device=device)
    names = class_names(segmentor)
    sam = load_sam(args.sam_model, args.checkpoint, device)
    load_seconds = time.perf_counter() - load_start
    timers = Timers()
    timers.hook(sam.image_encoder, "image_encoder")
    timers.hook(sam.mask_decoder, "mask_decoder")
    generator = SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **args.settings)
    t = timers.seconds
    start_all = time.perf_counter()
    masks_total = 0
    for path in images:
        start = time.perf_counter()
        image = io.read_image(path)
        start = _lap(t, "read", start)
        with torch.inference_mode():
            labels = BranchOutput.from_raw(segmentor(image), len(names), image.shape[:2],
                                           device, kind=segmentor.scores_kind).labels
            labels = labels.long().cpu().numpy()
        start = _lap(t, "semantic", start)
        net = t["image_encoder"] + t["mask_decoder"]
        records = generator.generate(image)
        start = _lap(t, "mask_generator", start)
        t["mask_postprocess"] += t.pop("mask_generator") - (t["image_encoder"] + t["mask_decoder"]
                                                            - net)
        # The original SSA vote: decode each mask, top-1 class of the branch inside it.
        label_map = labels.copy()
        classes = []
        for rec in sorted(records, key=lambda r: r["area"], reverse=True):
            mask = mask_utils.decode(rec["segmentation"]).astype(bool)
            votes = np.bincount(labels[mask][labels[mask] < len(names)], minlength=len(names))
            cls = int(votes.argmax()) if votes.sum() else -1
            rec["class_name"] = names[cls] if cls >= 0 else None
            classes.append(cls)
            if cls >= 0:
                label_map[mask] = cls
        start = _lap(t, "voting", start)
        paths = output_paths(out_dir, Path(path.name))
        io.write_label_png(paths["label"], label_map, len(names))
        for rec in records:
            rec["segmentation"] = {"size": rec["segmentation"]["size"],
                                   "counts": rec["segmentation"]["counts"]}
        io.write_json(paths["semantic"], {
            "annotations": records,
            "semantic_mask": semantic_mask_rles(label_map, len(names)),
        })
        _lap(t, "writing", start)
        masks_total += len(records)
    t[LOAD] = load_seconds
    return {"seconds": time.perf_counter() - start_all, "stages": dict(t), "masks": masks_total,
            "keep_heap": _heap_kept(), **peak_memory()}


def run_ssa(args: argparse.Namespace, images: list[Path], out_dir: Path) -> dict:
    """`ssa run`'s pipeline (`ssa.run.runner.label_dataset`) on a folder holding links to the images."""
    import ssa.run.prefetch
    from ssa import io
    from ssa.config import RunConfig
    from ssa.masks import sam as masks
    from ssa.run import labeller, runner

    data = out_dir.parent / (out_dir.name + "_input")
    data.mkdir(parents=True, exist_ok=True)
    for path in images:
        link = data / path.name
        if not link.exists():
            link.symlink_to(path.resolve())
    timers = Timers()
    t = timers.seconds
    generators: list = []
    original_load = masks.load_sam

    def load_sam(*a, **k):
        sam = original_load(*a, **k)
        timers.hook(sam.image_encoder, "image_encoder")
        timers.hook(sam.mask_decoder, "mask_decoder")
        return sam

    pipeline_build = labeller.build_labeller

    def build_labeller(plan, progress=None):
        load_start = time.perf_counter()
        built = pipeline_build(plan, progress)
        t[LOAD] += time.perf_counter() - load_start
        built.segmentor = timers.wrap(built.segmentor, "semantic")
        gen = built.mask_source
        generators.append(gen)
        gen.generate = timers.wrap(gen.generate, "mask_generator")
        built.write = timers.wrap(built.write, "writing (background)")
        return built

    masks.load_sam = load_sam
    labeller.build_labeller = build_labeller
    labeller.vote = timers.wrap(labeller.vote, "voting")
    io.read_image = timers.wrap(io.read_image, "read (prefetch thread)")
    cfg = RunConfig(dataset="folder", data_dir=data, out_dir=out_dir, sam_model=args.sam_model,
                    sam_checkpoint=Path(args.checkpoint), amg_preset="default", amg=args.settings,
                    segmentor=f"hf:{args.segformer}", device=args.device,
                    amg_impl=args.amg_impl, precision=args.precision, compile=args.compile)
    from ssa.run.heap import keep_freed_memory

    keep_freed_memory()  # as `ssa run` opts in
    from ssa.plan import plan_run

    plan = plan_run(cfg)
    start = time.perf_counter()
    summary = runner.label_dataset(plan)
    seconds = time.perf_counter() - start - t[LOAD]
    if summary.failed:
        raise SystemExit(f"ssa pipeline failed: {summary.failed}")
    gen_total = t.pop("mask_generator", 0.0)
    fast = generators[0].generator if generators else None
    detail = dict(getattr(getattr(fast, "stats", None), "seconds", {}))
    if not t["mask_decoder"] and "mask_decoder" in detail and len(images) == 1:
        # The fast generator's shared-image decoder (ssa.masks.sam_speedups.decode_fused) does not
        # call MaskDecoder.forward, so the hook saw nothing: take the generator's own timer.
        t["mask_decoder"] = detail["mask_decoder"]
    t["mask_postprocess"] = gen_total - t["image_encoder"] - t["mask_decoder"]
    return {"seconds": seconds, "stages": dict(t), "masks": summary.num_masks,
            "fast_stats_last_image": detail,
            "exact_fallback_last_image": getattr(getattr(fast, "stats", None), "exact_fallback",
                                                 None),
            "overlap_module": ssa.run.prefetch.__name__, "keep_heap": _heap_kept(), **peak_memory()}


def _heap_kept() -> bool:
    """Whether `ssa.run.heap.keep_freed_memory` is in force in this process."""
    import ssa.run.heap

    return bool(ssa.run.heap._applied)


def _lap(t: dict, stage: str, start: float) -> float:
    now = time.perf_counter()
    t[stage] += now - start
    return now


# ---------------------------------------------------------------- hf: mask sources


def make_random_sam2(folder: Path) -> None:
    """A random SAM 2 for benchmarks: Hiera with a quarter of hiera-tiny's widths and fewer
    blocks, the full-size prompt encoder and mask decoder, 1024 input (256x256 logits)."""
    import torch
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2Model,
        Sam2Processor,
        Sam2VisionConfig,
    )

    if (folder / "config.json").exists():
        return
    torch.manual_seed(0)
    backbone = Sam2HieraDetConfig(hidden_size=24, embed_dim_per_stage=[24, 48, 96, 192],
                                  blocks_per_stage=[1, 1, 3, 1],
                                  num_attention_heads_per_stage=[1, 1, 2, 4],
                                  global_attention_blocks=[4])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[192, 96, 48, 24])
    model = Sam2Model(Sam2Config(vision_config=vision)).eval()
    model.save_pretrained(folder)
    Sam2Processor(Sam2ImageProcessor()).save_pretrained(folder)


def make_random_edgetam(folder: Path) -> None:
    """A random EdgeTAM for benchmarks: the full-size model of transformers' defaults (timm's
    RepViT-M1 backbone, random weights, needs timm), 1024 input (256x256 logits)."""
    import torch
    from transformers import (
        EdgeTamConfig,
        EdgeTamModel,
        EdgeTamVisionConfig,
        Sam2ImageProcessor,
        Sam2Processor,
        TimmWrapperConfig,
    )

    if (folder / "config.json").exists():
        return
    torch.manual_seed(0)
    backbone = TimmWrapperConfig(architecture="repvit_m1", model_args={
        "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3]})
    model = EdgeTamModel(EdgeTamConfig(
        vision_config=EdgeTamVisionConfig(backbone_config=backbone))).eval()
    model.save_pretrained(folder)
    Sam2Processor(Sam2ImageProcessor()).save_pretrained(folder)


def _hf_settings(settings: dict) -> dict:
    """ssa's knob names -> the pipeline's keywords (`ssa.masks.hf` maps them the same way)."""
    from ssa.masks.hf import _PIPELINE_KNOBS

    out = {}
    for key, value in settings.items():
        if key not in _PIPELINE_KNOBS:
            raise SystemExit(f"--amg {key}: transformers' pipeline has no such knob")
        out[_PIPELINE_KNOBS[key][1]] = value
    return out


def run_hf_compare(args: argparse.Namespace) -> dict:
    """transformers' pipeline + vote against ssa's hf: source + vote, per image, in-process."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForMaskGeneration, pipeline

    from ssa import io
    from ssa.masks.hf import load_hf_mask_source
    from ssa.segmentors.base import BranchOutput, class_names
    from ssa.specs.segmentors import load_segmentor
    from ssa.voting import vote

    folder = args.mask_source[len("hf:"):]
    _, seg = make_models(args.work_dir, args.sam_model)
    segmentor = load_segmentor(f"hf:{seg}", device=args.device)
    names = class_names(segmentor)
    start = time.perf_counter()
    gen = pipeline("mask-generation", model=AutoModelForMaskGeneration.from_pretrained(folder),
                   image_processor=AutoImageProcessor.from_pretrained(folder), device=args.device)
    load_pipe = time.perf_counter() - start
    # ssa sides: "ssa" (--precision, --compile) or one per --variants entry ("fp32", "bf16",
    # "bf16+compile"), each timed against the one pipeline run.
    variants = (args.variants.split(",") if args.variants
                else [args.precision + ("+compile" if args.compile else "")])
    sources = {}
    sides = {"pipeline": defaultdict(float)}
    sides["pipeline"][LOAD] = load_pipe
    for v in variants:
        name = "ssa" if len(variants) == 1 else f"ssa_{v.replace('+', '_')}"
        start = time.perf_counter()
        sources[name] = load_hf_mask_source(folder, args.device, args.settings,
                                            precision=v.split("+")[0], decoder=args.hf_decoder,
                                            compile=v.endswith("+compile"))
        sides[name] = defaultdict(float)
        sides[name][LOAD] = time.perf_counter() - start
    pipe_kwargs = _hf_settings(args.settings)
    agree = {name: [] for name in sources}
    if args.device.startswith("cuda") or any(v.endswith("+compile") for v in variants):
        # Warm-up (CUDA kernels, compilation) on a small image, outside the timings.
        warm = np.zeros((64, 64, 3), dtype=np.uint8)
        for src in sources.values():
            src.generate(warm)
    for path in args.images:
        image = io.read_image(path)
        if args.square:  # the centre square
            h, w = image.shape[:2]
            side = min(h, w)
            y0, x0 = (h - side) // 2, (w - side) // 2
            image = np.ascontiguousarray(image[y0:y0 + side, x0:x0 + side])
        with torch.inference_mode():
            labels = BranchOutput.from_raw(segmentor(image), len(names), image.shape[:2],
                                           args.device).labels
        t = sides["pipeline"]
        start = time.perf_counter()
        out = gen(Image.fromarray(image), **pipe_kwargs)
        start = _lap(t, "masks", start)
        stack = torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in out["masks"]]))
        ref = vote(stack.to(args.device), labels, len(names))
        _lap(t, "voting", start)
        t["count"] += len(stack)
        if args.ssa_keep_heap:
            # As `ssa run` opts in; after the pipeline's first image, so the pipeline runs as
            # users run it on a one-image benchmark (later images would share the setting).
            from ssa.run.heap import keep_freed_memory

            keep_freed_memory()
        for name, source in sources.items():
            t = sides[name]
            _sync(args.device)
            start = time.perf_counter()
            result = source.generate(image)
            _sync(args.device)
            start = _lap(t, "masks", start)
            got = vote(result.masks, labels, len(names))
            _sync(args.device)
            _lap(t, "voting", start)
            t["count"] += len(result.records)
            for stage, sec in source.stats.seconds.items():
                t[f"  {stage}"] += sec
            agree[name].append(_hf_agreement(stack, result.masks.cpu(), ref.label_map.cpu(),
                                             got.label_map.cpu()))
    report = {"mask_source": args.mask_source, "settings": args.settings, "device": args.device,
              "hf_decoder": args.hf_decoder, "images": [str(p) for p in args.images],
              "square": args.square, "torch_threads": torch.get_num_threads(),
              "ssa_keep_heap": _heap_kept(),
              "agreement": agree.get("ssa", agree)}
    for side, t in sides.items():
        t["total"] = t["masks"] + t["voting"]
        report[side] = dict(t)
    for name in sources:
        key = "speedup" if name == "ssa" else f"speedup_{name}"
        report[key] = report["pipeline"]["total"] / report[name]["total"]
    if torch.cuda.is_available():
        report.update(peak_memory())
    return report


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _hf_agreement(stack, mine, ref_map, got_map) -> dict:
    """The pipeline's masks `stack` against ssa's `mine` (both `(N, H, W) bool`, CPU), in
    order: counts, how many pairs reach IoU 0.99 / 0.999, the smallest IoU, bitwise equality,
    label maps equal."""
    import torch

    n = min(len(stack), len(mine))
    inter = (stack[:n] & mine[:n]).flatten(1).sum(1)
    union = (stack[:n] | mine[:n]).flatten(1).sum(1)
    iou = torch.where(union > 0, inter / union.clamp_min(1), 1.0)
    return {"counts": [len(stack), len(mine)],
            "same_order_iou_ge_0.99": int((iou >= 0.99).sum()),
            "same_order_iou_ge_0.999": int((iou >= 0.999).sum()),
            "min_iou": float(iou.min()) if n else None,
            "pixels_differing": int((stack[:n] ^ mine[:n]).sum()),
            "masks_equal": len(stack) == len(mine) and bool(torch.equal(stack, mine)),
            "label_maps_equal": bool(torch.equal(ref_map, got_map))}


# ---------------------------------------------------------------- agreement


def _matched_ious(ra: list[dict], rb: list[dict]) -> list[float]:
    """IoUs of a one-to-one matching: mask i with mask i where that IoU is >= 0.5 (the fast
    generator keeps the stock order), the rest matched greedily by decreasing IoU (pycocotools).
    """
    from pycocotools import mask as mask_utils

    ious, left_a, left_b = [], [], set(range(len(rb)))
    for i in range(len(ra)):
        iou = float(mask_utils.iou([ra[i]], [rb[i]], [0])[0][0]) if i < len(rb) else 0.0
        if iou >= 0.5:
            ious.append(iou)
            left_b.discard(i)
        else:
            left_a.append(i)
    cols = sorted(left_b)
    if left_a and cols:
        iou = np.asarray(mask_utils.iou([ra[i] for i in left_a], [rb[j] for j in cols],
                                        [0] * len(cols)))
        used_a, used_b = set(), set()
        for flat in np.argsort(-iou, axis=None):
            i, j = divmod(int(flat), iou.shape[1])
            if i not in used_a and j not in used_b:
                used_a.add(i)
                used_b.add(j)
                ious.append(float(iou[i, j]))
    return ious


def agreement(stock_dir: Path, ssa_dir: Path, images: list[Path]) -> dict:

    from ssa import io

    counts, ious, label_agree = [], [], []
    for path in images:
        stem = path.stem
        a = json.loads((stock_dir / f"{stem}_semantic.json").read_text())["annotations"]
        b = json.loads((ssa_dir / f"{stem}_semantic.json").read_text())["annotations"]
        counts.append((len(a), len(b)))
        ra = [dict(x["segmentation"], counts=x["segmentation"]["counts"].encode()) for x in a]
        rb = [dict(x["segmentation"], counts=x["segmentation"]["counts"].encode()) for x in b]
        ious.extend(_matched_ious(ra, rb))
        la = io.read_label_png(stock_dir / f"{stem}_semantic.png")
        lb = io.read_label_png(ssa_dir / f"{stem}_semantic.png")
        label_agree.append(float((la == lb).mean()))
    return {
        "mask_counts": counts,
        "matched": len(ious),
        "mean_matched_iou": float(np.mean(ious)) if ious else None,
        "min_matched_iou": float(np.min(ious)) if ious else None,
        "label_map_pixel_agreement": float(np.mean(label_agree)),
    }


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", type=Path, action="append",
                   help=f"image(s) to label (default {DEFAULT_IMAGE.name})")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/ssa-benchmark"))
    p.add_argument("--checkpoint-dir", type=Path,
                   help="where the random models are made and reused (default --work-dir)")
    p.add_argument("--sam-model", default="vit_b")
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="default", choices=["default", "ssa"],
                   help="the generator preset both sides start from (ssa: 64 points per side, "
                        "one crop layer, the original SSA thresholds); the flags below win")
    p.add_argument("--points-per-side", type=int, help="default 16 (default preset)")
    p.add_argument("--pred-iou-thresh", type=float, help="default 0 (default preset)")
    p.add_argument("--stability-score-thresh", type=float, help="default 0 (default preset)")
    p.add_argument("--box-nms-thresh", type=float, help="default 1.0 (default preset)")
    p.add_argument("--target-masks", type=int,
                   help="random weights: choose pred_iou_thresh so that about this many masks "
                        "survive per image (stability 0, box NMS 1.0: every survivor kept), "
                        "from the fast generator's candidates on the first image")
    p.add_argument("--resize", help="WxH: label the images resized to this size (e.g. 2048x1024)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="the ssa side's --precision")
    p.add_argument("--compile", action="store_true", help="the ssa side's --compile")
    p.add_argument("--variants",
                   help="comma-separated ssa sides to run against one stock run, each "
                        "PRECISION[+compile] (e.g. fp32,bf16,bf16+compile); default: one side "
                        "with --precision/--compile")
    p.add_argument("--no-stock", action="store_true",
                   help="run the ssa sides only (throughput; no speedup or agreement)")
    p.add_argument("--tag", help=argparse.SUPPRESS)
    p.add_argument("--amg", action="append", default=[], help="more generator knobs KEY=VALUE")
    p.add_argument("--amg-impl", default="fast", help="the ssa side's generator: fast | stock")
    p.add_argument("--skip-stock", action="store_true", help="reuse the last stock run's outputs")
    p.add_argument("--stock-keep-heap", action="store_true",
                   help="give the stock run ssa's allocator setting too (ssa.run.heap), to "
                        "see how much of the ratio it accounts for")
    p.add_argument("--mask-source", help="hf:<folder>: transformers' mask-generation pipeline + "
                   "vote against ssa's hf: source + vote (in this process)")
    p.add_argument("--no-ssa-keep-heap", dest="ssa_keep_heap", action="store_false",
                   help="hf: compare: leave glibc's heap as it is for the ssa side too (by "
                        "default ssa.run.heap.keep_freed_memory is applied after the "
                        "pipeline's first image, as `ssa run` opts in)")
    p.add_argument("--hf-decoder", default="fast", choices=["fast", "exact", "stock"],
                   help="the hf: side's decoder (ssa.masks.hf.HFMaskSource's `decoder`)")
    p.add_argument("--make-random-edgetam", action="store_true",
                   help="first save a random full-size EdgeTAM to the --mask-source folder "
                        "(needs timm)")
    p.add_argument("--make-random-sam2", action="store_true",
                   help="with --mask-source hf:<folder>: save a random SAM 2 there if missing")
    p.add_argument("--square", action="store_true",
                   help="with --mask-source: centre-crop each image to a square (transformers' "
                        "pipeline scales SAM 2 grid points for the longest edge, so on other "
                        "images its prompts differ from ssa's)")
    p.add_argument("--only", choices=["stock", "ssa"], help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", help=argparse.SUPPRESS)
    p.add_argument("--segformer", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from ssa.masks import parse_amg

    args.images = [Path(x) for x in (args.image or [DEFAULT_IMAGE])]
    if args.mask_source:
        if not args.mask_source.startswith("hf:"):
            p.error("--mask-source takes hf:<folder> (sam: is the default comparison)")
        from ssa.masks.hf import resolve_settings

        extra = dict(item.split("=", 1) for item in args.amg)
        knobs = resolve_settings({})
        defaults = {"points_per_side": 16, "pred_iou_thresh": 0.0,
                    "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
        args.settings = {
            **{k: v if getattr(args, k) is None else getattr(args, k)
               for k, v in defaults.items()},
            **{k: _knob_value(knobs[k], v) for k, v in extra.items()},
        }
        return args
    from ssa.masks.knobs import AMG_PRESETS

    base = dict(AMG_PRESETS[args.preset])
    if args.preset == "default":
        base.update(points_per_side=16, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                    box_nms_thresh=1.0)
    flags = {"points_per_side": args.points_per_side, "pred_iou_thresh": args.pred_iou_thresh,
             "stability_score_thresh": args.stability_score_thresh,
             "box_nms_thresh": args.box_nms_thresh}
    args.settings = {**base, **{k: v for k, v in flags.items() if v is not None},
                     **parse_amg(args.amg)}
    return args


def _knob_value(default, raw: str):
    if isinstance(default, bool):
        return raw.lower() in ("1", "true")
    return type(default)(raw)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.mask_source:
        if args.make_random_sam2:
            make_random_sam2(Path(args.mask_source[len("hf:"):]))
        if args.make_random_edgetam:
            make_random_edgetam(Path(args.mask_source[len("hf:"):]))
        report = run_hf_compare(args)
        print(json.dumps(report, indent=2))
        return
    if args.only:
        fn = run_stock if args.only == "stock" else run_ssa
        out = args.work_dir / (f"out_{args.only}" + (f"_{args.tag}" if args.tag else ""))
        shutil.rmtree(out, ignore_errors=True)  # ssa run would skip images already done
        result = fn(args, args.images, out)
        print("RESULT " + json.dumps(result))
        return
    ckpt, seg = make_models(args.checkpoint_dir or args.work_dir, args.sam_model)
    if args.resize:
        args.images = resized_images(args.images, args.resize, args.work_dir / "resized")
    if args.target_masks:
        thresh = calibrate_pred_iou(ckpt, args, args.images[0])
        args.settings.update(pred_iou_thresh=thresh, stability_score_thresh=0.0,
                             box_nms_thresh=1.0, crop_nms_thresh=1.0)
        print(f"pred_iou_thresh {thresh:.5f} keeps about {args.target_masks} masks per image "
              f"(stability 0, box and crop NMS 1.0)", file=sys.stderr, flush=True)
    results = {}
    variants = (args.variants.split(",") if args.variants
                else [args.precision + ("+compile" if args.compile else "")])
    # The children get the resolved settings and images, not the flags that made them.
    passthrough = ["--work-dir", str(args.work_dir), "--sam-model", args.sam_model, "--device",
                   args.device, "--amg-impl", args.amg_impl,
                   *[x for img in args.images for x in ("--image", str(img))],
                   *[x for k, v in args.settings.items() if v is not None
                     for x in ("--amg", f"{k}={v}")]]
    if args.stock_keep_heap:
        passthrough.append("--stock-keep-heap")
    sides = ([] if args.no_stock else [("stock", "stock", [])]) + [
        (f"ssa_{v.replace('+', '_')}", "ssa",
         ["--precision", v.split("+")[0], "--tag", v.replace("+", "_"),
          *(["--compile"] if v.endswith("+compile") else [])]) for v in variants]
    for name, side, extra in sides:
        saved = args.work_dir / f"result_{name}.json"
        if side == "stock" and args.skip_stock and saved.exists():
            results[name] = json.loads(saved.read_text())
            continue
        cmd = [sys.executable, __file__, *passthrough, *extra, "--only", side,
               "--checkpoint", str(ckpt), "--segformer", str(seg)]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=False)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{name} run failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(lines[-1][len("RESULT "):])
        saved.write_text(json.dumps(results[name]))
    if args.no_stock:
        report = {"settings": args.settings, "sam_model": args.sam_model, "device": args.device,
                  "images": [str(p) for p in args.images],
                  "variants": {name: {**results[name], "images_per_s": len(args.images)
                                      / max(results[name]["seconds"], 1e-9)}
                               for name, _, _ in sides}}
        print(json.dumps(report, indent=2))
        return
    first = sides[1][0]
    report = {
        "settings": args.settings,
        "sam_model": args.sam_model,
        "device": args.device,
        "images": [str(p) for p in args.images],
        "stock": results["stock"],
        "ssa": results[first],
        "speedup": results["stock"]["seconds"] / results[first]["seconds"],
        "agreement": agreement(args.work_dir / "out_stock",
                               args.work_dir / f"out_ssa_{first[len('ssa_'):]}", args.images),
        "variants": {
            name: {
                "seconds": results[name]["seconds"],
                "speedup": results["stock"]["seconds"] / results[name]["seconds"],
                "voting_share": results[name]["stages"].get("voting", 0.0)
                / max(results[name]["seconds"], 1e-9),
                "peak_gpu_gib": results[name].get("peak_gpu_gib"),
                "split": results[name].get("fast_stats_last_image"),
                "agreement": agreement(args.work_dir / "out_stock",
                                       args.work_dir / f"out_ssa_{name[len('ssa_'):]}",
                                       args.images),
            }
            for name, _, _ in sides[1:]
        },
    }
    print(json.dumps(report, indent=2))
    _table(report)


def resized_images(images: list[Path], size: str, folder: Path) -> list[Path]:
    """Copies of `images` resized (bilinear) to `size` (`WxH`), as PNG in `folder`."""
    from PIL import Image

    width, height = (int(v) for v in size.lower().split("x"))
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in images:
        dest = folder / f"{path.stem}_{width}x{height}.png"
        if not dest.exists():
            with Image.open(path) as img:
                img.convert("RGB").resize((width, height), Image.BILINEAR).save(dest)
        out.append(dest)
    return out


def calibrate_pred_iou(ckpt: Path, args: argparse.Namespace, image_path: Path) -> float:
    """The predicted-IoU threshold above which about `args.target_masks` of the first image's
    candidates lie, at the run's settings: the fast generator's decoder over every crop with
    no filter, low-resolution logits only (random weights give no stable masks, so the IoU
    filter alone decides, as real weights' filters keep a few hundred)."""
    import torch
    from segment_anything.utils.amg import generate_crop_boxes

    from ssa import io
    from ssa.masks import load_sam
    from ssa.masks.fast_amg import FastMaskGenerator

    image = io.read_image(image_path)
    sam = load_sam(args.sam_model, ckpt, args.device)
    settings = {**args.settings, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                "box_nms_thresh": 1.0, "crop_nms_thresh": 1.0, "min_mask_region_area": 0}
    gen = FastMaskGenerator(sam, **settings)
    ious = []
    size = image.shape[:2]
    boxes, layers = generate_crop_boxes(size, gen.crop_n_layers, gen.crop_overlap_ratio)
    with torch.inference_mode():
        for box, layer in zip(boxes, layers):
            x0, y0, x1, y1 = box
            gen.predictor.set_image(image[y0:y1, x0:x1])
            crop = (y1 - y0, x1 - x0)
            points = gen.point_grids[layer] * np.array(crop)[None, ::-1]
            for i in range(0, len(points), 256):
                ious.append(gen._decode(points[i : i + 256], crop)[1].flatten().float().cpu())
    values = torch.cat(ious).sort(descending=True).values
    k = min(len(values) - 1, max(0, args.target_masks))
    del sam, gen
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return float(values[k])


def _table(report: dict) -> None:
    for name, v in report.get("variants", {}).items():
        print(f"{name}: {v['seconds']:.2f} s, {v['speedup']:.2f}x stock, voting "
              f"{100 * v['voting_share']:.1f}% of the time, peak GPU {v['peak_gpu_gib']} GiB, "
              f"agreement {v['agreement']}", file=sys.stderr)
    s, f = report["stock"], report["ssa"]
    print("\n| stage | stock s | ssa s |\n|---|---|---|", file=sys.stderr)
    keys = list(dict.fromkeys([*STAGES, *s["stages"], *f["stages"]]))
    for k in keys:
        a, b = s["stages"].get(k), f["stages"].get(k)
        if a is None and b is None:
            continue
        fa = f"{a:.1f}" if a is not None else "-"
        fb = f"{b:.1f}" if b is not None else "-"
        print(f"| {k} | {fa} | {fb} |", file=sys.stderr)
    print(f"| **total (wall)** | {s['seconds']:.1f} | {f['seconds']:.1f} |", file=sys.stderr)
    print(f"speedup {report['speedup']:.2f}x; peak RSS {s['peak_rss_gib']:.2f} / "
          f"{f['peak_rss_gib']:.2f} GiB; agreement {report['agreement']}", file=sys.stderr)


if __name__ == "__main__":
    main()
