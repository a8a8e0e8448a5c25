"""The semantic branch's contract.

A segmentor is any object with class names and a call on one image:

    id2label: dict[int, str]            (or `classes: Sequence[str]`)
    scores_kind: str = "auto"           (optional: "auto" | "logits" | "probabilities" | "mass"
                                         | "claims")
    claim_threshold: float              (with "claims" only)
    __call__(image: HWC uint8 RGB numpy) -> (C, h, w) scores or (H, W) labels

Scores are per-pixel class scores at any resolution `(h, w)`: the segmentor's own working
resolution (best: about the image's aspect ratio, e.g. short side = the training crop) or the
image's full `(H, W)`. Labels are class indices 0..C-1 at the image's full resolution (255 or any
value outside the range = no label). Numpy arrays and torch tensors are both accepted.

`BranchOutput.from_raw` normalises what a segmentor returns. It keeps the scores as they are and
makes the `(H, W)` labels by upsampling them bilinearly (`F.interpolate(..., mode="bilinear",
align_corners=False)`, as the segmentors did before returning full resolution) and taking the
argmax, band of output rows by band: no `(C, H, W)` map is ever made, so memory grows with the
image's pixels in bytes, not with pixels x classes. Soft voting (`--vote soft`) sums
full-resolution probabilities over each mask the same way, band by band
(`BranchOutput.probability_bands`). `scores_kind` says how scores become probabilities:
"logits" are softmaxed over classes after upsampling, "mass" (non-negative class mass, e.g.
a universal model's class x mask probabilities) is divided by its per-pixel sum after
upsampling, "probabilities" are kept, and "auto" (the default) keeps scores that are per-pixel
probabilities (non-negative, summing to 1 within 1e-3, judged at the scores' resolution) and
softmaxes others. "claims" (SAM 3, `ssa.segmentors.sam3`) are per-class probabilities of
independent concepts: after upsampling, a class claims a pixel when its probability is above
the segmentor's `claim_threshold`; a pixel no class claims gets no label (255, or 65535 beyond
255 classes) and adds nothing to soft votes; a claimed pixel's probabilities are the claims
normalised over the claiming classes. `branch_output` reads both attributes off a segmentor.

A segmentor that needs to know which image it is labelling (a folder of precomputed
predictions, a cache) declares a keyword-only parameter `path`:

    __call__(image, *, path: pathlib.Path | None = None)

and the pipeline then passes the image's path relative to the dataset's image folder (the same
relative path the outputs mirror). Segmentors without that parameter are called with the image
alone. `accepts_path` is the one place that decides. The mask source (`ssa.masks.SamMaskSource`,
`ssa.masks.JsonMasks`) follows the same rule for `generate(image, *, path)`.

Ways to provide one without editing ssa (see `ssa.specs.segmentors`): `py:<module or file.py>:
<factory>`, an entry point in the group `ssa.segmentors` whose value is such a factory, or
`labels:<folder>`. A factory may take keyword arguments (`--segmentor-arg KEY=VALUE`) and a
`device` keyword (the run's device).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ssa.errors import SSAError
from ssa.io import no_label_value
from ssa.plugins import accepts_path  # noqa: F401 - re-exported for plug-ins


@runtime_checkable
class Segmentor(Protocol):
    """A semantic segmentor: `id2label` (or `classes`) and `__call__(image) -> scores or labels`.

    image: `HWC uint8 RGB` numpy. Returns `(C, h, w)` scores at any resolution (its working
    one, or the image's) or `(H, W)` class indices at the image's resolution, numpy or torch;
    an optional `scores_kind` attribute says what the scores are (module docstring).
    Optionally `__call__(image, *, path)` (module docstring).
    """

    id2label: dict[int, str]

    def __call__(self, image: np.ndarray) -> np.ndarray | torch.Tensor: ...


def class_names(segmentor: Any) -> list[str]:
    """The class names of a segmentor, in index order, from `id2label` or `classes`."""
    id2label = getattr(segmentor, "id2label", None)
    if id2label:
        try:
            mapping = {int(k): str(v) for k, v in dict(id2label).items()}
        except (TypeError, ValueError):
            raise SSAError(
                f"segmentor {type(segmentor).__name__}.id2label must map int ids to names"
            ) from None
        if sorted(mapping) != list(range(len(mapping))):
            raise SSAError(
                f"segmentor {type(segmentor).__name__}.id2label ids must be 0..C-1 without gaps"
            )
        return [mapping[i] for i in range(len(mapping))]
    classes = getattr(segmentor, "classes", None)
    if classes:
        return [str(c) for c in classes]
    raise SSAError(
        f"segmentor {type(segmentor).__name__} has neither id2label nor classes; "
        f"give it one (see ssa.segmentors.base.Segmentor)"
    )


SCORE_KINDS = ("auto", "logits", "probabilities", "mass", "claims")
# Elements of one `(C, rows, W)` band of full-resolution scores (about 32 MB of float32).
_BAND_ELEMENTS = 1 << 23


def scores_kind(segmentor: Any) -> str:
    """How a segmentor's scores become probabilities: its `scores_kind` attribute, else "auto".

    "logits": softmax over classes; "mass": non-negative class mass, divided by its per-pixel
    sum; "probabilities": kept; "auto": kept when they are per-pixel probabilities
    (non-negative, summing to 1 within 1e-3), else softmaxed.
    """
    kind = getattr(segmentor, "scores_kind", "auto")
    if kind not in SCORE_KINDS:
        raise SSAError(
            f"segmentor {type(segmentor).__name__}.scores_kind is {kind!r}; "
            f"use one of: {', '.join(SCORE_KINDS)}"
        )
    return kind


def branch_output(
    segmentor: Any, raw: Any, num_classes: int, size: tuple[int, int],
    device: str | torch.device = "cpu",
) -> BranchOutput:
    """`BranchOutput.from_raw` with the segmentor's own `scores_kind` and `claim_threshold`."""
    kind = scores_kind(segmentor)
    threshold = getattr(segmentor, "claim_threshold", None) if kind == "claims" else None
    return BranchOutput.from_raw(raw, num_classes, size, device, kind=kind, threshold=threshold)


def label_dtype(num_classes: int) -> torch.dtype:
    """The dtype of full-resolution labels: uint8 up to 255 classes (255 = no label), else int32
    (65535 = no label, as `ssa.io.no_label_value`)."""
    return torch.uint8 if num_classes <= 255 else torch.int32


def _source_index(out_size: int, in_size: int, device: torch.device):
    """Bilinear (align_corners=False) source rows of each output row, as `F.interpolate`
    computes them: `(i0, i1) int64` and the weight `w1` of i1 (`float32`)."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    src = ((torch.arange(out_size, dtype=torch.float32) + 0.5) * scale - 0.5).clamp_min(0)
    i0 = src.floor().long().clamp_max(in_size - 1)
    i1 = torch.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = (src - i0.float()).clamp(0, 1)
    return i0.to(device), i1.to(device), w1.to(device)


@dataclass
class BranchOutput:
    """The semantic branch on one image of `size = (H, W)` pixels.

    scores: `(C, h, w) float32` class scores at the segmentor's working resolution (any h, w;
            `h, w = H, W` for full-resolution scores), or None when the segmentor gives labels
            only. Never upsampled as a whole: full-resolution scores exist only in bands of
            output rows (`score_bands`, `probability_bands`), so memory grows with H x W, not
            with C x H x W.
    labels: `(H, W)` class indices, `label_dtype(C)` (uint8 for up to 255 classes, else int32);
            "no label" is 255 (65535 beyond 255 classes). From scores: the argmax of the
            bilinearly upsampled scores (`F.interpolate(..., mode="bilinear",
            align_corners=False)`, computed band by band).
    kind:   how scores become probabilities (`scores_kind`).
    threshold: the claim threshold of `kind="claims"` (module docstring).
    """

    scores: torch.Tensor | None
    labels: torch.Tensor
    kind: str = "auto"
    threshold: float | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.labels.shape[0]), int(self.labels.shape[1])

    @property
    def num_classes(self) -> int:
        return 0 if self.scores is None else int(self.scores.shape[0])

    @classmethod
    def from_raw(
        cls,
        raw: Any,
        num_classes: int,
        size: tuple[int, int],
        device: str | torch.device = "cpu",
        kind: str = "auto",
        threshold: float | None = None,
    ) -> BranchOutput:
        """What a segmentor returned -> BranchOutput for an image of `size = (H, W)`.

        raw: `(C, h, w)` scores at any resolution (upsampled bilinearly to `size` band by band)
        or `(H, W)` class indices (values outside 0..C-1 become "no label"), numpy or torch.
        """
        if kind not in SCORE_KINDS:
            raise SSAError(f"scores kind {kind!r} is not one of: {', '.join(SCORE_KINDS)}")
        if kind == "claims" and threshold is None:
            raise SSAError("scores kind 'claims' needs a claim threshold; give claim_threshold")
        tensor = torch.as_tensor(np.asarray(raw) if not torch.is_tensor(raw) else raw)
        tensor = tensor.to(device)
        size = (int(size[0]), int(size[1]))
        dtype = label_dtype(num_classes)
        if tensor.ndim == 3:
            if tensor.shape[0] != num_classes:
                raise SSAError(
                    f"segmentor returned {tensor.shape[0]} score channels for {num_classes} "
                    f"classes; return (C, h, w) scores with C = the number of class names"
                )
            if tensor.shape[1] == 0 or tensor.shape[2] == 0:
                raise SSAError(
                    f"segmentor returned empty {tuple(tensor.shape)} scores; return (C, h, w) "
                    f"scores with h, w >= 1"
                )
            scores = tensor if tensor.dtype == torch.float32 else tensor.float()
            _check_finite(scores, "scores")
            labels = torch.empty(size, dtype=dtype, device=tensor.device)
            out = cls(scores=scores, labels=labels, kind=kind, threshold=threshold)
            none = no_label_value(num_classes)
            for r0, r1, band in out.score_bands():
                if kind == "claims":
                    band = _claimed(band, threshold)
                    labels[r0:r1] = torch.where(
                        band.amax(dim=0) > 0, band.argmax(dim=0), none
                    ).to(dtype)
                else:
                    labels[r0:r1] = band.argmax(dim=0).to(dtype)
            return out
        if tensor.ndim == 2:
            if tuple(tensor.shape) != size:
                raise SSAError(
                    f"segmentor returned a {tuple(tensor.shape)} label map for a {size} image; "
                    f"return labels at the image's full resolution (or (C, h, w) scores)"
                )
            if tensor.is_floating_point():
                _check_finite(tensor, "labels")
            if tensor.is_floating_point() or tensor.dtype == torch.bool:
                tensor = tensor.long()
            none = no_label_value(num_classes)
            labels = torch.empty(size, dtype=dtype, device=tensor.device)
            step = max(1, _BAND_ELEMENTS // max(1, size[1]))
            for r0 in range(0, size[0], step):  # bands: no int64 copy of a whole map
                band = tensor[r0 : r0 + step].long()  # `none` fits any band dtype then
                valid = (band >= 0) & (band < num_classes)
                labels[r0 : r0 + step] = torch.where(valid, band, none).to(dtype)
            return cls(scores=None, labels=labels, kind=kind)
        raise SSAError(
            f"segmentor returned an array of shape {tuple(tensor.shape)}; "
            f"return (C, h, w) scores or (H, W) labels"
        )

    def _rows_per_band(self, max_elements: int) -> int:
        return max(1, max_elements // max(1, self.num_classes * self.size[1]))

    def score_bands(
        self, max_elements: int = _BAND_ELEMENTS
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield `(r0, r1, band)`: rows r0..r1-1 of the full-resolution scores, `(C, r1 - r0, W)
        float32`, bilinearly upsampled from `scores` (a view when they are full resolution)."""
        if self.scores is None:
            raise SSAError("the segmentor gave labels only; there are no scores to upsample")
        height, width = self.size
        scores = self.scores
        _, h, w = scores.shape
        step = self._rows_per_band(max_elements)
        if (h, w) == (height, width):
            for r0 in range(0, height, step):
                yield r0, min(r0 + step, height), scores[:, r0 : r0 + step]
            return
        i0, i1, w1 = _source_index(height, h, scores.device)
        for r0 in range(0, height, step):
            r1 = min(r0 + step, height)
            lo, hi = int(i0[r0]), int(i1[r1 - 1]) + 1
            rows = scores[:, lo:hi]
            if w != width:
                # Width first, on the few source rows this band needs; F.interpolate's own
                # column weights (its height is kept: weights 1 and 0, exact).
                rows = F.interpolate(
                    rows[None], size=(hi - lo, width), mode="bilinear", align_corners=False
                )[0]
            weight = w1[r0:r1].view(1, -1, 1)
            band = rows[:, i0[r0:r1] - lo] * (1 - weight)
            band += rows[:, i1[r0:r1] - lo] * weight
            yield r0, r1, band

    def probability_bands(
        self, max_elements: int = _BAND_ELEMENTS
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        """`score_bands` turned into per-pixel class probabilities as `kind` says."""
        if self.scores is None:
            raise SSAError("the segmentor gave labels only; there are no scores to upsample")
        kind = self.kind
        if kind == "auto":
            from ssa.voting import are_probabilities

            kind = "probabilities" if are_probabilities(self.scores) else "logits"
        for r0, r1, band in self.score_bands(max_elements):
            if kind == "logits":
                band = band.softmax(dim=0)
            elif kind == "mass":
                band = band / band.sum(dim=0, keepdim=True).clamp_min(1e-12)
            elif kind == "claims":
                band = _claimed(band, self.threshold)
                band = band / band.sum(dim=0, keepdim=True).clamp_min(1e-12)  # 0 stays 0
            yield r0, r1, band

    def probabilities(self) -> torch.Tensor:
        """The whole `(C, H, W) float32` probability map: C x H x W floats, for small images
        and tests only (voting uses `probability_bands`)."""
        return torch.cat([band for _, _, band in self.probability_bands()], dim=1)


def _check_finite(values: torch.Tensor, what: str) -> None:
    """Refuse NaN or infinity from a segmentor (that image fails, the run goes on): argmax
    would turn NaN into a class silently, and the scores would reach the JSON."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        count, total = int(bad.sum()), values.numel()
        raise SSAError(
            f"segmentor returned {count} NaN or infinite {what} of {total}; this image is not "
            f"labelled: check the model on it (under --precision bf16/fp16, try fp32)"
        )


def _claimed(band: torch.Tensor, threshold: float) -> torch.Tensor:
    """A band of "claims" scores with every probability at or below `threshold` set to 0 (a
    new tensor: the band may be a view of the scores)."""
    return band.masked_fill(band <= threshold, 0.0)


def check_num_classes(names: Sequence[str], expected: int | None, where: str) -> None:
    """Refuse a segmentor whose label count differs from the dataset's, before any image is read."""
    if expected is not None and len(names) != expected:
        raise SSAError(
            f"segmentor {where} has {len(names)} classes but the dataset has {expected}; "
            f"pass a segmentor trained on this dataset's classes (or --dataset folder)"
        )
