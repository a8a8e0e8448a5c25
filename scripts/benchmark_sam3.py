"""SAM 3 as a semantic branch: seconds per image against the number of classes (Cityscapes 19,
ADE20K 150), for three ways of running the class prompts on one image:

- `naive`:   the stock way, once per class: `Sam3Processor(images, text=name)` -> `Sam3Model`
             -> `post_process_semantic_segmentation` (the image re-encoded for every class);
- `cached/1`:  `ssa.segmentors.sam3.Sam3Segmentor`, the vision backbone once per image, then
             one phrase per forward pass (`prompt_batch=1`);
- `cached/B`:  the same with B phrases per forward pass (`--prompt-batch`, default 16).

Each of them ends with the `(C, H, W)` maps at the image's resolution. The weights are random
(speed does not depend on them; no weights are downloaded), the config one of:
- `full`:  `Sam3Config()` itself, the architecture of `facebook/sam3` (ViT-L/14 at 1008 px,
           24-layer CLIP text encoder, 6+6 DETR layers, 200 queries, 288 x 288 masks);
- `small`: the same pipeline at a CPU-friendly size: 336 px input (24 x 24 tokens, 96 x 96
           masks), ViT 512 wide x 8 layers, CLIP text 256 x 4, DETR 128 wide x 2+2 layers, 50
           queries (the backbone costs a few prompts, as in the full model);
- `tiny`:  the test suite's 112 px, 32-wide model (a smoke test of the script).

    PYTHONPATH=. python scripts/benchmark_sam3.py --config small --device cpu
    PYTHONPATH=. python scripts/benchmark_sam3.py --config full --device cuda --classes 19,150
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssa.datasets import ADE20K_CLASSES, CITYSCAPES_CLASSES
from ssa.segmentors.sam3 import Sam3Segmentor


def tokenizer():
    """A CLIP tokenizer over the letters: every class name encodes (speed does not depend on
    the vocabulary: every prompt is padded to 32 tokens)."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[]), vocab


def config(name: str, vocab: dict[str, int]):
    from transformers import Sam3Config

    ids = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
           "pad_token_id": vocab["<|endoftext|>"]}  # fmt: skip
    if name == "full":
        return Sam3Config(text_config={"vocab_size": len(vocab), **ids}), 1008
    if name == "small":
        heads = {"num_attention_heads": 4, "intermediate_size": 512}
        return Sam3Config(
            vision_config={
                "backbone_config": {
                    "model_type": "sam3_vit_model", "hidden_size": 512, "num_hidden_layers": 8,
                    "image_size": 336, "window_size": 8, "global_attn_indexes": [3, 7],
                    "intermediate_size": 2048, "num_attention_heads": 8,
                },
                "fpn_hidden_size": 128,
                "backbone_feature_sizes": [[96, 96], [48, 48], [24, 24]],
            },
            text_config={"vocab_size": len(vocab), "hidden_size": 256, "projection_dim": 256,
                         "num_hidden_layers": 4, "max_position_embeddings": 32, **heads, **ids},
            geometry_encoder_config={"hidden_size": 128, "num_layers": 1, **heads},
            detr_encoder_config={"hidden_size": 128, "num_layers": 2, **heads},
            detr_decoder_config={"hidden_size": 128, "num_layers": 2, "num_queries": 50, **heads},
            mask_decoder_config={"hidden_size": 128, "num_attention_heads": 4},
        ), 336  # fmt: skip
    small = {"num_attention_heads": 2, "intermediate_size": 64}
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model", "hidden_size": 32, "num_hidden_layers": 2,
                "image_size": 112, "window_size": 4, "global_attn_indexes": [1],
                "pretrain_image_size": 56, **small,
            },
            "fpn_hidden_size": 32,
            "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
        },
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "projection_dim": 32,
                     "num_hidden_layers": 1, "max_position_embeddings": 32, **small, **ids},
        geometry_encoder_config={"hidden_size": 32, "num_layers": 1, **small},
        detr_encoder_config={"hidden_size": 32, "num_layers": 1, **small},
        detr_decoder_config={"hidden_size": 32, "num_layers": 1, "num_queries": 8, **small},
        mask_decoder_config={"hidden_size": 32, "num_attention_heads": 2},
    ), 112  # fmt: skip


def save(folder: Path, name: str) -> None:
    from transformers import Sam3ImageProcessor, Sam3Model, Sam3Processor

    tok, vocab = tokenizer()
    cfg, size = config(name, vocab)
    torch.manual_seed(0)
    Sam3Model(cfg).save_pretrained(folder)
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": size, "width": size}), tokenizer=tok
    )
    processor.save_pretrained(folder)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.inference_mode()
def naive(model, processor, image: np.ndarray, names: list[str], device: str) -> torch.Tensor:
    maps = []
    for name in names:
        inputs = processor(images=image, text=name, return_tensors="pt").to(device)
        out = model(**inputs)
        post = processor.post_process_semantic_segmentation(
            out, target_sizes=[image.shape[:2]], return_segmentation_scores=True
        )
        maps.append(post[0]["segmentation_scores"][0])
    return torch.stack(maps)


def timed(fn, device: str, repeat: int) -> float:
    fn()  # warm-up (kernels, allocator)
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("tiny", "small", "full"), default="small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--classes", default="19,150", help="class counts: 19 Cityscapes, 150 ADE")
    parser.add_argument("--prompt-batch", type=int, default=16)
    parser.add_argument("--image", default="512x1024", help="HxW of the random test image")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.image.split("x"))
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    device = args.device
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        save(Path(tmp), args.config)
        print(f"# config {args.config}: built and saved in {time.perf_counter() - start:.1f} s")
        from transformers import Sam3Model, Sam3Processor

        model = Sam3Model.from_pretrained(tmp).to(device).eval()
        processor = Sam3Processor.from_pretrained(tmp)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"# {params:.0f} M parameters; image {height}x{width}; best of {args.repeat}")
        print("| classes | naive (re-encode per class) | cached, 1 prompt/pass | "
              f"cached, {args.prompt_batch} prompts/pass |")
        print("|---|---|---|---|")
        for count in (int(c) for c in args.classes.split(",")):
            names = list(CITYSCAPES_CLASSES if count == 19 else ADE20K_CLASSES)[:count]
            row = [str(count)]
            if args.skip_naive:
                row.append("-")
            else:
                run = partial(naive, model, processor, image, names, device)
                row.append(f"{timed(run, device, args.repeat):.2f} s")
            for batch in (1, args.prompt_batch):
                seg = Sam3Segmentor(tmp, names, prompt_batch=batch, device=device)
                row.append(f"{timed(partial(seg, image), device, args.repeat):.2f} s")
                del seg
            print("| " + " | ".join(row) + " |", flush=True)
        # The cached path gives the naive path's maps (before the no-label rule).
        names = list(CITYSCAPES_CLASSES)[:5]
        seg = Sam3Segmentor(tmp, names, prompt_batch=args.prompt_batch, device=device)
        low = seg.scores(image)
        full = F.interpolate(low[None], size=image.shape[:2], mode="bilinear",
                             align_corners=False)[0]  # fmt: skip
        ref = naive(model, processor, image, names, device)
        print(f"# max |cached - naive| over 5 classes: {(full - ref).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
