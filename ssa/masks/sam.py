"""segment-anything's SAM as a mask source (`sam:<model>[:<checkpoint>]`): checkpoints (found,
downloaded, sized from the file), the automatic generator's knobs, and the prompted predictor.

`SamMaskSource.generate(image) -> MaskResult` runs the fast generator (`ssa.masks.fast_amg`) or
segment-anything's `SamAutomaticMaskGenerator` (`impl="stock"`); `SamPromptSource` answers clicks
and boxes through `SamPredictor`. A raw record is what `SamAutomaticMaskGenerator.generate`
returns: `segmentation` (`HW bool`), `area`, `bbox` (`XYWH`), `predicted_iou`, `point_coords`,
`stability_score`, `crop_box` (`XYWH`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import SSAError
from ssa.keyvalue import Knob, check_knobs, parse_key_values
from ssa.masks.base import MaskResult
from ssa.masks.knobs import resolve_settings
from ssa.words import did_you_mean

CHECKPOINT_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
CHECKPOINT_FILES = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
DEFAULT_CKP_DIR = Path("ckp")

# The options a checkpoint reaches ssa through: `--masks sam:<model>:<file>` or `--sam-checkpoint`
# (`--sam-model`); messages name the one the user wrote (`ssa.specs.masks.MaskSpec.flag`).
CHECKPOINT_FLAGS = ("--masks", "--sam-checkpoint")

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


# The fast generator's own keywords (`FastMaskGenerator`'s keyword-only arguments).
FAST_EXTRAS = ("prompt_batch", "precision", "sdpa", "compile", "max_gpu_memory")


def _knob(param: inspect.Parameter) -> Knob:
    """A knob typed by its default, or by its annotation where the default is None."""
    text = str(param.annotation)
    if param.default is not None:
        optional = "Optional" in text or "None" in text
        return Knob.from_default(param.name, param.default, optional=optional)
    kind = next((k for k in (bool, float, str) if k.__name__ in text), int)
    return Knob(param.name, None, kind, optional=True)


def amg_knobs() -> dict[str, inspect.Parameter]:
    """Every settable `SamAutomaticMaskGenerator` keyword, with the library's own default."""
    from segment_anything import SamAutomaticMaskGenerator

    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    return {k: p for k, p in params.items() if k != "self" and k not in _RESERVED_KNOBS}


def knobs(impl: str = "fast") -> dict[str, Knob]:
    """The `--amg` knobs of `sam:`: every `SamAutomaticMaskGenerator` keyword with the library's
    default, plus the fast generator's own (`FAST_EXTRAS`) when `impl` is `"fast"`."""
    table = {k: _knob(p) for k, p in amg_knobs().items()}
    if impl == "fast":
        from ssa.masks.fast_amg import FastMaskGenerator

        params = inspect.signature(FastMaskGenerator.__init__).parameters
        table.update({k: _knob(params[k]) for k in FAST_EXTRAS})
    return table


def parse_amg(items: Iterable[str], impl: str = "fast") -> dict[str, Any]:
    """Parse repeated `KEY=VALUE` strings to typed `sam:` knobs; unknown keys are an error."""
    values = parse_key_values(items, "--amg", "points_per_side=32")
    return check_knobs(values, knobs(impl), "--amg", "sam:")


def resolve_amg(
    preset: str, overrides: dict[str, Any] | None = None, impl: str = "fast"
) -> dict[str, Any]:
    """The generator keywords for a preset with `--amg` overrides on top (overrides win): every
    stock keyword (library default unless set), the fast generator's extras only where set."""
    table = knobs(impl)
    defaults = {k: kn.default for k, kn in table.items() if k not in FAST_EXTRAS}
    return resolve_settings(table, defaults, preset, overrides, "sam:")


def named(model_type: str, checkpoint: str | Path | None, flag: str = "--sam-checkpoint") -> str:
    """The option as the user wrote it: `--masks sam:vit_b:x.pth` or `--sam-checkpoint x.pth`
    (`--masks sam:vit_b` / `--sam-model vit_b` without a file)."""
    if flag == "--masks":
        return f"--masks sam:{model_type}" + (f":{checkpoint}" if checkpoint is not None else "")
    return f"--sam-checkpoint {checkpoint}" if checkpoint is not None else f"--sam-model {model_type}"


def _give_file(model_type: str, flag: str) -> str:
    """How to pass a checkpoint file with the option the user is using."""
    return f"--masks sam:{model_type}:PATH" if flag == "--masks" else "--sam-checkpoint PATH"


def default_checkpoint(model_type: str, ckp_dir: Path = DEFAULT_CKP_DIR) -> Path:
    if model_type not in CHECKPOINT_FILES:
        raise SSAError(
            f"unknown --sam-model {model_type!r}{did_you_mean(model_type, CHECKPOINT_FILES)}; "
            f"choose one of: {', '.join(CHECKPOINT_FILES)}"
        )
    return ckp_dir / CHECKPOINT_FILES[model_type]


def download_checkpoint(
    model_type: str,
    dest: Path,
    progress: Callable[[int, int | None], None] | None = None,
    flag: str = "--sam-checkpoint",
) -> Path:
    """Download the official checkpoint to `dest` with `torch.hub.download_url_to_file` (it
    writes `<dest>.<uuid>.partial` and moves it in when complete). flag: the option the user
    names checkpoints with (`CHECKPOINT_FLAGS`), for the message.

    `progress(bytes_done, None)` is called about twice a second with the bytes received so far.
    Offline or on any failure, raises one SSAError saying which file to put where; no partial
    file is left.
    """
    import threading

    from torch.hub import download_url_to_file

    url = CHECKPOINT_URL + CHECKPOINT_FILES[model_type]
    dest.parent.mkdir(parents=True, exist_ok=True)
    finished = threading.Event()

    def report() -> None:  # torch's own bar is tqdm on stderr; ours is the caller's callback
        while not finished.wait(0.5):
            sizes = [p.stat().st_size for p in dest.parent.glob(dest.name + ".*.partial")]
            if sizes:
                progress(max(sizes), None)

    watcher = threading.Thread(target=report, daemon=True) if progress else None
    if watcher:
        watcher.start()
    try:
        download_url_to_file(url, str(dest), progress=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise SSAError(
            f"SAM checkpoint {dest} is missing and could not be downloaded ({exc}); "
            f"download {url} and put it at {dest}, or pass {_give_file(model_type, flag)}"
        ) from None
    finally:
        finished.set()
        if watcher:
            watcher.join()
    if progress:
        size = dest.stat().st_size
        progress(size, size)
    return dest


def check_checkpoint(
    model_type: str, checkpoint: str | Path | None, flag: str = "--sam-checkpoint"
) -> None:
    """`ensure_checkpoint`'s refusals without its download: an explicit file that does not
    exist, or the official file missing while downloads are off."""
    if checkpoint is not None or _downloads_off():
        path = default_checkpoint(model_type) if checkpoint is None else None
        if path is None or not path.is_file():
            ensure_checkpoint(model_type, checkpoint, flag=flag)


def _downloads_off() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("SSA_OFFLINE") == "1"


def ensure_checkpoint(
    model_type: str,
    checkpoint: str | Path | None,
    progress: Callable[[int, int | None], None] | None = None,
    flag: str = "--sam-checkpoint",
) -> Path:
    """The checkpoint path to load: the given one (must exist) or the official file in ckp/,
    downloaded there on first use. flag: the option `checkpoint` came from
    (`CHECKPOINT_FLAGS`); messages name it."""
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            subject = f"--masks sam:{model_type}:{path}: {path}" if flag == "--masks" else \
                f"--sam-checkpoint {path}"
            raise SSAError(
                f"{subject} {what}; pass the path "
                f"of a SAM .pth file (official files: {', '.join(CHECKPOINT_FILES.values())}; "
                f"or a small random one: python scripts/tiny_models.py ckp/tiny)"
            )
        return path
    path = default_checkpoint(model_type)
    if path.is_file():
        return path
    if _downloads_off():
        raise SSAError(
            f"SAM checkpoint {path} is missing and downloads are off (offline); download "
            f"{CHECKPOINT_URL + CHECKPOINT_FILES[model_type]} and put it at {path}"
        )
    return download_checkpoint(model_type, path, progress, flag)


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
    """An untrained SAM with the given image encoder and the standard prompt encoder/decoder:
    segment-anything's own builder (`_build_sam`, behind `sam_model_registry`) for the official
    geometry (1024 px input, window 14, 256 channels), any width and depth; the same modules
    with the other input size, window or channel count otherwise (checkpoints trained so)."""
    from segment_anything.build_sam import _build_sam

    if (cfg.image_size, cfg.window_size, cfg.out_chans) == (1024, 14, 256):
        return _build_sam(cfg.embed_dim, cfg.depth, cfg.num_heads, list(cfg.global_attn_indexes))
    return _build_custom_sam(cfg)


def _build_custom_sam(cfg: EncoderConfig):
    """`_build_sam`'s modules with `cfg`'s input size, window size and channels."""
    from functools import partial

    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = cfg.image_size // 16
    encoder = ImageEncoderViT(
        depth=cfg.depth, embed_dim=cfg.embed_dim, img_size=cfg.image_size, mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg.num_heads, patch_size=16,
        qkv_bias=True, use_rel_pos=True, global_attn_indexes=cfg.global_attn_indexes,
        window_size=cfg.window_size, out_chans=cfg.out_chans,
    )
    prompt = PromptEncoder(embed_dim=cfg.out_chans, image_embedding_size=(grid, grid),
                           input_image_size=(cfg.image_size, cfg.image_size), mask_in_chans=16)
    decoder = MaskDecoder(
        num_multimask_outputs=3, transformer_dim=cfg.out_chans, iou_head_depth=3,
        iou_head_hidden_dim=256,
        transformer=TwoWayTransformer(depth=2, embedding_dim=cfg.out_chans, mlp_dim=2048,
                                      num_heads=8),
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def load_sam(
    model_type: str, checkpoint: str | Path, device: str = "cpu", flag: str = "--sam-checkpoint"
):
    """Load a SAM checkpoint (`weights_only=True`) into a model sized from the file itself.

    A file whose encoder is one of the official sizes but not `model_type` is refused. flag:
    the option the checkpoint came from (`CHECKPOINT_FLAGS`), for messages.
    """
    import torch

    if model_type not in SAM_ENCODERS:
        raise SSAError(
            f"unknown --sam-model {model_type!r}{did_you_mean(model_type, SAM_ENCODERS)}; "
            f"choose one of: {', '.join(SAM_ENCODERS)}"
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
            fix = f"write --masks sam:{name}:{checkpoint}" if flag == "--masks" else \
                f"pass --sam-model {name}"
            raise SSAError(
                f"{named(model_type, checkpoint, flag)} holds a {name} model, not {model_type}; "
                f"{fix}"
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


def check_sam_shape(
    size: tuple[int, int], target: int, crop_n_layers: int = 0, crop_overlap_ratio: float = 0.0
) -> None:
    """Refuse (one SSAError line, that image fails) an image SAM cannot take: SAM resizes the
    image, and each crop of its crop layers, to `target` pixels on the long side, and a side
    that rounds to 0 pixels there (an aspect ratio beyond about 2 x target : 1, such as a
    1x20000 strip) fails inside segment-anything's resize."""
    from segment_anything.utils.amg import generate_crop_boxes
    from segment_anything.utils.transforms import ResizeLongestSide

    height, width = size
    boxes, _ = generate_crop_boxes((height, width), crop_n_layers, crop_overlap_ratio)
    for x0, y0, x1, y1 in boxes:
        if x1 <= x0 or y1 <= y0:
            raise SSAError(
                f"image of {width}x{height} pixels is too small for --amg crop_n_layers "
                f"{crop_n_layers} (one of its crops is empty); leave crop_n_layers out for it"
            )
        h, w = ResizeLongestSide.get_preprocess_shape(y1 - y0, x1 - x0, target)
        if h < 1 or w < 1:
            where = "" if (x0, y0, x1, y1) == (0, 0, width, height) else (
                f" (its {x1 - x0}x{y1 - y0} crop of --amg crop_n_layers)")
            raise SSAError(
                f"image of {width}x{height} pixels is too elongated for SAM{where}: its short "
                f"side becomes 0 pixels at SAM's {target}-pixel input (at most about "
                f"{2 * target}:1); crop or pad the image, or give its masks with --masks json:"
            )


class SamMaskSource:
    """SAM's automatic mask generator as a `MaskSource`: `generate(image) -> MaskResult`.

    sam: a `segment_anything.modeling.Sam` (`load_sam`); settings: generator keywords
    (`resolve_amg`). impl: `"fast"` (`ssa.masks.fast_amg.FastMaskGenerator`, the same masks
    without the stock work outside the network) or `"stock"` (segment-anything's
    `SamAutomaticMaskGenerator`).
    """

    def __init__(self, sam, impl: str = "fast", **settings: Any) -> None:
        self.settings = dict(settings)
        self.impl = impl
        if impl == "fast":
            from ssa.masks.fast_amg import FastMaskGenerator

            self.generator = FastMaskGenerator(sam, output_mode="binary_mask", **settings)
        elif impl == "stock":
            from segment_anything import SamAutomaticMaskGenerator

            self.generator = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **settings)
        else:
            raise SSAError(f"unknown --amg-impl {impl!r}{did_you_mean(impl, AMG_IMPLS)}; "
                           f"choose one of: {', '.join(AMG_IMPLS)}")

    @property
    def stats(self) -> Any:
        """The fast generator's `Stats` of the last image (candidates, what each filter
        dropped); None for the stock generator."""
        return getattr(self.generator, "stats", None)

    def generate_records(self, image: np.ndarray) -> list[dict[str, Any]]:
        """The generator's own records for `image` (`HWC uint8 RGB`), `segmentation` `HW bool`."""
        import torch

        with torch.inference_mode():
            return self.generator.generate(image)

    def generate(self, image: np.ndarray, *, path: Path | None = None) -> MaskResult:
        """Records with COCO RLE `segmentation` (`counts` str) and the `(N, H, W) bool` mask
        stack (on the model's device for the fast generator, RLE encoded once there)."""
        import torch

        from ssa.masks.base import result_from_records

        check_sam_shape(image.shape[:2], self.generator.predictor.model.image_encoder.img_size,
                        self.generator.crop_n_layers, self.generator.crop_overlap_ratio)
        with torch.inference_mode():
            if self.impl == "fast":
                out = self.generator.generate_masks(image)
                return MaskResult(out.records, out.masks)
            records = self.generator.generate(image)
        return result_from_records(records, image.shape[:2])




class SamPromptSource:
    """segment-anything's `SamPredictor` as a `PromptableMaskSource` (clicks and boxes)."""

    def __init__(self, sam, precision: str = "fp32", compile: bool = False) -> None:
        """precision: the encoder and decoder under `ssa.precision.autocast` (fp32: exact);
        compile: `torch.compile` the image encoder (the cost of a click is the decoder's)."""
        import torch
        from segment_anything import SamPredictor

        if compile:
            sam.image_encoder = torch.compile(sam.image_encoder)
        self.predictor = SamPredictor(sam)
        self.precision = precision

    def _autocast(self):
        from ssa.precision import autocast

        return autocast(self.predictor.device, self.precision)

    def set_image(self, image: np.ndarray) -> None:
        """Run the image encoder once on `image` (`HWC uint8 RGB`)."""
        import torch

        check_sam_shape(image.shape[:2], self.predictor.model.image_encoder.img_size)
        with torch.inference_mode(), self._autocast():
            self.predictor.set_image(image, image_format="RGB")

    def reset_image(self) -> None:
        self.predictor.reset_image()

    def predict(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        box: np.ndarray | None,
        multimask: bool = True,
    ) -> MaskResult:
        """points `(N, 2)` XY pixels, labels `(N,)` 1/0, box `(4,)` XYXY pixels -> SAM's masks
        (three with `multimask`) in its output order; records with COCO RLE `segmentation`,
        `area`, `bbox` (`XYWH`), `predicted_iou`."""
        import torch
        from segment_anything.utils.amg import batched_mask_to_box

        from ssa import io

        with torch.inference_mode(), self._autocast():
            masks, ious, _ = self.predictor.predict(
                point_coords=points, point_labels=labels, box=box, multimask_output=multimask
            )
        ious = np.asarray(ious, dtype=np.float32)  # scores compared in fp32
        with torch.inference_mode():
            stack = torch.from_numpy(masks)
            xyxy = batched_mask_to_box(stack)
            # XYWH as SAM's generator writes it (w = x1 - x0 with inclusive x1; zeros when empty).
            boxes = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1).tolist()
        areas = stack.flatten(1).sum(1).tolist()
        records = [
            {"segmentation": rle, "area": int(area), "bbox": [int(v) for v in bbox],
             "predicted_iou": float(iou)}
            for rle, area, bbox, iou in zip(io.encode_rle(masks), areas, boxes, ious.tolist())
        ]
        return MaskResult(records, stack)


def load_sam_source(
    model_type: str,
    checkpoint: str | Path | None,
    device: str,
    settings: dict[str, Any],
    impl: str = "fast",
    progress: Callable[[int, int | None], None] | None = None,
    flag: str = "--sam-checkpoint",
) -> SamMaskSource:
    """`sam:<model>[:<checkpoint>]`: the checkpoint found (or downloaded), loaded, and wrapped.
    flag: the option `checkpoint` came from (`CHECKPOINT_FLAGS`), for messages."""
    path = ensure_checkpoint(model_type, checkpoint, progress, flag)
    return SamMaskSource(load_sam(model_type, path, device, flag), impl=impl, **settings)


def load_sam_prompt_source(
    model_type: str,
    checkpoint: str | Path | None,
    device: str,
    progress: Callable[[int, int | None], None] | None = None,
    precision: str = "fp32",
    compile: bool = False,
    flag: str = "--sam-checkpoint",
) -> SamPromptSource:
    """`sam:<model>[:<checkpoint>]` for prompts (`ssa predict`). flag: the option `checkpoint`
    came from (`CHECKPOINT_FLAGS`), for messages."""
    path = ensure_checkpoint(model_type, checkpoint, progress, flag)
    return SamPromptSource(load_sam(model_type, path, device, flag), precision, compile)
