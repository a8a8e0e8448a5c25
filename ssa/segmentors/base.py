"""The semantic branch's contract.

A segmentor is any object with class names and a call on one image:

    id2label: dict[int, str]            (or `classes: Sequence[str]`)
    __call__(image: HWC uint8 RGB numpy) -> (C, H, W) scores or (H, W) labels

Scores are per-pixel class scores (probabilities or logits) at the image's full resolution;
labels are class indices 0..C-1 (255 or any value outside the range = no label). Numpy arrays
and torch tensors are both accepted. `BranchOutput.from_raw` normalises what a segmentor
returns. Soft voting (`--vote soft`) needs scores: it uses them as they are when they are
per-pixel probabilities (non-negative, summing to 1) and softmaxes them over classes otherwise.
Non-negative scores that are all zero at a pixel say "no label" there (SAM 3's claims,
`ssa.segmentors.sam3`): its label is 255 (65535 beyond 255 classes) and it adds nothing to
soft votes.

A segmentor that needs to know which image it is labelling (a folder of precomputed
predictions, a cache) declares a keyword-only parameter `path`:

    __call__(image, *, path: pathlib.Path | None = None)

and the labeller (`ssa.labeller`) then passes the image's path relative to the dataset's image
folder (the same relative path the outputs mirror). Segmentors without that parameter are called
with the image alone. `accepts_path` is the one place that decides. Every mask source takes
`generate(image, *, path=None)` (`ssa.masks.base.MaskSource`; plug-ins without `path` are
wrapped, `ssa.masks.base.RecordListSource`).

Ways to provide one without editing ssa (see `ssa.segmentors.spec`): `py:<module or file.py>:
<factory>`, an entry point in the group `ssa.segmentors` whose value is such a factory, or
`labels:<folder>`. A factory may take keyword arguments (`--segmentor-arg KEY=VALUE`) and a
`device` keyword (the run's device).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ssa.errors import SSAError


@runtime_checkable
class Segmentor(Protocol):
    """A semantic segmentor: `id2label` (or `classes`) and `__call__(image) -> scores or labels`.

    image: `HWC uint8 RGB` numpy. Returns `(C, H, W)` scores or `(H, W)` class indices at the
    image's resolution, numpy or torch. Optionally `__call__(image, *, path)` (module docstring).
    """

    id2label: dict[int, str]

    def __call__(self, image: np.ndarray) -> np.ndarray | torch.Tensor: ...


def accepts_path(fn: Any) -> bool:
    """Whether a callable takes a `path` keyword (then it is given the image's relative path)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("path")
    return param is not None and param.kind in (
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    )


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


@dataclass
class BranchOutput:
    """The semantic branch on one image.

    scores: `(C, H, W) float32` class scores, or None when the segmentor gives labels only.
    labels: `(H, W) int64` class indices (outside 0..C-1 = no label).
    """

    scores: torch.Tensor | None
    labels: torch.Tensor

    @classmethod
    def from_raw(
        cls, raw: Any, num_classes: int, size: tuple[int, int], device: str | torch.device = "cpu"
    ) -> BranchOutput:
        tensor = torch.as_tensor(np.asarray(raw) if not torch.is_tensor(raw) else raw)
        tensor = tensor.to(device)
        if tensor.ndim == 3:
            if tensor.shape[0] != num_classes:
                raise SSAError(
                    f"segmentor returned {tensor.shape[0]} score channels for {num_classes} "
                    f"classes; return (C, H, W) scores with C = the number of class names"
                )
            scores = tensor.float()
            labels = scores.argmax(dim=0)
            if scores.numel() and scores.min() >= 0:
                # Non-negative scores that are all zero at a pixel: no class claims it.
                labels[scores.amax(dim=0) == 0] = 255 if num_classes <= 255 else 65535
        elif tensor.ndim == 2:
            scores, labels = None, tensor.long()
        else:
            raise SSAError(
                f"segmentor returned an array of shape {tuple(tensor.shape)}; "
                f"return (C, H, W) scores or (H, W) labels"
            )
        if tuple(labels.shape) != tuple(size):
            raise SSAError(
                f"segmentor returned a {tuple(labels.shape)} map for a {tuple(size)} image; "
                f"return maps at the image's full resolution"
            )
        return cls(scores=scores, labels=labels)


def check_num_classes(names: Sequence[str], expected: int | None, where: str) -> None:
    """Refuse a segmentor whose label count differs from the dataset's, before any image is read."""
    if expected is not None and len(names) != expected:
        raise SSAError(
            f"segmentor {where} has {len(names)} classes but the dataset has {expected}; "
            f"pass a segmentor trained on this dataset's classes (or --dataset folder)"
        )
