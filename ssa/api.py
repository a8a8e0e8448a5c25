"""The Python API in one call per job, on the same plans as the command line.

    import ssa
    records = ssa.predict("street.jpg", points=[(120, 80)], masks="sam:vit_b",
                          segmentor="hf:nvidia/segformer-b0-finetuned-ade-512-512")

For whole datasets: `ssa.run.runner.run_rank(ssa.plan.plan_run(ssa.config.RunConfig(...)))`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def predict(
    image: str | Path | np.ndarray,
    points: Any = None,
    labels: Any = None,
    box: Any = None,
    *,
    masks: str | None = None,
    sam_model: str = "vit_h",
    sam_checkpoint: str | Path | None = None,
    segmentor: str | None = None,
    dataset: str = "folder",
    device: str | None = None,
    top_k: int = 3,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """One-call form: load the models, label one prompt on one image (a path or `HWC uint8 RGB`).

    Returns the records of `SemanticPredictor.predict`, whole -> subpart. For several prompts on
    one image, build a `SemanticPredictor` (or `build_predictor`) and call `set_image` once.
    """
    from ssa.config import RunConfig, validated
    from ssa.io import read_image
    from ssa.plan import plan_predict
    from ssa.run.predictor import build_predictor

    array = read_image(image) if isinstance(image, (str, Path)) else np.asarray(image)
    cfg = validated(
        RunConfig, dataset=dataset, masks=masks, sam_model=sam_model,
        sam_checkpoint=Path(sam_checkpoint) if sam_checkpoint is not None else None,
        segmentor=segmentor, device=device, top_k=top_k, precision=precision,
    )
    predictor = build_predictor(plan_predict(cfg))
    predictor.set_image(array, Path(image).name if isinstance(image, (str, Path)) else None)
    return predictor.predict(points=points, labels=labels, box=box)
