"""The per-image flow (read -> mask branch -> semantic branch -> voting -> write) and the
dataset loop (skip done images, isolate failures, report progress)."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssa import io
from ssa.config import RunConfig
from ssa.datasets import DatasetSpec, get_dataset
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
        records = self.mask_generator.generate(image, **(path_kw if self._masks_take_path else {}))
        raw = self.segmentor(image, **(path_kw if self._segmentor_takes_path else {}))
        branch = BranchOutput.from_raw(raw, self.num_classes, (height, width), self.device)
        if self.vote_policy == "soft" and branch.scores is None:
            raise FatalError(
                f"--vote soft needs class scores but segmentor {type(self.segmentor).__name__} "
                f"gave (H, W) labels; use --vote hard, or return (C, H, W) scores"
            )
        if records:
            stack = np.stack([r["segmentation"] for r in records])
        else:
            stack = np.zeros((0, height, width), dtype=bool)
        masks = torch.from_numpy(stack).to(self.device)
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
        return {
            "records": records,
            "masks": stack,
            "rles": io.encode_rle(stack),
            "branch": branch,
            "votes": result,
        }

    def write(
        self, out: dict[str, Any], paths: dict[str, Path], image: np.ndarray, save_branch: bool,
        save_vis: bool,
    ) -> None:
        """Write the PNGs and the overlay, then the JSON last (it marks the image as done)."""
        label_map = out["votes"].label_map.cpu().numpy()
        io.write_label_png(paths["label"], label_map, self.num_classes)
        if save_branch:
            io.write_label_png(paths["branch"], out["branch"].labels.cpu().numpy(), self.num_classes)
        annotations = annotations_from(out["records"], out["rles"], out["votes"], self.class_names)
        if save_vis:
            io.write_overlay(
                paths["vis"], image, label_map, self.palette, out["masks"],
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
        masks = MaskGenerator(load_sam(cfg.sam_model, checkpoint, device), **settings)
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
    if cfg.data_dir is None:
        raise SSAError("--data-dir is required; pass the dataset's root folder")
    spec = get_dataset(cfg.dataset)
    root, rels = spec.list_images(cfg.data_dir, cfg.split)
    if cfg.limit is not None:
        if cfg.limit < 1:
            raise SSAError(f"--limit {cfg.limit} must be at least 1")
        rels = rels[: cfg.limit]
    if not rels:
        raise SSAError(f"no images under {root}; check --data-dir and --dataset")
    return root, rels


def record_failure(out_dir: Path, result: ImageResult) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"path": str(result.rel), "stage": result.stage, "error": result.error})
    with open(out_dir / FAILURES_FILE, "a") as f:
        f.write(line + "\n")


def process_image(
    labeller: Labeller, root: Path, rel: Path, out_dir: Path, cfg: RunConfig
) -> ImageResult:
    """Label and write one image; a failure is returned, not raised."""
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
    except (SSAError, OSError, RuntimeError, ValueError, MemoryError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, SSAError):
            message = f"{type(exc).__name__}: {message}"
            traceback.print_exc()
        return ImageResult(rel, "failed", stage=stage, error=message,
                           seconds=time.perf_counter() - start)
    return ImageResult(rel, "done", num_masks=len(out["records"]),
                       seconds=time.perf_counter() - start)


def run(
    cfg: RunConfig,
    on_start: Callable[[int, int], None] | None = None,
    on_image: Callable[[ImageResult], None] | None = None,
    download_progress: Callable[[int, int | None], None] | None = None,
) -> RunSummary:
    """Label every image of the dataset that is not done yet.

    on_start(total, already_done) is called once the image list is known; on_image after each
    image.
    """
    if cfg.out_dir is None:
        raise SSAError("--out-dir is required; pass the folder for the outputs")
    out_dir = Path(cfg.out_dir)
    root, rels = list_images(cfg)
    todo = [rel for rel in rels if not is_done(out_dir, rel)]
    summary = RunSummary(total=len(rels), skipped=len(rels) - len(todo))
    labeller = build_labeller(cfg, download_progress)
    if on_start:
        on_start(len(rels), summary.skipped)
    start = time.perf_counter()
    for rel in todo:
        result = process_image(labeller, root, rel, out_dir, cfg)
        if result.status == "failed":
            summary.failed.append(result)
            record_failure(out_dir, result)
        else:
            summary.done += 1
            summary.num_masks += result.num_masks
        if on_image:
            on_image(result)
    summary.seconds = time.perf_counter() - start
    return summary
