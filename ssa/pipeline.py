"""The per-image flow (read -> mask branch -> semantic branch -> voting -> write) and the
dataset loop (shard across ranks, skip done images, isolate failures, report progress).

Resume: every output is written under a temporary name and renamed into place, the JSON last,
so an image is done exactly when its JSON exists and parses; a run removes the temporary files
a killed run left, skips done images and labels the rest.

Failures: an image that cannot be read or processed is returned as a failed `ImageResult`,
appended to `<out-dir>/failures.jsonl` at once (one JSON line: path, stage, error) and the run
goes on. The file describes the latest run: rank 0 removes it at the start (a run retries every
image that is not done) and at the end rewrites it from every rank's failures, sorted, one line
per image; a run where nothing failed leaves no file.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssa import io
from ssa.config import RunConfig
from ssa.datasets import DatasetSpec, get_dataset
from ssa.distributed import Group, shard, shard_indices
from ssa.errors import FatalError, SSAError
from ssa.voting import NO_CLASS, POLICIES, VoteResult, vote

FAILURES_FILE = "failures.jsonl"


def output_paths(out_dir: Path, rel: Path) -> dict[str, Path]:
    """Where the outputs of the image at relative path `rel` go (mirroring `rel` under out_dir)."""
    base = Path(out_dir) / rel.parent
    return {
        "semantic": base / f"{rel.stem}_semantic.json",
        "label": base / f"{rel.stem}_semantic.png",
        "branch": base / f"{rel.stem}_branch.png",
        "vis": base / f"{rel.stem}_vis.jpg",
    }


def is_done(out_dir: Path, rel: Path) -> bool:
    """An image is done exactly when its JSON exists and parses (it is written last)."""
    path = output_paths(out_dir, rel)["semantic"]
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


@dataclass
class ImageResult:
    rel: Path
    status: str  # "done" | "skipped" | "failed"
    num_masks: int = 0
    seconds: float = 0.0
    stage: str | None = None
    error: str | None = None


@dataclass
class RunSummary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0
    num_masks: int = 0
    removed_temps: int = 0  # temporary files a killed run had left


def annotations_from(
    records: list[dict[str, Any]],
    rles: list[dict[str, Any]],
    result: VoteResult,
    names: list[str],
) -> list[dict[str, Any]]:
    """SAM records with COCO RLE `segmentation`, plus `class_name` and `class_proposals`."""
    classes = result.classes.tolist()
    proposals = result.proposals.tolist()
    out = []
    for record, rle, cls, props in zip(records, rles, classes, proposals):
        ann = {k: _jsonable(v) for k, v in record.items() if k != "segmentation"}
        ann["segmentation"] = rle
        ann["class_name"] = names[cls] if cls != NO_CLASS else None
        ann["class_proposals"] = [names[p] for p in props if p != NO_CLASS]
        out.append(ann)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if torch.is_tensor(value):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def semantic_mask_rles(label_map: np.ndarray, num_classes: int) -> dict[str, dict[str, Any]]:
    """`{class_id: RLE}` for every class present in the final label map."""
    present = [int(c) for c in np.unique(label_map) if 0 <= c < num_classes]
    if not present:
        return {}
    rles = io.encode_rle(np.stack([label_map == c for c in present]))
    return {str(c): rle for c, rle in zip(present, rles)}


class Labeller:
    """Labels one image at a time: owns the mask source, the segmentor and the class names.

    mask_generator: `generate(image) -> records` (SAM, or `JsonMasks`); segmentor: a `Segmentor`.
    Either one that takes a `path` keyword gets the image's relative path (`accepts_path`).
    vote_policy: "hard" or "soft"; min_vote_share: see `ssa.voting`.
    """

    def __init__(
        self,
        mask_generator: Any,
        segmentor: Any,
        class_names: list[str],
        palette: np.ndarray,
        device: str = "cpu",
        top_k: int = 3,
        vote_policy: str = "hard",
        min_vote_share: float = 0.0,
    ) -> None:
        from ssa.segmentors.base import accepts_path

        self.mask_generator = mask_generator
        self.segmentor = segmentor
        self.class_names = class_names
        self.palette = palette
        self.device = torch.device(device)
        self.top_k = top_k
        self.vote_policy = vote_policy
        self.min_vote_share = min_vote_share
        self._masks_take_path = accepts_path(mask_generator.generate)
        self._segmentor_takes_path = accepts_path(segmentor)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def label(self, image: np.ndarray, rel: Path | None = None) -> dict[str, Any]:
        """image: `HWC uint8 RGB`; rel: its path relative to the image folder (for mask files
        and precomputed labels) -> records, RLEs, branch output and votes."""
        from ssa.segmentors.base import BranchOutput

        height, width = image.shape[:2]
        path_kw = {} if rel is None else {"path": Path(rel)}
        if hasattr(self.mask_generator, "generate_masks"):
            # RLE encoded once by the generator, masks left on its device (no HW bool list).
            records, masks = self.mask_generator.generate_masks(image)
            rles = [r["segmentation"] for r in records]
        else:
            records = self.mask_generator.generate(
                image, **(path_kw if self._masks_take_path else {})
            )
            stack = (np.stack([r["segmentation"] for r in records]) if records
                     else np.zeros((0, height, width), dtype=bool))
            masks, rles = torch.from_numpy(stack), io.encode_rle(stack)
        raw = self.segmentor(image, **(path_kw if self._segmentor_takes_path else {}))
        branch = BranchOutput.from_raw(raw, self.num_classes, (height, width), self.device)
        if self.vote_policy == "soft" and branch.scores is None:
            raise FatalError(
                f"--vote soft needs class scores but segmentor {type(self.segmentor).__name__} "
                f"gave (H, W) labels; use --vote hard, or return (C, H, W) scores"
            )
        masks = masks.to(self.device)
        areas = torch.tensor([int(r["area"]) for r in records], device=self.device)
        result = vote(
            masks,
            branch.labels,
            self.num_classes,
            self.top_k,
            areas=areas,
            scores=branch.scores,
            policy=self.vote_policy,
            min_vote_share=self.min_vote_share,
        )
        # masks: `(N, H, W) bool` tensor on the device (the overlay copies it to the CPU).
        return {"records": records, "masks": masks, "rles": rles, "branch": branch,
                "votes": result}

    def write(
        self, out: dict[str, Any], paths: dict[str, Path], image: np.ndarray, save_branch: bool,
        save_vis: bool,
    ) -> None:
        """Write the PNGs and the overlay, then the JSON last (it marks the image as done)."""
        # Redoing an image (--overwrite): it stops being done until its new JSON is in place.
        paths["semantic"].unlink(missing_ok=True)
        label_map = out["votes"].label_map.cpu().numpy()
        io.write_label_png(paths["label"], label_map, self.num_classes)
        if save_branch:
            io.write_label_png(paths["branch"], out["branch"].labels.cpu().numpy(), self.num_classes)
        annotations = annotations_from(out["records"], out["rles"], out["votes"], self.class_names)
        if save_vis:
            io.write_overlay(
                paths["vis"], image, label_map, self.palette, out["masks"].cpu().numpy(),
                [a["class_name"] for a in annotations],
            )
        io.write_json(
            paths["semantic"],
            {
                "image": {"height": image.shape[0], "width": image.shape[1]},
                "annotations": annotations,
                "semantic_mask": semantic_mask_rles(label_map, self.num_classes),
                "class_names": self.class_names,
            },
        )


def check_voting(cfg: RunConfig) -> None:
    """Refuse a bad policy before anything is loaded."""
    if cfg.vote not in POLICIES:
        raise SSAError(f"unknown --vote {cfg.vote!r}; choose one of: {', '.join(POLICIES)}")
    share = cfg.min_vote_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise SSAError(f"--min-vote-share {share!r} must be a number in [0, 1] (0 = off)")


def segmentor_classes(cfg: RunConfig, spec: DatasetSpec) -> list[str] | None:
    """The class names a `labels:` segmentor uses: `--classes FILE`, else the dataset's."""
    from ssa.segmentors.spec import parse_spec, read_classes_file

    kind = parse_spec(cfg.segmentor or "").kind
    if cfg.classes is not None:
        if kind != "labels":
            raise SSAError(
                f"--classes applies to labels: segmentors; {cfg.segmentor} names its own classes"
            )
        return read_classes_file(cfg.classes)
    if cfg.label_map is not None and kind != "labels":
        raise SSAError(f"--label-map applies to labels: segmentors only, not {cfg.segmentor}")
    return list(spec.classes) if spec.classes is not None else None


def resolve_classes(cfg: RunConfig, spec: DatasetSpec, segmentor: Any) -> list[str]:
    """The class names of the run, checking the segmentor's count against the dataset's."""
    from ssa.segmentors.base import check_num_classes, class_names

    names = class_names(segmentor)
    check_num_classes(names, spec.num_classes, cfg.segmentor or "")
    return list(spec.classes) if spec.classes is not None else names


def build_segmentor(cfg: RunConfig, spec: DatasetSpec, device: str) -> tuple[Any, list[str]]:
    """The run's segmentor (default: the dataset's) and its class names, refusing a segmentor
    whose class count differs from the dataset's."""
    from ssa.segmentors import load_segmentor
    from ssa.segmentors.spec import read_label_map_file

    cfg.segmentor = cfg.segmentor or spec.default_segmentor
    if cfg.segmentor is None:
        raise SSAError("--dataset folder needs --segmentor (e.g. --segmentor hf:<hub id or folder>)")
    classes = segmentor_classes(cfg, spec)
    label_map = None
    if cfg.label_map is not None and classes is not None:  # no classes: the loader says so
        label_map = read_label_map_file(cfg.label_map, classes)
    segmentor = load_segmentor(
        cfg.segmentor, device=device, args=cfg.segmentor_args, classes=classes, label_map=label_map
    )
    return segmentor, resolve_classes(cfg, spec, segmentor)


def build_labeller(
    cfg: RunConfig, download_progress: Callable[[int, int | None], None] | None = None
) -> Labeller:
    """Check the cheap things first, then load the segmentor (refusing a class-count mismatch)
    and SAM."""
    from ssa.masks import JsonMasks, MaskGenerator, ensure_checkpoint, load_sam, resolve_amg

    spec = get_dataset(cfg.dataset)
    device = cfg.resolved_device()
    check_voting(cfg)
    # With --masks no SAM runs, so its settings are not used (a config may still name them).
    settings = None if cfg.masks else resolve_amg(cfg.amg_preset or spec.default_amg_preset, cfg.amg)
    masks = JsonMasks(cfg.masks) if cfg.masks else None
    segmentor, names = build_segmentor(cfg, spec, device)
    if masks is None:
        checkpoint = ensure_checkpoint(cfg.sam_model, cfg.sam_checkpoint, download_progress)
        masks = MaskGenerator(
            load_sam(cfg.sam_model, checkpoint, device), impl=cfg.amg_impl, **settings
        )
    return Labeller(
        masks,
        segmentor,
        names,
        spec.palette_array(len(names)),
        device=device,
        top_k=cfg.top_k,
        vote_policy=cfg.vote,
        min_vote_share=float(cfg.min_vote_share),
    )


def list_images(cfg: RunConfig) -> tuple[Path, list[Path]]:
    return select_images(cfg.dataset, cfg.data_dir, cfg.split, cfg.limit, cfg.out_dir)


def select_images(
    dataset: str, data_dir: Path | None, split: str | None, limit: int | None,
    out_dir: Path | None = None,
) -> tuple[Path, list[Path]]:
    """The image folder and the sorted relative paths of its images (outputs under `out_dir`
    left out, see `DatasetSpec.list_images`), the first `limit` only."""
    if data_dir is None:
        raise SSAError("--data-dir is required; pass the dataset's root folder")
    root, rels = get_dataset(dataset).list_images(Path(data_dir), split, out_dir)
    if limit is not None:
        if limit < 1:
            raise SSAError(f"--limit {limit} must be at least 1")
        rels = rels[:limit]
    if not rels:
        raise SSAError(f"no images under {root}; check --data-dir and --dataset")
    return root, rels


def failure_record(result: ImageResult) -> dict[str, Any]:
    return {"path": result.rel.as_posix(), "stage": result.stage, "error": result.error}


def record_failure(out_dir: Path, result: ImageResult) -> None:
    """Append one line to failures.jsonl now (one `write` of one line in append mode, so lines
    from ranks on one machine do not interleave)."""
    import errno
    import os

    line = (json.dumps(failure_record(result)) + "\n").encode()
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
    io.write_text(path, "".join(json.dumps(r) + "\n" for r in records))  # one line on OSError


def _error_message(exc: BaseException) -> str:
    import torch

    if isinstance(exc, SSAError):
        return str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory on this image; free GPU memory or lower --amg points_per_batch"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def failure_message(exc: BaseException) -> str:
    """Report one image's failure: a traceback for unexpected errors, CUDA memory given back
    after an out-of-memory error; returns the one-line message for the summary."""
    oom = isinstance(exc, torch.cuda.OutOfMemoryError)
    if not isinstance(exc, SSAError) and not oom:
        traceback.print_exception(exc)
    if oom:
        torch.cuda.empty_cache()
    return _error_message(exc)


def process_image(
    labeller: Labeller, root: Path, rel: Path, out_dir: Path, cfg: RunConfig
) -> ImageResult:
    """Label and write one image; any failure (bad file, CUDA out of memory, a bug that one
    image triggers) is returned, not raised, so the run goes on. `ssa.overlap` does the same
    with reads and writes in background threads."""
    start = time.perf_counter()
    stage = "read"
    try:
        image = io.read_image(root / rel)
        stage = "label"
        out = labeller.label(image, rel)
        stage = "write"
        labeller.write(out, output_paths(out_dir, rel), image, cfg.save_branch, cfg.save_vis)
    except FatalError:
        raise
    except Exception as exc:  # noqa: BLE001 - isolation: one image never stops the run
        return ImageResult(rel, "failed", stage=stage, error=failure_message(exc),
                           seconds=time.perf_counter() - start)
    return ImageResult(rel, "done", num_masks=len(out["records"]),
                       seconds=time.perf_counter() - start)


def check_run(cfg: RunConfig) -> None:
    """The checks that need no model (before workers start, so one message, not N)."""
    if cfg.out_dir is None:
        raise SSAError("--out-dir is required; pass the folder for the outputs")
    list_images(cfg)
    io.check_writable(cfg.out_dir)  # a read-only or full out-dir: one line, no model loaded
    if cfg.sam_checkpoint is not None and not cfg.masks:
        from ssa.masks import ensure_checkpoint

        ensure_checkpoint(cfg.sam_model, cfg.sam_checkpoint)  # an explicit path: checks it exists


def _check_same_images(rels: list[Path], group: Group) -> None:
    """Every rank lists the images itself; shares are only disjoint when the lists agree."""
    import hashlib

    digest = hashlib.sha1("\n".join(r.as_posix() for r in rels).encode()).hexdigest()
    seen = group.all_gather_object((len(rels), digest))
    if len(set(seen)) > 1:
        counts = ", ".join(f"rank {r}: {n}" for r, (n, _) in enumerate(seen))
        raise SSAError(
            f"the ranks see different image lists ({counts} images); put --data-dir on a "
            f"filesystem every machine sees at the same path"
        )


def _done_flags(out_dir: Path, rels: list[Path], group: Group, overwrite: bool) -> list[bool]:
    """Which images are done: each rank checks a strided share, one all-reduce combines them."""
    flags = torch.zeros(len(rels), dtype=torch.uint8)
    if not overwrite:
        for i in shard_indices(len(rels), group.info.rank, group.info.world_size):
            flags[i] = is_done(out_dir, rels[i])
    return group.all_reduce_sum(flags).bool().tolist()


def _merge(parts: list[RunSummary]) -> RunSummary:
    out = RunSummary(total=parts[0].total, skipped=parts[0].skipped,
                     removed_temps=sum(p.removed_temps for p in parts))
    for part in parts:
        out.done += part.done
        out.num_masks += part.num_masks
        out.failed += part.failed
        out.seconds = max(out.seconds, part.seconds)
    out.failed.sort(key=lambda r: r.rel.as_posix())
    return out


def run(
    cfg: RunConfig,
    on_start: Callable[[int, int, int], None] | None = None,
    on_image: Callable[[ImageResult], None] | None = None,
    download_progress: Callable[[int, int | None], None] | None = None,
    group: Group | None = None,
) -> RunSummary:
    """Label every image of the dataset that is not done yet (all of them with `overwrite`).

    With a process group, the sorted list of images to do is sharded across the ranks (rank r
    takes items r, r + N, ...; see `distributed.shard`) and the summary returned on every rank
    covers all ranks. on_start(total, skipped, mine) is called once this rank knows its share;
    on_image after each of its images.
    """
    check_run(cfg)
    out_dir = Path(cfg.out_dir)  # type: ignore[arg-type]
    root, rels = list_images(cfg)

    from ssa.overlap import process_overlapped

    def make_worker() -> Callable[[list[Path]], Iterable[ImageResult]]:
        labeller = build_labeller(cfg, download_progress)
        # process_image for each image, with reads and writes in background threads.
        return lambda mine: process_overlapped(labeller, root, mine, out_dir, cfg)

    sam = None if cfg.masks else (cfg.sam_model, cfg.sam_checkpoint)
    return run_images(
        out_dir, rels, make_worker, cfg.overwrite, sam, on_start, on_image, download_progress, group
    )


def run_images(
    out_dir: Path,
    rels: list[Path],
    make_worker: Callable[[], Callable[[list[Path]], Iterable[ImageResult]]],
    overwrite: bool = False,
    sam: tuple[str, Path | None] | None = None,
    on_start: Callable[[int, int, int], None] | None = None,
    on_image: Callable[[ImageResult], None] | None = None,
    download_progress: Callable[[int, int | None], None] | None = None,
    group: Group | None = None,
) -> RunSummary:
    """The dataset loop that `ssa run` and `ssa engine` share: clean up, skip done images, shard
    the rest, process this rank's share, and gather every rank's summary.

    make_worker() loads the models (only on a rank with work) and returns a function from this
    rank's relative paths to their results; sam = (model, checkpoint) when SAM runs, so each
    machine downloads a missing checkpoint once before its ranks load it.
    """
    group = group or Group()
    info = group.info
    removed = io.remove_temp_files(out_dir) if info.local_rank == 0 else 0
    if info.is_main:  # every image not done is tried again: the earlier report is superseded
        (out_dir / FAILURES_FILE).unlink(missing_ok=True)
    # Collectives after every machine's clean-up and before any rank writes.
    _check_same_images(rels, group)
    done = _done_flags(out_dir, rels, group, overwrite)
    todo = [rel for rel, flag in zip(rels, done) if not flag]
    mine = shard(todo, info.rank, info.world_size)
    summary = RunSummary(total=len(rels), skipped=len(rels) - len(todo), removed_temps=removed)
    if info.distributed:
        from ssa.masks import ensure_checkpoint

        if info.local_rank == 0 and todo and sam is not None:
            # One download per machine, before its other ranks load the file.
            ensure_checkpoint(*sam, download_progress)
        group.wait_all("checkpoint")
    if mine:
        from ssa.allocator import keep_freed_memory

        keep_freed_memory()  # large tensors reused from the heap, not faulted in per image
    worker = make_worker() if mine else None
    if on_start:
        on_start(len(rels), summary.skipped, len(mine))
    start = time.perf_counter()
    for result in worker(mine) if worker else ():
        if result.status == "failed":
            summary.failed.append(result)
            record_failure(out_dir, result)
        else:
            summary.done += 1
            summary.num_masks += result.num_masks
        group.add("processed")
        if on_image:
            on_image(result)
    summary.seconds = time.perf_counter() - start
    group.wait_all("finished")  # ranks end hours apart at worst: no collective timeout here
    summary = _merge(group.all_gather_object(summary))
    if info.is_main:
        write_failures(out_dir, summary.failed)
    return summary
