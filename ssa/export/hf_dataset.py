"""`hf-dataset`: a Hugging Face `datasets` dataset of the run, one row per image, written with
`save_to_disk` (an `--out` folder) or as one parquet file (an `--out` ending in `.parquet`).

Columns: `image` (`Image`, the image file's bytes), `label` (`Image`, the label map PNG: class
index 0..C-1 per pixel, 255 = no label, 16-bit when C > 255), `file_name` (the image's path
relative to the image folder) and `classes` (`List(ClassLabel(names=<class list>))`, the
classes present in the image), so the class names travel with the data:
`ds.features["classes"].feature.names`. One process writes it (no `--world-size`); rows go
through the `datasets` Arrow writer in batches, so memory stays flat.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ssa.errors import SSAError
from ssa.export.base import OWNER_KEY, Exporter, ExportPlan, owner_record, read_run_image


def _label_png(label: np.ndarray, num_classes: int) -> bytes:
    from io import BytesIO

    from PIL import Image

    arr = label.astype(np.uint8 if num_classes <= 255 else np.uint16)
    buf = BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def rows(plan: ExportPlan, on_image: Any = None):
    """One dict per image, in order (the generator `Dataset.from_generator` consumes)."""
    for item in plan.items:
        image = read_run_image(plan, item)
        label = image.label_map()
        present = sorted(int(c) for c in np.unique(label) if 0 <= c < plan.num_classes)
        label_bytes = item.png.read_bytes() if item.png.is_file() else _label_png(
            label, plan.num_classes)
        yield {
            "image": {"bytes": Path(item.image).read_bytes(), "path": item.rel.name},
            "label": {"bytes": label_bytes, "path": f"{item.stem_rel.name}_semantic.png"},
            "file_name": item.rel.as_posix(),
            "classes": present,
        }
        if on_image is not None:
            on_image(item)


def features(class_names: list[str]) -> Any:
    from datasets import ClassLabel, Features, Image, Value

    try:
        from datasets import List  # datasets >= 4
    except ImportError:
        from datasets import Sequence as List
    return Features({
        "image": Image(),
        "label": Image(),
        "file_name": Value("string"),
        "classes": List(ClassLabel(names=list(class_names))),
    })  # fmt: skip


def write_parquet(ds: Any, path: Path, plan: ExportPlan) -> None:
    """`ds` as one parquet file, as `Dataset.to_parquet` writes it (its `huggingface` features
    metadata kept, so `load_dataset("parquet")` gets the same features) plus ssa's ownership
    mark (`OWNER_KEY`), written in row groups of 100 images."""
    import pyarrow.parquet as pq

    table = ds.data.table
    metadata = dict(table.schema.metadata or {})
    metadata[OWNER_KEY.encode()] = json.dumps(owner_record(plan), allow_nan=False).encode()
    schema = table.schema.with_metadata(metadata)
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in table.to_batches(max_chunksize=100):
            writer.write_batch(batch)


class HfDataset(Exporter):
    name = "hf-dataset"
    needs_images = True
    shardable = False
    streams_itself = True  # the runner hands it the whole plan (no per-image parts)

    def check(self, plan: ExportPlan) -> None:
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise SSAError(
                "--format hf-dataset needs the datasets package; pip install 'ssa[export]'"
            ) from None

    def write_all(self, plan: ExportPlan, staging: Path, on_image: Any = None) -> Path:
        import uuid

        from datasets import Dataset
        from datasets.exceptions import DatasetGenerationError
        from datasets.utils import logging as ds_logging

        bars = ds_logging.is_progress_bar_enabled()
        ds_logging.disable_progress_bar()  # the caller shows its own progress
        try:
            # A fresh cache in the staging folder; the fingerprint is given because the
            # callbacks in gen_kwargs need not pickle (datasets hashes what it is not given).
            try:
                ds = Dataset.from_generator(
                    rows, features=features(plan.class_names), cache_dir=str(staging / "cache"),
                    gen_kwargs={"plan": plan, "on_image": on_image},
                    fingerprint=uuid.uuid4().hex,
                )
            except DatasetGenerationError as exc:
                # datasets wraps what `rows` raised (a refused file, a failed write): unwrap it,
                # so it is the one line it was, not datasets' traceback.
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, (SSAError, OSError)):
                    raise cause from None
                raise
            if Path(plan.cfg.out).suffix == ".parquet":
                path = staging / "data.parquet"
                write_parquet(ds, path, plan)
            else:
                path = staging / "dataset"
                ds.save_to_disk(str(path))
            del ds
        finally:
            if bars:
                ds_logging.enable_progress_bar()
        return path
