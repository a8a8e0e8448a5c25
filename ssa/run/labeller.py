"""The one per-image path: read -> masks -> segmentor -> vote -> outputs, with failure isolation.

`Labeller` labels one image (the mask source's `MaskResult`, the segmentor's branch output, the
SSA vote) and writes its outputs; `process_image` runs one image through any `ImageLabeller`
(this one, or the engine's) so that a failing image is returned as a failed `ImageResult` and the
run goes on, with CUDA's cache emptied after an out-of-memory error. `ssa.run.prefetch` runs the same
steps with reads and writes in background threads.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from ssa import io
from ssa.datasets import DatasetSpec, get_dataset
from ssa.errors import FatalError, SSAError, first_line
from ssa.run.outputs import (
    ImageResult,
    annotations_from,
    output_paths,
    semantic_document,
    write_inside,
)
from ssa.voting import vote

if TYPE_CHECKING:
    from ssa.plan import MaskBranch, RunPlan, SemanticBranch


class ImageLabeller(Protocol):
    """What `process_image` and `ssa.run.prefetch.process_overlapped` drive: `label(image, rel)`
    (`HWC uint8 RGB`, its relative path) -> an output held in memory; `write(out, paths, image)`
    writes it (the JSON last) and returns the number of masks."""

    def label(self, image: np.ndarray, rel: Path | None = None) -> Any: ...

    def write(self, out: Any, paths: dict[str, Path], image: np.ndarray) -> int: ...


class Labeller:
    """Labels one image at a time: owns the mask source, the segmentor and the class names.

    mask_source: a `ssa.masks.MaskSource`; segmentor: a `Segmentor` (one that takes a `path`
    keyword gets the image's relative path, `accepts_path`). vote_policy: "hard" or "soft";
    min_vote_share: see `ssa.voting`. save_branch/save_vis: also write `<stem>_branch.png` and
    `<stem>_vis.jpg`. max_pixels: images with more pixels are labelled downsized to at most this
    many (see `label`); None = every image at its own size.
    """

    def __init__(
        self,
        mask_source: Any,
        segmentor: Any,
        class_names: list[str],
        palette: np.ndarray,
        device: str = "cpu",
        top_k: int = 3,
        vote_policy: str = "hard",
        min_vote_share: float = 0.0,
        save_branch: bool = False,
        save_vis: bool = False,
        max_pixels: int | None = None,
    ) -> None:
        from ssa.segmentors.base import accepts_path

        if max_pixels is not None and (isinstance(max_pixels, bool) or max_pixels < 1):
            raise SSAError(f"--max-pixels {max_pixels!r} must be a positive pixel count")
        self.max_pixels = max_pixels
        self.mask_source = mask_source
        self.segmentor = segmentor
        self.class_names = class_names
        self.palette = palette
        self.device = torch.device(device)
        self.top_k = top_k
        self.vote_policy = vote_policy
        self.min_vote_share = min_vote_share
        self.save_branch = save_branch
        self.save_vis = save_vis
        self._segmentor_takes_path = accepts_path(segmentor)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def label(self, image: np.ndarray, rel: Path | None = None) -> dict[str, Any]:
        """image: `HWC uint8 RGB`; rel: its path relative to the image folder (for mask files
        and precomputed labels) -> records, RLEs, the `(N, H, W) bool` masks on the device, the
        branch output and the votes.

        With `max_pixels`, a larger image is labelled downsized (aspect ratio kept, PIL
        bilinear) by both branches: a model sees the small image; masks read from files (a
        source with `masks_at_original_size`) are read at the original size and resized
        (nearest) with `area` and `bbox` recomputed; every output is then at the labelled size,
        `out["image"]` holds the downsized image and `out["original_size"]` the original
        `(H, W)`. An image that runs out of memory raises one SSAError line with its size and
        the `--max-pixels` hint.
        """
        height, width = image.shape[:2]
        try:
            small = self._downsized(image)
            out = self._label(small, rel, original=image)
        except MemoryError as exc:
            raise SSAError(_too_large(height, width, exc)) from None
        except RuntimeError as exc:
            if not _is_allocation_failure(exc):
                raise
            raise SSAError(_too_large(height, width, exc)) from None
        if small is not image:
            out["image"], out["original_size"] = small, (height, width)
        return out

    def _downsized(self, image: np.ndarray) -> np.ndarray:
        """The image itself, or a copy of at most `max_pixels` pixels."""
        height, width = image.shape[:2]
        if self.max_pixels is None or height * width <= self.max_pixels:
            return image
        from PIL import Image

        factor = (self.max_pixels / (height * width)) ** 0.5
        size = (max(1, int(width * factor)), max(1, int(height * factor)))
        return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))

    def _label(
        self, image: np.ndarray, rel: Path | None, original: np.ndarray
    ) -> dict[str, Any]:
        from ssa.segmentors.base import branch_output

        height, width = image.shape[:2]
        path = None if rel is None else Path(rel)
        if original is not image and getattr(self.mask_source, "masks_at_original_size", False):
            generated = _resize_result(
                self.mask_source.generate(original, path=path), (height, width)
            )
        else:
            generated = self.mask_source.generate(image, path=path)
        records = generated.records
        rles = [r["segmentation"] for r in records]
        raw = self.segmentor(image, **({"path": path} if self._segmentor_takes_path and path
                                       is not None else {}))
        if original is not image and np.ndim(raw) == 2 and tuple(np.shape(raw)) == original.shape[:2]:
            raw = _resize_labels(raw, (height, width))  # precomputed labels at the original size
        # Scores stay at the segmentor's resolution; labels and soft votes are made from them
        # in bands of full-resolution rows (memory grows with H x W, not C x H x W).
        branch = branch_output(self.segmentor, raw, self.num_classes, (height, width), self.device)
        del raw
        if self.vote_policy == "soft" and branch.scores is None:
            raise FatalError(
                f"--vote soft needs class scores but segmentor {type(self.segmentor).__name__} "
                f"gave (H, W) labels; use --vote hard, or return (C, H, W) scores"
            )
        masks = generated.masks.to(self.device)
        areas = torch.tensor([int(r["area"]) for r in records], device=self.device)
        result = vote(
            masks,
            branch.labels,
            self.num_classes,
            self.top_k,
            areas=areas,
            scores=branch if branch.scores is not None else None,
            policy=self.vote_policy,
            min_vote_share=self.min_vote_share,
        )
        out = {"records": records, "masks": masks, "rles": rles, "branch": branch,
               "votes": result}
        stats = getattr(self.mask_source, "stats", None)  # the fast generator's counters
        if stats is not None and hasattr(stats, "dropped"):
            out["filters"] = {"candidates": stats.candidates, **stats.dropped}
        return out

    def write(self, out: dict[str, Any], paths: dict[str, Path], image: np.ndarray) -> int:
        """Write the PNGs and the overlay, then the JSON last (it marks the image as done);
        returns the number of masks."""
        # Redoing an image (--overwrite): it stops being done until its new JSON is in place.
        paths["semantic"].unlink(missing_ok=True)
        image = out.get("image", image)  # the labelled (downsized) image under --max-pixels
        label_map = out["votes"].label_map.cpu().numpy()
        io.write_label_png(paths["label"], label_map, self.num_classes)
        if self.save_branch:
            io.write_label_png(paths["branch"], out["branch"].labels.cpu().numpy(), self.num_classes)
        else:  # an earlier run's branch map would be scored against this run's labels
            paths["branch"].unlink(missing_ok=True)
        annotations = annotations_from(out["records"], out["rles"], out["votes"], self.class_names)
        if self.save_vis:
            io.write_overlay(
                paths["vis"], image, label_map, self.palette, _planes(out["masks"]),
                [a["class_name"] for a in annotations],
            )
        else:
            paths["vis"].unlink(missing_ok=True)
        io.write_json(
            paths["semantic"],
            semantic_document(image.shape[:2], annotations, label_map, self.class_names,
                              original_size=out.get("original_size")),
        )
        return len(annotations)


def _planes(masks: Any) -> Any:
    """Masks to use one at a time: an `io.RleStack` as it is (each decoded when reached, so
    N x H x W is never held), a tensor stack as numpy."""
    return masks if isinstance(masks, io.RleStack) else masks.cpu().numpy()


def _is_allocation_failure(exc: RuntimeError) -> bool:
    """torch's CPU allocator failing ("DefaultCPUAllocator: can't allocate memory"); CUDA's
    out-of-memory keeps its own message (`failure_message`)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    text = str(exc)
    return "can't allocate memory" in text or "Cannot allocate memory" in text


def _too_large(height: int, width: int, exc: BaseException) -> str:
    """One line: the image's size, what ran out, and the --max-pixels that would fit."""
    first = (str(exc).splitlines() or [""])[0][:200]
    suggest = max(1_000_000, (height * width // 2) // 1_000_000 * 1_000_000)
    return (
        f"image of {width}x{height} pixels ({height * width / 1e6:.1f} MP) is too large to label "
        f"in the memory here ({type(exc).__name__}: {first}); pass --max-pixels (e.g. "
        f"--max-pixels {suggest}) to label it downsized, or run it where more memory is free"
    )


def _resize_labels(labels: Any, size: tuple[int, int]) -> np.ndarray:
    """`(H, W)` class indices resized (nearest, pixel centres as PIL's, like the masks) to
    `size = (h, w)`, `int64`."""
    labels = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    rows = np.minimum(((np.arange(size[0]) + 0.5) * labels.shape[0] / size[0]).astype(np.int64),
                      labels.shape[0] - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * labels.shape[1] / size[1]).astype(np.int64),
                      labels.shape[1] - 1)
    return labels[rows[:, None], cols[None, :]].astype(np.int64)


def _resize_result(result: Any, size: tuple[int, int]) -> Any:
    """A `MaskResult` with every mask resized (nearest) to `size = (h, w)`; its RLE, `area` and
    `bbox` are recomputed (`result_from_records`), the other fields kept."""
    from PIL import Image

    from ssa.masks.base import result_from_records

    records = []
    for record, mask in zip(result.records, _planes(result.masks)):
        small = Image.fromarray(np.asarray(mask, dtype=np.uint8)).resize(
            (size[1], size[0]), Image.NEAREST
        )
        kept = {k: v for k, v in record.items() if k not in ("area", "bbox")}
        records.append({**kept, "segmentation": np.asarray(small).astype(bool)})
    return result_from_records(records, size)


def build_segmentor(
    semantic: SemanticBranch, dataset: DatasetSpec, device: str
) -> tuple[Any, list[str]]:
    """The planned segmentor and its class names, refusing one whose class count differs from
    the dataset's."""
    from ssa.segmentors.base import check_num_classes, class_names
    from ssa.specs.segmentors import load_segmentor, read_label_map_file

    classes = None if semantic.classes is None else list(semantic.classes)
    label_map = None
    if semantic.label_map is not None and classes is not None:  # no classes: the loader says so
        label_map = read_label_map_file(semantic.label_map, classes)
    prompts = None
    if semantic.prompts is not None and classes is not None:
        from ssa.segmentors.sam3 import read_prompts_file

        prompts = read_prompts_file(semantic.prompts, classes)
    segmentor = load_segmentor(
        semantic.spec, device=device, args=dict(semantic.args), classes=classes,
        label_map=label_map, prompts=prompts,
    )
    names = class_names(segmentor)
    check_num_classes(names, dataset.num_classes, semantic.spec)
    return segmentor, list(dataset.classes) if dataset.classes is not None else names


def build_mask_source(
    masks: MaskBranch,
    device: str,
    download_progress: Callable[[int, int | None], None] | None = None,
) -> Any:
    """The planned `MaskSource` (`ssa run` and `ssa engine`)."""
    from ssa.specs.masks import load_mask_source

    return load_mask_source(masks.spec, device, dict(masks.settings), download_progress,
                            impl=masks.impl, precision=masks.precision, compile=masks.compile)


def build_labeller(
    plan: RunPlan, download_progress: Callable[[int, int | None], None] | None = None
) -> Labeller:
    """Load the planned segmentor (refusing a class-count mismatch), then the mask source."""
    dataset = get_dataset(plan.images.dataset)
    segmentor, names = build_segmentor(plan.semantic, dataset, plan.device)
    masks = build_mask_source(plan.masks, plan.device, download_progress)
    return Labeller(
        masks,
        segmentor,
        names,
        dataset.palette_array(len(names)),
        device=plan.device,
        top_k=plan.voting.top_k,
        vote_policy=plan.voting.policy,
        min_vote_share=plan.voting.min_share,
        save_branch=plan.outputs.save_branch,
        save_vis=plan.outputs.save_vis,
        max_pixels=plan.outputs.max_pixels,
    )


def error_message(exc: BaseException) -> str:
    """One line for an image's failure (an SSAError's own message; out of memory named)."""
    if isinstance(exc, SSAError):
        return str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "CUDA out of memory on this image; free GPU memory or lower --amg points_per_batch"
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__


def failure_message(exc: BaseException) -> str:
    """Report one image's failure (a traceback for unexpected errors) and return the one-line
    message for the summary. CUDA memory is given back by `guarded`, once `exc` is gone."""
    oom = isinstance(exc, torch.cuda.OutOfMemoryError)
    if not isinstance(exc, SSAError) and not oom:
        traceback.print_exception(exc)
    return error_message(exc)


def guarded(
    rel: Path, start: float, stage: str, step: Callable[..., Any], *args: Any
) -> tuple[Any, ImageResult | None]:
    """`(step(*args), None)`, or `(None, the failed ImageResult)` when it raises: one image
    never stops the run, except a `FatalError`, which every image would hit. After an
    out-of-memory error CUDA's cache is emptied once the exception (and the tensors its frames
    held) is gone."""
    oom = False
    try:
        return step(*args), None
    except FatalError:
        raise
    except Exception as exc:  # noqa: BLE001 - isolation: one image never stops the run
        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        failed = ImageResult(rel, "failed", stage=stage, error=failure_message(exc),
                             seconds=time.perf_counter() - start)
    if oom:
        torch.cuda.empty_cache()
    return None, failed


def process_image(labeller: ImageLabeller, root: Path, rel: Path, out_dir: Path) -> ImageResult:
    """Read, label and write one image; any failure (bad file, CUDA out of memory, a bug that
    one image triggers) is returned, not raised, so the run goes on."""
    start = time.perf_counter()
    image, failed = guarded(rel, start, "read", io.read_image, Path(root) / rel)
    if failed is None:
        out, failed = guarded(rel, start, "label", labeller.label, image, rel)
    if failed is None:
        paths = output_paths(Path(out_dir), rel)
        num_masks, failed = guarded(rel, start, "write", write_inside, labeller.write,
                                    Path(out_dir), rel, out, paths, image)
    if failed is not None:
        return failed
    return ImageResult(rel, "done", num_masks=num_masks, seconds=time.perf_counter() - start)
