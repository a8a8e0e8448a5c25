"""Mask branch: SAM checkpoints, the automatic mask generator and its knobs, SA-1B JSON masks.

A mask record is what `SamAutomaticMaskGenerator.generate` returns: `segmentation` (`HW bool`),
`area`, `bbox` (`XYWH`), `predicted_iou`, `point_coords`, `stability_score`, `crop_box` (`XYWH`).
"""

from __future__ import annotations

import inspect
import json
import os
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import SSAError

CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
CHECKPOINT_FILES = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
DEFAULT_CKP_DIR = Path("ckp")

# The original Semantic Segment Anything settings (its `main_ssa.py`).
AMG_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "ssa": {
        "points_per_side": 64,
        "pred_iou_thresh": 0.86,
        "stability_score_thresh": 0.92,
        "crop_n_layers": 1,
        "crop_n_points_downscale_factor": 2,
        "min_mask_region_area": 100,
    },
}
# Knobs ssa sets itself: the output format is fixed, point grids are not a command-line value.
_RESERVED_KNOBS = {"model", "output_mode", "point_grids"}


@dataclass(frozen=True)
class EncoderConfig:
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    image_size: int = 1024
    out_chans: int = 256


SAM_ENCODERS = {
    "vit_b": EncoderConfig(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": EncoderConfig(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": EncoderConfig(1280, 32, 16, (7, 15, 23, 31)),
}


def amg_knobs() -> dict[str, inspect.Parameter]:
    """Every settable `SamAutomaticMaskGenerator` keyword, with the library's own default."""
    from segment_anything import SamAutomaticMaskGenerator

    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    return {k: p for k, p in params.items() if k != "self" and k not in _RESERVED_KNOBS}


def _parse_knob_value(key: str, raw: str, param: inspect.Parameter) -> Any:
    default = param.default
    annotation = param.annotation
    optional = default is None or type(None) in getattr(annotation, "__args__", ()) or (
        isinstance(annotation, str) and "Optional" in annotation
    )
    if raw.lower() in ("none", "null") and optional:
        return None
    kind = type(default) if default is not None else int  # Optional[int] knobs (points_per_side)
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return kind(raw)
    except ValueError:
        raise SSAError(
            f"--amg {key}={raw}: {key} takes a {kind.__name__} (default {default!r})"
        ) from None


def parse_amg(items: Iterable[str]) -> dict[str, Any]:
    """Parse repeated `KEY=VALUE` strings to typed generator knobs; unknown keys are an error."""
    knobs = amg_knobs()
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise SSAError(f"--amg {item!r} is not KEY=VALUE; write e.g. --amg points_per_side=32")
        if key not in knobs:
            raise SSAError(
                f"unknown --amg key {key!r}; valid keys: {', '.join(sorted(knobs))}"
            )
        out[key] = _parse_knob_value(key, raw.strip(), knobs[key])
    return out


def resolve_amg(preset: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The generator keywords for a preset with `--amg` overrides on top (overrides win)."""
    if preset not in AMG_PRESETS:
        raise SSAError(f"unknown --amg-preset {preset!r}; choose one of: {', '.join(AMG_PRESETS)}")
    knobs = amg_knobs()
    settings = {k: p.default for k, p in knobs.items()}
    settings.update(AMG_PRESETS[preset])
    for key, value in (overrides or {}).items():
        if key not in knobs:
            raise SSAError(f"unknown --amg key {key!r}; valid keys: {', '.join(sorted(knobs))}")
        settings[key] = value
    return settings


def default_checkpoint(model_type: str, ckp_dir: Path = DEFAULT_CKP_DIR) -> Path:
    if model_type not in CHECKPOINT_FILES:
        raise SSAError(
            f"unknown --sam-model {model_type!r}; choose one of: {', '.join(CHECKPOINT_FILES)}"
        )
    return ckp_dir / CHECKPOINT_FILES[model_type]


def download_checkpoint(
    model_type: str,
    dest: Path,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download the official checkpoint to `dest` (via a temporary name, moved in when complete).

    `progress(bytes_done, bytes_total)` is called as data arrives. Offline, raises SSAError saying
    which file to put where.
    """
    url = CHECKPOINT_URL + CHECKPOINT_FILES[model_type]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(tmp, "wb") as f:
            total = response.headers.get("Content-Length")
            total = int(total) if total else None
            done = 0
            while chunk := response.read(1 << 20):
                f.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        if total is not None and done != total:
            raise OSError(f"received {done} of {total} bytes")
        os.replace(tmp, dest)
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise SSAError(
            f"SAM checkpoint {dest} is missing and could not be downloaded ({exc}); "
            f"download {url} and put it at {dest}, or pass --sam-checkpoint PATH"
        ) from None
    return dest


def ensure_checkpoint(
    model_type: str,
    checkpoint: str | Path | None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """The checkpoint path to load: the given one (must exist) or the official file in ckp/,
    downloaded there on first use."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise SSAError(
                f"--sam-checkpoint {path} does not exist; pass the path of a SAM .pth file "
                f"(official files: {', '.join(CHECKPOINT_FILES.values())})"
            )
        return path
    path = default_checkpoint(model_type)
    if path.is_file():
        return path
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("SSA_OFFLINE") == "1":
        raise SSAError(
            f"SAM checkpoint {path} is missing and downloads are off (offline); download "
            f"{CHECKPOINT_URL + CHECKPOINT_FILES[model_type]} and put it at {path}"
        )
    return download_checkpoint(model_type, path, progress)


def infer_encoder_config(state_dict: dict[str, Any]) -> EncoderConfig:
    """Read the image encoder's size off a SAM state dict (official or custom sizes)."""
    try:
        embed_dim, _, patch, _ = state_dict["image_encoder.patch_embed.proj.weight"].shape
        grid = state_dict["image_encoder.pos_embed"].shape[1]
        out_chans = state_dict["image_encoder.neck.0.weight"].shape[0]
    except KeyError as exc:
        raise SSAError(f"not a SAM state dict: no {exc.args[0]}; pass a SAM checkpoint") from None
    depth = 1 + max(
        int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks.")
    )
    global_idx, window = [], 14
    head_dim = None
    for i in range(depth):
        rel = state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"]
        head_dim = rel.shape[1]
        if rel.shape[0] == 2 * grid - 1:
            global_idx.append(i)
        else:
            window = (rel.shape[0] + 1) // 2
    return EncoderConfig(
        embed_dim=embed_dim,
        depth=depth,
        num_heads=embed_dim // head_dim,
        global_attn_indexes=tuple(global_idx),
        window_size=window,
        image_size=grid * patch,
        out_chans=out_chans,
    )


def build_sam_from_config(cfg: EncoderConfig):
    """An untrained SAM with the given image encoder and the standard prompt encoder/decoder."""
    from functools import partial

    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    patch = 16
    grid = cfg.image_size // patch
    encoder = ImageEncoderViT(
        depth=cfg.depth,
        embed_dim=cfg.embed_dim,
        img_size=cfg.image_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=cfg.num_heads,
        patch_size=patch,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=cfg.global_attn_indexes,
        window_size=cfg.window_size,
        out_chans=cfg.out_chans,
    )
    prompt = PromptEncoder(
        embed_dim=cfg.out_chans,
        image_embedding_size=(grid, grid),
        input_image_size=(cfg.image_size, cfg.image_size),
        mask_in_chans=16,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(
            depth=2, embedding_dim=cfg.out_chans, mlp_dim=2048, num_heads=8
        ),
        transformer_dim=cfg.out_chans,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return Sam(
        image_encoder=encoder,
        prompt_encoder=prompt,
        mask_decoder=decoder,
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(model_type: str, checkpoint: str | Path, device: str = "cpu"):
    """Load a SAM checkpoint (`weights_only=True`) into a model sized from the file itself.

    A file whose encoder is one of the official sizes but not `model_type` is refused.
    """
    import torch

    if model_type not in SAM_ENCODERS:
        raise SSAError(
            f"unknown --sam-model {model_type!r}; choose one of: {', '.join(SAM_ENCODERS)}"
        )
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise SSAError(
            f"cannot load SAM checkpoint {checkpoint} ({type(exc).__name__}); pass a SAM .pth "
            f"state dict (re-download it if it is truncated)"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    cfg = infer_encoder_config(state)
    for name, official in SAM_ENCODERS.items():
        if name != model_type and (official.embed_dim, official.depth) == (cfg.embed_dim, cfg.depth):
            raise SSAError(
                f"--sam-checkpoint {checkpoint} holds a {name} model, not {model_type}; "
                f"pass --sam-model {name}"
            )
    model = build_sam_from_config(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SSAError(
            f"SAM checkpoint {checkpoint} does not fit the SAM architecture "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); pass an official SAM checkpoint"
        )
    return model.to(device).eval()


AMG_IMPLS = ("fast", "stock")


class MaskGenerator:
    """SAM's automatic mask generator with ssa's presets: `generate(image) -> list[record]`.

    image: `HWC uint8 RGB`. Records as in the module docstring, `segmentation` as `HW bool`.
    impl: `"fast"` (`ssa.fast_amg.FastMaskGenerator`, the same masks without the stock work
    outside the network) or `"stock"` (segment-anything's `SamAutomaticMaskGenerator`).
    """

    def __init__(self, sam, impl: str = "fast", **settings: Any) -> None:
        self.settings = dict(settings)
        self.impl = impl
        if impl == "fast":
            from ssa.fast_amg import FastMaskGenerator

            self.generator = FastMaskGenerator(sam, output_mode="binary_mask", **settings)
        elif impl == "stock":
            from segment_anything import SamAutomaticMaskGenerator

            self.generator = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **settings)
        else:
            raise SSAError(f"unknown --amg-impl {impl!r}; choose one of: {', '.join(AMG_IMPLS)}")

    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        import torch

        with torch.inference_mode():
            return self.generator.generate(image)

    def generate_masks(self, image: np.ndarray):
        """`(records, masks)`: records with COCO RLE `segmentation` (`counts` str) and the
        `(N, H, W) bool` mask stack (a tensor on the model's device for the fast generator)."""
        import torch

        from ssa import io

        with torch.inference_mode():
            if self.impl == "fast":
                out = self.generator.generate_masks(image)
                return out.records, out.masks
            records = self.generator.generate(image)
        if records:
            stack = torch.from_numpy(np.stack([r["segmentation"] for r in records]))
        else:
            stack = torch.zeros((0, *image.shape[:2]), dtype=torch.bool)
        for record, rle in zip(records, io.encode_rle(stack.numpy())):
            record["segmentation"] = rle
        return records, stack


def read_sa1b_json(path: str | Path) -> list[dict[str, Any]]:
    """Mask records from an SA-1B-style JSON (`annotations` with COCO RLE `segmentation`).

    Each record keeps its fields; `segmentation` stays an RLE dict (decode with `ssa.io.decode_rle`).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SSAError(f"cannot read masks {path} ({exc}); pass SA-1B-style JSON files") from None
    annotations = data.get("annotations") if isinstance(data, dict) else data
    if not isinstance(annotations, list):
        raise SSAError(f"masks file {path} has no 'annotations' list; pass SA-1B-style JSON files")
    for i, ann in enumerate(annotations):
        seg = ann.get("segmentation") if isinstance(ann, dict) else None
        if not isinstance(seg, dict) or "counts" not in seg or "size" not in seg:
            raise SSAError(
                f"masks file {path}: annotation {i} has no COCO RLE 'segmentation' "
                f"({{'size', 'counts'}}); pass SA-1B-style JSON files"
            )
    return annotations


class JsonMasks:
    """Masks read from SA-1B-style JSON files instead of running SAM (`--masks <folder>`).

    `generate(image, path=rel)` reads `<folder>/<rel's parent>/<rel's stem>.json` (else
    `<folder>/<stem>.json`, see `ssa.companions`) and returns its annotations as mask records:
    every field of the file kept, `segmentation` decoded to `HW bool`, `area` (pixel count) and
    `bbox` (`XYWH`) computed when the file lacks them.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        if not self.folder.is_dir():
            raise SSAError(f"--masks {folder} is not a folder; pass the folder of <stem>.json files")

    def generate(self, image: np.ndarray, *, path: Path | None = None) -> list[dict[str, Any]]:
        from ssa.companions import find_companion
        from ssa.io import check_rle, decode_rle

        file = find_companion(self.folder, path, (".json",), "mask file")
        height, width = image.shape[:2]
        records = []
        for i, ann in enumerate(read_sa1b_json(file)):
            check_rle(ann["segmentation"], f"masks file {file}: annotation {i}")
            size = [int(v) for v in ann["segmentation"]["size"]]
            if size != [height, width]:
                raise SSAError(
                    f"masks file {file}: annotation {i} is {size[0]}x{size[1]} but the image is "
                    f"{height}x{width}; pass masks made for this image at its full resolution"
                )
            try:
                mask = decode_rle(ann["segmentation"])
            except (TypeError, ValueError) as exc:
                raise SSAError(f"masks file {file}: annotation {i} has a bad RLE ({exc})") from None
            record = dict(ann)
            record["segmentation"] = mask
            if "area" not in record:
                record["area"] = int(mask.sum())
            if "bbox" not in record:
                record["bbox"] = _bbox(mask)
            records.append(record)
        return records


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
