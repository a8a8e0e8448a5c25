"""Output layout and documents: where each image's files go, when an image is done, the
`<stem>_semantic.json` document, and `failures.jsonl`.

Resume: every output is written under a temporary name and renamed into place, the JSON last,
so an image is done exactly when its JSON exists and parses.

Failures: an image that cannot be read or processed is a failed `ImageResult`, appended to
`<out-dir>/failures.jsonl` at once (one JSON line: path, stage, error). The file describes the
latest run: rank 0 removes it at the start (a run retries every image that is not done) and at
the end rewrites it from every rank's failures, sorted, one line per image; a run where nothing
failed leaves no file.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssa import io
from ssa.errors import SSAError

if TYPE_CHECKING:
    from ssa.voting import VoteResult

FAILURES_FILE = "failures.jsonl"
JSON_SUFFIX = "_semantic.json"  # <stem>_semantic.json: the per-image document (written last)
PNG_SUFFIX = "_semantic.png"  # <stem>_semantic.png: the label map


def output_paths(out_dir: Path, rel: Path) -> dict[str, Path]:
    """Where the outputs of the image at relative path `rel` go (mirroring `rel` under out_dir)."""
    base = Path(out_dir) / rel.parent
    return {
        "semantic": base / f"{rel.stem}{JSON_SUFFIX}",
        "label": base / f"{rel.stem}{PNG_SUFFIX}",
        "branch": base / f"{rel.stem}_branch.png",
        "vis": base / f"{rel.stem}_vis.jpg",
    }


def write_inside(write: Any, out_dir: Path, rel: Path, *args: Any) -> Any:
    """`write(*args)` for the image at `rel`, refusing (one line, that image's failure) a folder
    on its way under out_dir that is a symlink: ssa never writes through a planted link into a
    folder it does not own."""
    folder = Path(out_dir)
    for part in rel.parent.parts:
        folder = folder / part
        if folder.is_symlink():
            raise SSAError(
                f"{folder} is a symlink inside --out-dir; ssa does not write through links: "
                f"remove the link (or label that folder into its own --out-dir)"
            )
    return write(*args)


def is_done(out_dir: Path, rel: Path, since_ns: int | None = None) -> bool:
    """An image is done exactly when its JSON exists and parses (it is written last); with
    `since_ns` (an unfinished `--overwrite`, `ssa.run.record`), only a JSON written since then."""
    path = output_paths(out_dir, rel)["semantic"]
    try:
        if since_ns is not None and path.stat().st_mtime_ns < since_ns:
            return False
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


@dataclass
class ImageResult:
    """What became of one image. status: "done" | "skipped" | "failed"; stage (failed only):
    "read" | "label" | "write"; error: the one-line message."""

    rel: Path
    status: str
    num_masks: int = 0
    seconds: float = 0.0
    stage: str | None = None
    error: str | None = None
    # The mask generator's candidates and what each filter dropped (`fast_amg.Stats`), if known.
    filters: dict[str, int] | None = None


def jsonable(value: Any) -> Any:
    """numpy/torch values (arrays, scalars) and tuples as JSON-ready Python values."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    torch = sys.modules.get("torch")  # a tensor means torch is loaded already
    if torch is not None and torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def annotations_from(
    records: list[dict[str, Any]],
    rles: list[dict[str, Any]],
    result: VoteResult,
    names: list[str],
) -> list[dict[str, Any]]:
    """SAM records with COCO RLE `segmentation`, plus `class_name` and `class_proposals`.

    An empty mask's scores that are 0/0 (SAM's `stability_score` with no pixel at either
    threshold, kept when `stability_score_thresh` is 0) are written as null: JSON has no NaN,
    and any other NaN or infinity fails the image when its JSON is written (`io.json_text`)."""
    import math

    from ssa.voting import NO_CLASS

    classes = result.classes.tolist()
    proposals = result.proposals.tolist()
    out = []
    for record, rle, cls, props in zip(records, rles, classes, proposals):
        ann = {k: jsonable(v) for k, v in record.items() if k != "segmentation"}
        if ann.get("area") == 0:
            ann = {k: None if isinstance(v, float) and math.isnan(v) else v
                   for k, v in ann.items()}
        ann["segmentation"] = rle
        ann["class_name"] = names[cls] if cls != NO_CLASS else None
        ann["class_proposals"] = [names[p] for p in props if p != NO_CLASS]
        out.append(ann)
    return out


def semantic_mask_rles(label_map: np.ndarray, num_classes: int) -> dict[str, dict[str, Any]]:
    """`{class_id: RLE}` for every class present in the final label map.

    From one run-length pass over the map in column-major order (COCO RLE's order), not a bool
    mask per class: memory grows with the map's pixels, not with pixels x classes.
    """
    from pycocotools import mask as mask_utils

    height, width = label_map.shape
    flat = np.asarray(label_map).T.reshape(-1)  # column-major pixel order
    if flat.size == 0:
        return {}
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    ends = np.append(starts[1:], flat.size)
    values = flat[starts]
    out = {}
    for c in np.unique(values):
        if not 0 <= c < num_classes:
            continue
        picked = values == c
        # Alternating runs of 0s and 1s, starting with 0s (possibly none), as pycocotools'.
        bounds = np.stack([starts[picked], ends[picked]], axis=1).reshape(-1)
        counts = np.diff(bounds, prepend=0)
        if bounds[-1] < flat.size:
            counts = np.append(counts, flat.size - bounds[-1])
        rle = mask_utils.frPyObjects({"counts": counts.tolist(), "size": [height, width]},
                                     height, width)
        rle["counts"] = rle["counts"].decode("ascii")
        out[str(int(c))] = rle
    return out


def semantic_document(
    image_size: tuple[int, int],
    annotations: list[dict[str, Any]],
    label_map: np.ndarray,
    class_names: list[str],
    original_size: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """The `<stem>_semantic.json` document (see DESIGN.md, "Contracts"); `original_size` is the
    input's `(H, W)` when it was labelled downsized (`--max-pixels`)."""
    size = {"height": int(image_size[0]), "width": int(image_size[1])}
    if original_size is not None:
        size["original_height"], size["original_width"] = (int(v) for v in original_size)
    return {
        "image": size,
        "annotations": annotations,
        "semantic_mask": semantic_mask_rles(label_map, len(class_names)),
        "class_names": class_names,
    }


def failure_record(result: ImageResult) -> dict[str, Any]:
    return {"path": result.rel.as_posix(), "stage": result.stage, "error": result.error}


def record_failure(out_dir: Path, result: ImageResult) -> None:
    """Append one line to failures.jsonl now (one `write` of one line in append mode, so lines
    from ranks on one machine do not interleave)."""
    import errno
    import os

    line = (json.dumps(failure_record(result), allow_nan=False) + "\n").encode()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_dir / FAILURES_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "No space left on device (short write)")
        finally:
            os.close(fd)
    except OSError as exc:  # a full disk fails every later image too: stop in one line
        raise io.write_error(out_dir / FAILURES_FILE, exc) from None


def read_failures(out_dir: Path) -> list[dict[str, Any]]:
    """The records in failures.jsonl (lines that do not parse, e.g. cut by a kill, are dropped)."""
    try:
        lines = (Path(out_dir) / FAILURES_FILE).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            out.append(record)
    return out


def write_failures(out_dir: Path, failed: list[ImageResult]) -> None:
    """Rewrite failures.jsonl as exactly `failed` (the run's failures from all ranks, one line
    per image, sorted by path); remove it when nothing failed."""
    path = Path(out_dir) / FAILURES_FILE
    if not failed:
        path.unlink(missing_ok=True)
        return
    records = [failure_record(r) for r in sorted(failed, key=lambda r: r.rel.as_posix())]
    io.write_text(path, "".join(io.json_text(r, path) + "\n" for r in records))  # one line on OSError
