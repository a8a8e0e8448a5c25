"""`ssa engine` over a folder: list images, skip the done ones, get masks (SA-1B JSON files or
SAM), name them, write `<stem>_semantic.json` (and `<stem>_vis.jpg`) mirroring each image's
relative path under the output folder; a failing image is recorded and the run goes on.

Under torchrun (or any launcher setting RANK/WORLD_SIZE) the images still to do are sharded
across the ranks exactly as `ssa run` shards them (`ssa.distributed.shard`), with the same
resume, clean-up and failure report (`ssa.pipeline`'s helpers)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssa import io
from ssa.config import PositiveInt
from ssa.errors import FatalError, SSAError
from ssa.pipeline import ImageResult, RunSummary, output_paths


@dataclass
class EngineConfig:
    """Everything `ssa engine` needs. `models` maps roles (see `ssa.engine.models.ROLES`) to hub
    ids or folders; missing roles take the (light) defaults. Build it with
    `ssa.config.validated(EngineConfig, values)` to have every value type-checked."""

    data_dir: Path | None = None
    out_dir: Path | None = None
    masks_dir: Path | None = None
    sam_model: str = "vit_h"
    sam_checkpoint: Path | None = None
    amg_preset: str = "default"
    amg: dict[str, Any] = field(default_factory=dict)
    models: dict[str, str | None] = field(default_factory=dict)
    light: bool = False
    top_k: PositiveInt = 3
    batch_size: PositiveInt = 16
    save_vis: bool = False
    device: str | None = None
    limit: PositiveInt | None = None
    use_spacy: bool = True

    def resolved_device(self) -> str:
        from ssa.config import RunConfig

        return RunConfig(device=self.device).resolved_device()


def check_engine(cfg: EngineConfig) -> None:
    """The checks that need no model (before workers start, so one message, not N)."""
    from ssa.engine.models import resolve_models

    if cfg.out_dir is None:
        raise SSAError("--out-dir is required; pass the folder for the outputs")
    if cfg.top_k < 1:
        raise SSAError(f"--top-k {cfg.top_k} must be at least 1")
    if cfg.batch_size < 1:
        raise SSAError(f"--batch-size {cfg.batch_size} must be at least 1")
    list_engine_images(cfg)
    io.check_writable(cfg.out_dir)
    resolve_models(cfg.models, cfg.light)
    if cfg.masks_dir is not None and not Path(cfg.masks_dir).is_dir():
        raise SSAError(
            f"--masks {cfg.masks_dir} is not a folder; pass the folder of <stem>.json files"
        )
    if cfg.masks_dir is None and cfg.sam_checkpoint is not None:
        from ssa.masks import ensure_checkpoint

        ensure_checkpoint(cfg.sam_model, cfg.sam_checkpoint)  # an explicit path: checks it exists


def list_engine_images(cfg: EngineConfig) -> tuple[Path, list[Path]]:
    from ssa.pipeline import select_images

    return select_images("folder", cfg.data_dir, None, cfg.limit, cfg.out_dir)


class EngineRun:
    """The loaded mask source and labeller of a run: `process(root, rel)` does one image."""

    def __init__(
        self, cfg: EngineConfig, download_progress: Callable[[int, int | None], None] | None = None
    ) -> None:
        from ssa.engine.labeller import EngineLabeller
        from ssa.engine.models import resolve_models

        self.cfg = cfg
        device = cfg.resolved_device()
        models = resolve_models(cfg.models, cfg.light)
        settings: dict[str, Any] = {}
        if cfg.masks_dir is None:
            from ssa.masks import resolve_amg

            settings = resolve_amg(cfg.amg_preset, cfg.amg)
            self.json_masks = None
        else:
            from ssa.masks import JsonMasks

            self.json_masks = JsonMasks(cfg.masks_dir)
        labeller = EngineLabeller(models, device, cfg.batch_size, cfg.top_k, cfg.use_spacy)
        if cfg.masks_dir is None:
            from ssa.masks import MaskGenerator, ensure_checkpoint, load_sam

            checkpoint = ensure_checkpoint(cfg.sam_model, cfg.sam_checkpoint, download_progress)
            self.generator = MaskGenerator(load_sam(cfg.sam_model, checkpoint, device), **settings)
        self.labeller = labeller
        self.model_ids = models

    def records(self, image: np.ndarray, rel: Path) -> list[dict[str, Any]]:
        """SAM's records, or those of the image's SA-1B JSON (`segmentation` as `HW bool`)."""
        if self.json_masks is not None:
            return self.json_masks.generate(image, path=rel)
        return self.generator.generate(image)

    def write(self, out: dict[str, Any], paths: dict[str, Path], image: np.ndarray) -> None:
        """The overlay first, then the JSON last (it marks the image as done)."""
        annotations = out["annotations"]
        if self.cfg.save_vis:
            write_engine_overlay(paths["vis"], image, out["masks"], annotations)
        io.write_json(
            paths["semantic"],
            {
                "image": {"height": image.shape[0], "width": image.shape[1]},
                "annotations": annotations,
                "engine": {"top_k": self.cfg.top_k, "models": self.model_ids},
            },
        )

    def process(self, root: Path, rel: Path) -> ImageResult:
        """Label and write one image; a failure is returned, not raised (a FatalError, which
        every image would hit, stops the run)."""
        import torch

        from ssa.pipeline import _error_message

        start = time.perf_counter()
        stage = "read"
        oom = False
        try:
            image = io.read_image(root / rel)
            stage = "masks"
            records = self.records(image, rel)
            stage = "label"
            out = self.labeller.label(image, records)
            stage = "write"
            self.write(out, output_paths(Path(self.cfg.out_dir), rel), image)
        except FatalError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolation: one image never stops the run
            oom = isinstance(exc, torch.cuda.OutOfMemoryError)
            if not isinstance(exc, SSAError) and not oom:
                traceback.print_exc()
            result = ImageResult(rel, "failed", stage=stage, error=_error_message(exc),
                                 seconds=time.perf_counter() - start)
        else:
            return ImageResult(rel, "done", num_masks=len(out["annotations"]),
                               seconds=time.perf_counter() - start)
        if oom:  # the exception (and the tensors its frames held) is gone now
            torch.cuda.empty_cache()
        return result


def write_engine_overlay(
    path: Path, image: np.ndarray, masks: np.ndarray, annotations: list[dict[str, Any]]
) -> None:
    """Masks painted (largest first) in one colour per distinct name, outlined and named."""
    import torch

    from ssa.datasets import default_palette
    from ssa.voting import NO_CLASS, paint

    names = [a["class_name"] for a in annotations]
    vocab = sorted({n for n in names if n is not None})
    ids = torch.tensor([vocab.index(n) if n is not None else NO_CLASS for n in names])
    base = torch.full(image.shape[:2], 255, dtype=torch.int64)
    label_map = paint(torch.from_numpy(masks), ids, base).numpy() if len(masks) else base.numpy()
    io.write_overlay(path, image, label_map, default_palette(max(1, len(vocab))), masks, names)


def run_engine(
    cfg: EngineConfig,
    on_start: Callable[[int, int, int], None] | None = None,
    on_image: Callable[[ImageResult], None] | None = None,
    download_progress: Callable[[int, int | None], None] | None = None,
    group: Any = None,
) -> RunSummary:
    """Name the masks of every image that is not done yet; callbacks, sharding over `group`
    (an `ssa.distributed.Group`, or none for one process) and the returned summary (all ranks)
    as in `ssa.pipeline.run`."""
    from ssa.pipeline import run_images

    check_engine(cfg)
    out_dir = Path(cfg.out_dir)
    root, rels = list_engine_images(cfg)

    def make_worker() -> Callable[[list[Path]], Iterable[ImageResult]]:
        engine = EngineRun(cfg, download_progress)
        return lambda mine: (engine.process(root, rel) for rel in mine)

    sam = None if cfg.masks_dir is not None else (cfg.sam_model, cfg.sam_checkpoint)
    return run_images(
        out_dir, rels, make_worker, False, sam, on_start, on_image, download_progress, group
    )
