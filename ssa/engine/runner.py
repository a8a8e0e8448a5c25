"""`ssa engine` over a folder: list images, skip the done ones, get masks (any mask source:
`--masks SPEC`, SAM by default), name them, write `<stem>_semantic.json` (and `<stem>_vis.jpg`) mirroring each image's
relative path under the output folder; a failing image is recorded and the run goes on.

Under torchrun (or any launcher setting RANK/WORLD_SIZE) the images still to do are sharded
across the ranks exactly as `ssa run` shards them (`ssa.distributed.shard`), with the same
resume, clean-up and failure report (`ssa.run.runner.dataset_loop`, `ssa.run.prefetch`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssa import io
from ssa.run.outputs import ImageResult
from ssa.run.runner import RunSummary

if TYPE_CHECKING:
    from ssa.plan import EnginePlan


class EngineRun:
    """The loaded mask source and labeller of a run, an `ssa.run.labeller.ImageLabeller`:
    `label(image, rel)` names one image's masks, `write(out, paths, image)` writes them."""

    def __init__(
        self, plan: EnginePlan,
        download_progress: Callable[[int, int | None], None] | None = None,
    ) -> None:
        from ssa.engine.labeller import EngineLabeller
        from ssa.run.labeller import build_mask_source

        self.plan = plan
        labeller = EngineLabeller(dict(plan.models), plan.device, plan.batch_size, plan.top_k,
                                  plan.use_spacy, plan.precision)
        self.mask_source = build_mask_source(plan.masks, plan.device, download_progress)
        self.labeller = labeller
        self.model_ids = dict(plan.models)

    def label(self, image: np.ndarray, rel: Path | None = None) -> dict[str, Any]:
        """The mask source's masks of `image` (`HWC uint8 RGB`), each named."""
        masks = self.mask_source.generate(image, path=None if rel is None else Path(rel))
        return self.labeller.label(image, masks)

    def write(self, out: dict[str, Any], paths: dict[str, Path], image: np.ndarray) -> int:
        """The overlay first, then the JSON last (it marks the image as done); returns the
        number of masks."""
        annotations = out["annotations"]
        if self.plan.outputs.save_vis:
            write_engine_overlay(paths["vis"], image, out["masks"], annotations)
        io.write_json(
            paths["semantic"],
            {
                "image": {"height": image.shape[0], "width": image.shape[1]},
                "annotations": annotations,
                "engine": {"top_k": self.plan.top_k, "models": self.model_ids},
            },
        )
        return len(annotations)

    def process(self, root: Path, rel: Path) -> ImageResult:
        """Label and write one image (`ssa.run.labeller.process_image`)."""
        from ssa.run.labeller import process_image

        return process_image(self, root, rel, self.plan.outputs.out_dir)


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
    plan: EnginePlan,
    on_start: Callable[[int, int, int], None] | None = None,
    on_image: Callable[[ImageResult], None] | None = None,
    download_progress: Callable[[int, int | None], None] | None = None,
    group: Any = None,
) -> RunSummary:
    """Name the masks of every image of the plan that is not done yet; callbacks, sharding over
    `group` (an `ssa.distributed.Group`, or none for one process), the record of the out-dir and
    the returned summary (all ranks) as in `ssa.run.runner.label_dataset`."""
    from ssa.run import record
    from ssa.run.prefetch import process_overlapped
    from ssa.run.runner import dataset_loop
    from ssa.specs.masks import prepare_mask_source

    out_dir = plan.outputs.out_dir
    root, rels = plan.images.root, list(plan.images.rels)
    main = group is None or group.info.is_main

    def begin() -> None:  # rank 0, once the models loaded, before any rank writes
        if main:
            record.write_record(out_dir, dict(plan.settings), plan.images.data_dir,
                                dict(plan.listing), None)

    def make_worker() -> Any:  # a `ssa.run.runner.Worker`
        engine = EngineRun(plan, download_progress)
        return lambda mine, on_result: process_overlapped(engine, root, mine, out_dir, on_result)

    return dataset_loop(
        out_dir, rels, make_worker, None,
        lambda: prepare_mask_source(plan.masks.spec, download_progress), on_start, on_image,
        group, begin=begin,
    )
