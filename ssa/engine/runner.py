"""`ssa engine` over a folder: list images, skip the done ones, get masks (any mask source:
`--masks SPEC`, SAM by default), name them, write `<stem>_semantic.json` (and `<stem>_vis.jpg`) mirroring each image's
relative path under the output folder; a failing image is recorded and the run goes on.

Under torchrun (or any launcher setting RANK/WORLD_SIZE) the images still to do are sharded
across the ranks exactly as `ssa run` shards them (`ssa.distributed.shard`), with the same
resume, clean-up and failure report (`ssa.run.runner.dataset_loop`, `ssa.run.prefetch`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssa import io
from ssa.config import MaskBranchConfig, PositiveInt
from ssa.errors import SSAError
from ssa.run.outputs import ImageResult
from ssa.run.runner import RunSummary


@dataclass
class EngineConfig(MaskBranchConfig):
    """Everything `ssa engine` needs. The mask branch's fields are `MaskBranchConfig`'s
    (amg_preset None: "default"). `models` maps roles (see `ssa.engine.models.ROLES`) to hub
    ids or folders; missing roles take the (light) defaults. Build it with
    `ssa.config.validated(EngineConfig, values)` to have every value type-checked."""

    data_dir: Path | None = None
    out_dir: Path | None = None
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
    from ssa.specs.masks import check_mask_source, mask_settings, spec_from_config

    check_mask_source(spec_from_config(cfg))  # a missing file before the knobs (they import)
    mask_settings(cfg)


def list_engine_images(cfg: EngineConfig) -> tuple[Path, list[Path]]:
    from ssa.datasets import select_images

    return select_images("folder", cfg.data_dir, None, cfg.limit, cfg.out_dir)


class EngineRun:
    """The loaded mask source and labeller of a run, an `ssa.run.labeller.ImageLabeller`:
    `label(image, rel)` names one image's masks, `write(out, paths, image)` writes them."""

    def __init__(
        self, cfg: EngineConfig, download_progress: Callable[[int, int | None], None] | None = None
    ) -> None:
        from ssa.engine.labeller import EngineLabeller
        from ssa.engine.models import resolve_models
        from ssa.run.labeller import build_mask_source
        from ssa.specs.masks import mask_settings

        self.cfg = cfg
        device = cfg.resolved_device()
        models = resolve_models(cfg.models, cfg.light)
        mask_settings(cfg)  # the knobs checked before any model loads
        labeller = EngineLabeller(models, device, cfg.batch_size, cfg.top_k, cfg.use_spacy)
        self.mask_source = build_mask_source(cfg, device, "default", download_progress)
        self.labeller = labeller
        self.model_ids = models

    def label(self, image: np.ndarray, rel: Path | None = None) -> dict[str, Any]:
        """The mask source's masks of `image` (`HWC uint8 RGB`), each named."""
        masks = self.mask_source.generate(image, path=None if rel is None else Path(rel))
        return self.labeller.label(image, masks)

    def write(self, out: dict[str, Any], paths: dict[str, Path], image: np.ndarray) -> int:
        """The overlay first, then the JSON last (it marks the image as done); returns the
        number of masks."""
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
        return len(annotations)

    def process(self, root: Path, rel: Path) -> ImageResult:
        """Label and write one image (`ssa.run.labeller.process_image`)."""
        from ssa.run.labeller import process_image

        return process_image(self, root, rel, Path(self.cfg.out_dir))


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
    as in `ssa.run.runner.label_dataset`."""
    from ssa.run.prefetch import process_overlapped
    from ssa.run.runner import dataset_loop
    from ssa.specs.masks import mask_settings, prepare_mask_source

    check_engine(cfg)
    out_dir = Path(cfg.out_dir)
    root, rels = list_engine_images(cfg)
    spec, _ = mask_settings(cfg)

    def make_worker() -> Any:  # a `ssa.run.runner.Worker`
        engine = EngineRun(cfg, download_progress)
        return lambda mine, on_result: process_overlapped(engine, root, mine, out_dir, on_result)

    return dataset_loop(
        out_dir, rels, make_worker, False, lambda: prepare_mask_source(spec, download_progress),
        on_start, on_image, group,
    )
