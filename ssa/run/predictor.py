"""Click or box -> SAM's three masks (whole, part, subpart), each labelled by semantic voting.

`SemanticPredictor` is a promptable mask source (`ssa.masks.base.PromptableMaskSource`: SAM's
`SamPredictor` for `sam:`, a transformers SAM-family model for `hf:`) with a semantic branch
beside it: `set_image` runs the image encoder and the segmentor once per image, then every
`predict` (a click, several clicks, a box) costs only the prompt encoder and mask decoder plus
one vote.

Granularity: SAM's `multimask_output=True` gives three masks for a prompt, but in no guaranteed
order of size. Here they are ordered by area, largest first (ties keep SAM's output order), and
named `whole`, `part`, `subpart` in that order. `multimask_index` keeps each mask's position in
SAM's own output.

Labels follow the SSA rule (`ssa.voting`, hard voting): `class_name` is the top-1 class of the
branch's argmax labels inside the mask (ties to the lowest class index, None when no pixel
votes), `class_proposals` the top-k classes by vote share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssa.errors import SSAError

if TYPE_CHECKING:
    from ssa.plan import PredictPlan

GRANULARITIES = ("whole", "part", "subpart")


def _as_points(points: Any, labels: Any, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Validate click prompts: `(N, 2) float32` XY pixel coordinates and `(N,) int64` labels."""
    height, width = size
    try:
        coords = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    except (TypeError, ValueError):
        raise SSAError(
            f"points {points!r} are not (x, y) pairs; pass e.g. points=[(120, 80)]"
        ) from None
    if labels is None:
        lab = np.ones(len(coords), dtype=np.int64)
    else:
        lab = np.asarray(labels).reshape(-1)
        if len(lab) != len(coords) or not np.isin(lab, (0, 1)).all():
            raise SSAError(
                f"point labels {np.asarray(labels).tolist()} must be one 1 (foreground) or 0 "
                f"(background) per point ({len(coords)} points)"
            )
        lab = lab.astype(np.int64)
    for (x, y), kind in zip(coords.tolist(), lab.tolist()):
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < width and 0 <= y < height):
            flag = "--point" if kind == 1 else "--negative"
            raise SSAError(
                f"{flag} {x:g},{y:g} lies outside the {width}x{height} image; pass X in "
                f"0..{width - 1} and Y in 0..{height - 1} (pixels, origin top left)"
            )
    return coords, lab


def _as_box(box: Any, size: tuple[int, int]) -> np.ndarray:
    """Validate a box prompt: `(4,) float32` XYXY pixel coordinates inside the image."""
    height, width = size
    try:
        arr = np.asarray(box, dtype=np.float32).reshape(4)
    except (TypeError, ValueError):
        raise SSAError(f"box {box!r} is not X0,Y0,X1,Y1; pass e.g. --box 10,20,200,150") from None
    x0, y0, x1, y1 = arr.tolist()
    text = f"{x0:g},{y0:g},{x1:g},{y1:g}"
    if not np.isfinite(arr).all() or x0 >= x1 or y0 >= y1:
        raise SSAError(f"--box {text} is empty; pass X0,Y0,X1,Y1 with X0 < X1 and Y0 < Y1")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise SSAError(
            f"--box {text} leaves the {width}x{height} image; keep 0 <= X0 < X1 <= {width} "
            f"and 0 <= Y0 < Y1 <= {height}"
        )
    return arr


def check_prompt(
    points: Any, labels: Any, box: Any, size: tuple[int, int]
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Validate a prompt for an image of `size` (H, W) before any model runs.

    Returns `(N, 2) float32` XY points, `(N,) int64` labels and an `(4,) float32` XYXY box, each
    None when absent. At least one foreground point or a box is needed.
    """
    coords = lab = box_arr = None
    if points is not None and len(np.asarray(points, dtype=object).reshape(-1)):
        coords, lab = _as_points(points, labels, size)
    elif labels is not None and len(np.asarray(labels).reshape(-1)):
        raise SSAError("point labels were given without points; pass points=[(x, y), ...]")
    if box is not None:
        box_arr = _as_box(box, size)
    if box_arr is None and (lab is None or not (lab == 1).any()):
        raise SSAError(
            "no prompt: pass a foreground point (--point X,Y) or a box (--box X0,Y0,X1,Y1)"
        )
    return coords, lab, box_arr


def granularity_order(areas: Sequence[int]) -> list[int]:
    """Indices of SAM's multimask outputs, largest area first (ties keep SAM's order)."""
    return sorted(range(len(areas)), key=lambda i: -int(areas[i]))


class SemanticPredictor:
    """A per-image predictor: prompts -> three masks with semantic labels.

    masks: a `PromptableMaskSource` (`ssa.specs.masks.load_prompt_source`), or a
      `segment_anything.modeling.Sam` (e.g. from `ssa.masks.load_sam`), wrapped in
      `ssa.masks.sam.SamPromptSource`.
    segmentor: a semantic branch (`ssa.segmentors.base.Segmentor`): image -> `(C, H, W)` scores
      or `(H, W)` labels.
    class_names: the names of classes 0..C-1 (default: the segmentor's own).
    palette: `(C, 3) uint8` colours for overlays (default: `ssa.datasets.default_palette`).
    """

    def __init__(
        self,
        masks: Any,
        segmentor: Callable[[np.ndarray], Any],
        class_names: Sequence[str] | None = None,
        device: str = "cpu",
        top_k: int = 3,
        palette: np.ndarray | None = None,
    ) -> None:
        import torch

        from ssa.datasets import default_palette
        from ssa.segmentors.base import class_names as segmentor_names

        if top_k < 1:
            raise SSAError(f"--top-k {top_k} must be at least 1")
        if isinstance(masks, torch.nn.Module):
            from ssa.masks.sam import SamPromptSource

            masks = SamPromptSource(masks)
        self.masks = masks
        self.segmentor = segmentor
        self.class_names = list(class_names) if class_names is not None else segmentor_names(
            segmentor
        )
        self.device = torch.device(device)
        self.top_k = top_k
        self.palette = palette if palette is not None else default_palette(len(self.class_names))
        self.image: np.ndarray | None = None
        self.branch_labels = None  # (H, W) torch tensor on `device` (`BranchOutput.labels`)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_image(self, image: np.ndarray, path: str | Path | None = None) -> None:
        """Run the image encoder and the semantic branch once on `image` (`HWC uint8 RGB`).

        path: the image's relative path, for a segmentor that takes one (`labels:` finds the
        image's precomputed labels by it); `ssa predict` passes the file's name."""
        import torch

        from ssa.segmentors.base import accepts_path, branch_output

        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise SSAError(
                f"image of shape {image.shape} and dtype {image.dtype} is not HWC uint8 RGB; "
                f"read it with ssa.io.read_image"
            )
        height, width = image.shape[:2]
        extra = {}
        if accepts_path(self.segmentor):
            if path is None:
                raise SSAError("this segmentor reads each image's labels by its relative path; "
                               "call set_image(image, path=...)")
            extra["path"] = Path(path)
        self.masks.set_image(image)
        with torch.inference_mode():
            branch = branch_output(
                self.segmentor, self.segmentor(image, **extra), self.num_classes,
                (height, width), self.device,
            )
        self.image = image
        self.branch_labels = branch.labels

    def _need_image(self) -> np.ndarray:
        if self.image is None:
            raise SSAError("no image is set; call set_image(image) first")
        return self.image

    def reset_image(self) -> None:
        if callable(getattr(self.masks, "reset_image", None)):
            self.masks.reset_image()
        self.image = None
        self.branch_labels = None

    def predict(
        self,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
    ) -> list[dict[str, Any]]:
        """Three labelled masks for a prompt, ordered whole -> part -> subpart.

        points: `(N, 2)` XY pixel coordinates of clicks; labels: `(N,)` 1 = foreground,
        0 = background (default: all foreground); box: XYXY pixels. At least one foreground
        point or a box is needed.

        Returns three records: `segmentation` (`HW bool`), `area`, `bbox` (`XYWH`),
        `predicted_iou`, `granularity`, `multimask_index` (position in SAM's output),
        `class_name` (str or None), `class_proposals` (top-k names), `proposal_shares`
        (their vote shares).
        """
        import torch

        from ssa.masks.base import mask_bbox
        from ssa.voting import NO_CLASS, mask_areas, vote

        size = self._need_image().shape[:2]
        coords, lab, box_arr = check_prompt(points, labels, box, size)
        answer = self.masks.predict(coords, lab, box_arr, multimask=True)
        with torch.inference_mode():
            stack = answer.masks.to(self.device)
            areas = mask_areas(stack)
            result = vote(stack, self.branch_labels, self.num_classes, self.top_k, areas=areas)
        masks = stack.cpu().numpy()
        ious = [float(r.get("predicted_iou", float("nan"))) for r in answer.records]
        boxes = [r.get("bbox") or mask_bbox(m) for r, m in zip(answer.records, masks)]
        areas_list = areas.tolist()
        classes = result.classes.tolist()
        proposals = result.proposals.tolist()
        shares = result.shares.tolist()
        records = []
        for rank, i in enumerate(granularity_order(areas_list)):
            voted = [p for p in proposals[i] if p != NO_CLASS]
            records.append(
                {
                    "segmentation": np.ascontiguousarray(masks[i]),
                    "area": int(areas_list[i]),
                    "bbox": [int(v) for v in boxes[i]],
                    "predicted_iou": float(ious[i]),
                    "granularity": GRANULARITIES[rank],
                    "multimask_index": i,
                    "class_name": self.class_names[classes[i]] if classes[i] != NO_CLASS else None,
                    "class_proposals": [self.class_names[p] for p in voted],
                    "proposal_shares": [round(float(s), 6) for s in shares[i][: len(voted)]],
                }
            )
        return records

    def to_json(self, records: list[dict[str, Any]], prompt: dict[str, Any] | None = None) -> dict:
        """The JSON document of a prediction: COCO RLE `segmentation` (counts str), whole first."""
        from ssa.io import encode_rle

        image = self._need_image()
        rles = encode_rle(np.stack([r["segmentation"] for r in records]))
        masks = [{**r, "segmentation": rle} for r, rle in zip(records, rles)]
        height, width = image.shape[:2]
        doc: dict[str, Any] = {"image": {"height": height, "width": width}}
        if prompt is not None:
            doc["prompt"] = prompt
        doc["masks"] = masks
        doc["class_names"] = self.class_names
        return doc

    def write_overlay(self, path: str | Path, records: list[dict[str, Any]]) -> None:
        """A JPEG of the masks over the image: coloured by class (smaller masks on top),
        outlined, and named `granularity: class` at their centres."""
        import torch

        from ssa.io import write_overlay
        from ssa.voting import paint

        image = self._need_image()
        stack = np.stack([r["segmentation"] for r in records])
        name_to_id = {n: i for i, n in enumerate(self.class_names)}
        classes = torch.tensor(
            [name_to_id[r["class_name"]] if r["class_name"] is not None else -1 for r in records]
        )
        base = torch.full(stack.shape[1:], 255, dtype=torch.int64)
        label_map = paint(torch.from_numpy(stack), classes, base).numpy()
        names = [f"{r['granularity']}: {r['class_name'] or '-'}" for r in records]
        write_overlay(path, image, label_map, self.palette, list(stack), names)


def build_predictor(
    plan: PredictPlan, download_progress: Callable[[int, int | None], None] | None = None
) -> SemanticPredictor:
    """A SemanticPredictor from a `ssa.plan.PredictPlan` (`ssa.plan.plan_predict`), with the
    same loaders and class-name rules as `ssa run`."""
    from ssa.datasets import get_dataset
    from ssa.run.labeller import build_segmentor
    from ssa.specs.masks import load_prompt_source

    dataset = get_dataset(plan.dataset)
    segmentor, names = build_segmentor(plan.semantic, dataset, plan.device)
    masks = load_prompt_source(plan.masks.spec, plan.device, download_progress,
                               plan.masks.precision, plan.masks.compile)
    return SemanticPredictor(
        masks, segmentor, names, device=plan.device, top_k=plan.top_k,
        palette=dataset.palette_array(len(names)),
    )
