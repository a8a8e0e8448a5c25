"""`ssa export`: a finished run's labels in the formats dataset tools import.

One module per format (`coco_instances`, `coco_panoptic`, `cityscapes`, `label_studio`,
`hf_dataset`) on a shared base (`base`: reading the run, class list, refusals, atomic commit)
and the loop (`runner`). From Python:

    from ssa.export import export
    export("coco-instances", "outputs/run", "instances.json", data_dir="photos/")

or `ssa.export.runner.export(ExportConfig(...), on_start, on_image, group)` for callbacks and
a process group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ssa.export.base import ExportConfig
from ssa.export.runner import FORMATS, ExportSummary, check_export

__all__ = ["FORMATS", "ExportConfig", "ExportSummary", "check_export", "export"]


def export(format: str, pred_dir: str | Path, out: str | Path, **options: Any) -> ExportSummary:
    """Export the run in `pred_dir` as `format` to `out`; options are `ExportConfig`'s fields
    (`dataset`, `data_dir`, `split`, `classes`, `things`, `image_root_url`, `limit`,
    `allow_missing`, `overwrite`, `images`). Raises SSAError (one line) on a refusal."""
    from ssa.export import runner

    paths = {k: Path(v) if k in ("data_dir", "classes", "things", "images") and v is not None else v
             for k, v in options.items()}
    cfg = ExportConfig(format=format, pred_dir=Path(pred_dir), out=Path(out), **paths)
    return runner.export(cfg)
