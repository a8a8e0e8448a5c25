"""Semantic voting: pure functions from masks and the branch's labels to per-mask classes.

The SSA rule ("hard" voting): each mask takes the top-1 class of the branch's argmax labels over
its pixels; ties go to the lowest class index; pixels whose branch label is "no label" (255, or
any value outside 0..C-1) do not vote, and a mask without votes gets no class. The label map is
the branch's map with the masks painted over it, largest area first, so smaller masks win where
masks overlap; a mask painted with no class leaves the pixels under it as they were.

Two more policies, each a pure function below, change who wins a mask:
- "soft" voting: a mask takes the class with the highest mean probability over its pixels (the
  branch's `(C, H, W)` scores, softmaxed first unless they already are per-pixel probabilities;
  from a `BranchOutput` the full-resolution probabilities are made and summed in bands of rows,
  so memory never holds C x H x W floats);
- a minimum vote share T: a mask whose class holds less than T of its voting pixels (branch
  labels equal to that class over pixels with a label) is not trusted and paints the branch's
  own pixel labels instead of one class, so small classes are not swallowed by large masks.

Everything runs on the tensors' device in a few batched passes: the work is chunked over masks
(and over rows of the score map) only to bound memory, never a Python loop over full-resolution
arrays per mask.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch

from ssa.config import VOTE_POLICIES as POLICIES

if TYPE_CHECKING:
    from ssa.io import RleStack

NO_CLASS = -1
_BRANCH = -2
# Cap on the elements materialised at once (mask pixels x chunk), about 256 MB of int64.
_CHUNK_ELEMENTS = 1 << 25
# Pixels per pass of hard voting and painting: their one-hot (x 32 classes, int8) and int64
# indices stay within about 64 MB however large the image.
_PIXELS_PER_PASS = 1 << 21


@dataclass
class VoteResult:
    """Per-mask votes and the painted label map.

    classes:   `(N,) int64`, the class each mask takes, NO_CLASS where it has no votes or its
               vote share is below the minimum (see `trusted`).
    counts:    `(N, C) float32`, the votes (pixel counts, or summed probabilities for soft voting).
    proposals: `(N, k) int64`, classes ranked by vote share, NO_CLASS past the voted ones.
    shares:    `(N, k) float32`, the vote share of each proposal (0 past the voted ones).
    label_map: `(H, W)`, the branch's labels with the voted masks painted over them, in the
               labels' integer dtype when it holds every class (uint8 for `BranchOutput`
               labels of up to 255 classes), else int64 (see `paint`).
    trusted:   `(N,) bool`, False where the mask's class held less than the minimum vote share
               (such a mask paints the branch's own labels); None when no minimum was set.
    """

    classes: torch.Tensor
    counts: torch.Tensor
    proposals: torch.Tensor
    shares: torch.Tensor
    label_map: torch.Tensor
    trusted: torch.Tensor | None = None


def _column_major(masks: torch.Tensor) -> bool:
    """Whether an `(N, H, W)` stack is stored column-major per mask: the transposed view of a
    contiguous `(N, W, H)` tensor, as `ssa.masks.fast_amg` builds it for RLE encoding."""
    return (masks.dim() == 3 and not masks.is_contiguous()
            and masks.transpose(1, 2).is_contiguous())


def _flat_masks(masks: torch.Tensor) -> torch.Tensor:
    """`(N, H * W)` pixels of an `(N, H, W)` stack in its storage order (a view, never a copy of
    the stack for a row- or column-major one). Voting is the same under any pixel order as long
    as labels and scores are flattened alike (`_flat_pixels`)."""
    num_masks, height, width = masks.shape
    if _column_major(masks):
        return masks.transpose(1, 2).reshape(num_masks, height * width)
    return masks.reshape(num_masks, height * width)


def _flat_pixels(plane: torch.Tensor, column_major: bool) -> torch.Tensor:
    """`(..., H, W)` -> `(..., H * W)` in the pixel order of `_flat_masks`."""
    if column_major:
        plane = plane.transpose(-1, -2)
    return plane.reshape(*plane.shape[:-2], -1)


def _unflat_pixels(flat: torch.Tensor, shape: tuple[int, int], column_major: bool):
    """Inverse of `_flat_pixels` for one `(H * W,)` plane -> `(H, W)` (contiguous)."""
    if column_major:
        return flat.view(shape[1], shape[0]).t().contiguous()
    return flat.view(shape)


def _mask_chunks(num_masks: int, num_pixels: int) -> list[slice]:
    step = max(1, _CHUNK_ELEMENTS // max(num_pixels, 1))
    return [slice(i, min(i + step, num_masks)) for i in range(0, num_masks, step)]


def _pixel_chunks(num_pixels: int) -> list[slice]:
    return [slice(i, min(i + _PIXELS_PER_PASS, num_pixels))
            for i in range(0, num_pixels, _PIXELS_PER_PASS)]


def hard_vote_counts(masks: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Votes per mask and class: `(N, C) float32` counts of each branch label inside each mask.

    masks: `(N, H, W) bool`; labels: `(H, W)` integer class indices (others do not vote).
    One integer GEMM per chunk of pixels: the stack read as `(N, pixels) int8` (a view) times
    the one-hot `(pixels, K) int8` of the classes present, int32 accumulation, so the counts are
    exact and the stack is read once per 32 classes present (`_onehot_counts`). Pixels go in
    chunks of `_PIXELS_PER_PASS`, so the one-hot and the int64 class indices stay small
    whatever the image's size.
    """
    num_masks = masks.shape[0]
    counts = torch.zeros(num_masks, num_classes, dtype=torch.float32, device=masks.device)
    if num_masks == 0:
        return counts
    column_major = _column_major(masks)
    flat_labels = _flat_pixels(labels.to(masks.device), column_major)
    chunks = _pixel_chunks(flat_labels.numel())
    seen = torch.zeros(num_classes, dtype=torch.bool, device=masks.device)
    for chunk in chunks:
        part = flat_labels[chunk].long()
        part = part[(part >= 0) & (part < num_classes)]
        seen |= torch.bincount(part, minlength=num_classes)[:num_classes] > 0
    present = seen.nonzero(as_tuple=True)[0]
    if len(present) == 0:
        return counts
    # Compact class index per pixel (-1: does not vote).
    compact = torch.full((num_classes,), -1, dtype=torch.int64, device=masks.device)
    compact[present] = torch.arange(len(present), device=masks.device)
    flat_masks = _flat_masks(masks)
    found = torch.zeros(num_masks, len(present), dtype=torch.int64, device=masks.device)
    for chunk in chunks:
        part = flat_labels[chunk].long()
        valid = (part >= 0) & (part < num_classes)
        index = torch.where(valid, compact[part.clamp(0, num_classes - 1)], -1)
        # CUDA's int8 GEMM wants a row-major operand: `_onehot_counts` copies a chunk that
        # is not one (N x chunk bytes, bounded).
        part_masks = flat_masks[:, chunk]
        try:
            found += _onehot_counts(part_masks, index, len(present))
        except (RuntimeError, NotImplementedError) as exc:
            # A kernel refusing a shape the plan allows (a new GPU, a torch build): exact
            # counts still, by the slower path, and said once.
            first = (str(exc).splitlines() or [""])[0][:200]
            _warn_once("gemm-error", f"voting counts by bincount: torch._int_mm failed on "
                       f"{part_masks.device.type} for shape {tuple(part_masks.shape)} ({first})")
            found += _bincount_counts(part_masks, index, len(present)).to(found.dtype)
    counts[:, present] = found.float()
    return counts


# Classes counted per pass over the stack (one-hot columns of one integer GEMM).
_CLASSES_PER_PASS = 32


@dataclass(frozen=True)
class IntMMPlan:
    """How one `(rows, k) x (k, n)` int8 count GEMM runs (`int_mm_plan`).

    path: `"int_mm"` (`torch._int_mm`) or `"bincount"` (`_bincount_counts`, exact too, slower);
    pad_rows/pad_k/pad_n: zero rows of the stack, zero pixels (columns of the stack and rows of
    the one-hot) and zero one-hot columns added so the GEMM's shape rules hold (zeros add
    nothing to any count); reason: why the bincount path was chosen ("" for int_mm)."""

    path: str
    pad_rows: int = 0
    pad_k: int = 0
    pad_n: int = 0
    reason: str = ""


# torch's CUDA `_int_mm` (cuBLASLt int8 GEMM) refuses: rows <= 16, k or n not a positive
# multiple of 8. The CPU kernel takes any shape.
_CUDA_MIN_ROWS = 17
_CUDA_MULTIPLE = 8


def int_mm_plan(device_type: str, rows: int, k: int, n: int, has_int_mm: bool = True) -> IntMMPlan:
    """The count GEMM's path for a device and shape, decided up front (a pure function, so the
    CUDA rule is tested without a GPU): the CPU runs `_int_mm` as it is; CUDA pads rows to at
    least 17 and k, n to multiples of 8; other devices (no int8 GEMM in torch) and torch builds
    without `_int_mm` take the bincount path."""
    if not has_int_mm:
        return IntMMPlan("bincount", reason="this torch build has no torch._int_mm")
    if device_type == "cpu":
        return IntMMPlan("int_mm")
    if device_type == "cuda":
        return IntMMPlan(
            "int_mm",
            pad_rows=max(0, _CUDA_MIN_ROWS - rows),
            pad_k=(-k) % _CUDA_MULTIPLE if k > 0 else _CUDA_MULTIPLE,
            pad_n=(-n) % _CUDA_MULTIPLE if n > 0 else _CUDA_MULTIPLE,
        )
    return IntMMPlan("bincount", reason=f"torch has no int8 GEMM on {device_type} devices")


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Log a fallback to a slower path once per process for each kind (`key`)."""
    if key not in _warned:
        _warned.add(key)
        logging.getLogger(__name__).warning(message)


def _onehot_counts(flat_masks: torch.Tensor, index: torch.Tensor, k: int,
                   device_type: str | None = None) -> torch.Tensor:
    """`(N, k) int32`: pixels of each mask (`(N, P) bool`) whose `index` (`(P,)`, -1 = none) is
    each of 0..k-1, by `torch._int_mm` on the bool stack's bytes (0/1 read as int8), padded with
    zeros where `int_mm_plan` says so (CUDA's shape rules), or by bincount where it says so
    (logged once). device_type: the rules to follow (default the tensors'; tests pass "cuda"
    to run the padded path on the CPU)."""
    num_masks, num_pixels = flat_masks.shape
    device = flat_masks.device
    device_type = device_type or device.type
    width0 = min(_CLASSES_PER_PASS, k)
    plan = int_mm_plan(device_type, num_masks, num_pixels, -(-width0 // 8) * 8,
                       hasattr(torch, "_int_mm"))
    if plan.path == "bincount":
        _warn_once("plan", f"voting counts by bincount instead of an int8 GEMM: {plan.reason}")
        return _bincount_counts(flat_masks, index, k).to(torch.int32)
    stack = flat_masks.view(torch.int8)
    if plan.pad_rows or plan.pad_k or (device_type == "cuda" and not stack.is_contiguous()):
        padded = torch.zeros(num_masks + plan.pad_rows, num_pixels + plan.pad_k,
                             dtype=torch.int8, device=device)
        padded[:num_masks, :num_pixels] = stack
        stack = padded
    if plan.pad_k:
        index = torch.cat([index, index.new_full((plan.pad_k,), -1)])
    out = torch.empty(num_masks, k, dtype=torch.int32, device=device)
    for first in range(0, k, _CLASSES_PER_PASS):
        width = min(_CLASSES_PER_PASS, k - first)
        cols = -(-width // 8) * 8  # GEMM kernels want multiples of 8 columns
        if device_type == "cuda":  # cuBLASLt reads the right operand column-major
            onehot = torch.zeros(cols, index.numel(), dtype=torch.int8, device=device).t()
        else:
            onehot = torch.zeros(index.numel(), cols, dtype=torch.int8, device=device)
        rows = ((index >= first) & (index < first + width)).nonzero(as_tuple=True)[0]
        onehot[rows, index[rows] - first] = 1
        # All masks in one call: the stack is a view and the output small, so nothing to chunk.
        out[:, first : first + width] = torch._int_mm(stack, onehot)[:num_masks, :width]
    return out


def _bincount_counts(flat_masks: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """`_onehot_counts` by one bincount of `mask * k + class` keys per chunk of masks."""
    num_masks = flat_masks.shape[0]
    valid = index >= 0
    counts = torch.zeros(num_masks * k, dtype=torch.int64, device=flat_masks.device)
    for chunk in _mask_chunks(num_masks, index.numel()):
        rows, cols = (flat_masks[chunk] & valid).nonzero(as_tuple=True)
        counts += torch.bincount((rows + chunk.start) * k + index[cols], minlength=counts.numel())
    return counts.view(num_masks, k)


def rank_votes(counts: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-1 class and the top-k proposals with their shares from `(N, C)` votes.

    Ties go to the lowest class index; classes without votes are not proposed.
    """
    num_masks, num_classes = counts.shape
    k = max(1, min(top_k, num_classes))
    # A stable descending sort keeps the lowest index first among equal votes.
    order = torch.sort(counts, dim=1, descending=True, stable=True).indices[:, :k]
    top = torch.gather(counts, 1, order)
    total = counts.sum(dim=1, keepdim=True)
    shares = torch.where(total > 0, top / total.clamp_min(1e-12), torch.zeros_like(top))
    voted = top > 0
    proposals = torch.where(voted, order, torch.full_like(order, NO_CLASS))
    shares = torch.where(voted, shares, torch.zeros_like(shares))
    classes = proposals[:, 0] if num_masks else torch.zeros(0, dtype=torch.int64)
    return classes, proposals, shares.float()


def paint(
    masks: torch.Tensor,
    classes: torch.Tensor,
    base: torch.Tensor,
    areas: torch.Tensor | None = None,
    keep_branch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paint each mask's class over `base`, largest area first, so smaller masks win.

    Masks of equal area are painted in their given order (a later one wins). Masks whose class is
    NO_CLASS are skipped. A mask flagged in `keep_branch` paints `base`'s own pixels (it is
    painted, so it covers larger masks under it, but with the branch's labels).
    masks: `(N, H, W) bool`; classes: `(N,) int64`; base: `(H, W)`; keep_branch: `(N,) bool`.
    Returns `(H, W)` in base's integer dtype when that holds every class painted (uint8 for
    `BranchOutput.labels` of up to 255 classes: 1 byte per pixel), else int64.
    """
    num_masks = masks.shape[0]
    dtype = _map_dtype(base, classes)
    if num_masks == 0:
        return base.to(dtype, copy=True)
    if areas is None:
        areas = mask_areas(masks)
    order = torch.sort(areas, descending=True, stable=True).indices
    # rank[i] = 1 + painting position of mask i; the winner at a pixel is its highest rank.
    rank = torch.empty(num_masks, dtype=torch.int32, device=masks.device)
    rank[order] = torch.arange(1, num_masks + 1, dtype=torch.int32, device=masks.device)
    painted = classes >= 0
    keep = None if keep_branch is None else keep_branch.to(masks.device)
    if keep is not None:
        painted = painted | keep
    rank = torch.where(painted, rank, torch.zeros_like(rank))
    flat = _flat_masks(masks)
    shape = (int(base.shape[0]), int(base.shape[1]))
    if masks.device.type == "cpu":
        return _paint_cpu(flat, rank, classes, base, keep, dtype, _column_major(masks), shape)
    out = base.clone().long()
    winner = torch.zeros(flat.shape[1], dtype=torch.int32, device=masks.device)
    for chunk in _mask_chunks(num_masks, base.numel()):
        weighted = flat[chunk].to(torch.int32) * rank[chunk].view(-1, 1)
        winner = torch.maximum(winner, weighted.amax(dim=0))
    winner = _unflat_pixels(winner, shape, _column_major(masks))
    by_rank = torch.zeros(num_masks + 1, dtype=torch.int64, device=masks.device)
    by_rank[rank.long()] = classes.long()
    if keep is not None:
        # A sentinel below NO_CLASS marks "the branch's own label here".
        by_rank[rank.long()] = torch.where(keep, _BRANCH, classes.long())
    painted_map = by_rank[winner.long()]
    painted_map = torch.where(painted_map == _BRANCH, out, painted_map)
    return torch.where(winner > 0, painted_map, out).to(dtype)


def _map_dtype(base: torch.Tensor, classes: torch.Tensor) -> torch.dtype:
    """base's integer dtype when it holds every class (and base's own values), else int64."""
    if base.dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64):
        return torch.int64
    top = int(classes.max()) if classes.numel() else 0
    return base.dtype if top <= torch.iinfo(base.dtype).max else torch.int64


def _paint_cpu(flat, rank, classes, base, keep, dtype, column_major, shape) -> torch.Tensor:
    """`paint` on the CPU in numpy with the narrowest types: the winning rank per pixel (1 or 2
    bytes), then two table lookups (class by rank, "keep the branch's label" by rank)."""
    import numpy as np

    num_masks = flat.shape[0]
    winner = _winner_cpu(flat, rank)
    winner = winner.reshape(shape[1], shape[0]).T if column_major else winner.reshape(shape)
    ranks = rank.numpy().astype(np.int64)
    base_np = base.to(dtype).numpy()
    by_rank = np.zeros(num_masks + 1, dtype=base_np.dtype)
    by_rank[ranks] = classes.clamp_min(0).to(dtype).numpy()
    kept = np.zeros(num_masks + 1, dtype=bool)
    if keep is not None:
        kept[ranks[keep.numpy()]] = True
    kept[0] = True  # no mask: the branch's label
    out = np.where(kept[winner], base_np, by_rank[winner])
    return torch.from_numpy(np.ascontiguousarray(out))


def mask_areas(masks: torch.Tensor) -> torch.Tensor:
    """`(N,) int64` pixel counts of an `(N, H, W) bool` stack, without an int64 copy of it."""
    if masks.device.type == "cpu":
        import numpy as np

        flat = _flat_masks(masks).numpy()
        return torch.from_numpy(np.count_nonzero(flat, axis=1).astype(np.int64))
    return _flat_masks(masks).sum(dim=1)


def _winner_cpu(masks: torch.Tensor, rank: torch.Tensor):
    """`(P,)` uint8, uint16 or int32 (the narrowest that holds N): the highest `rank` among the masks `(N, P) bool` covering each pixel
    (0: none).

    numpy's multiply-and-max over chunks of the bool stack, in the narrowest integer type that
    holds the ranks: as fast on the CPU as filling mask by mask, and one vectorised pass.
    """
    import numpy as np

    num_masks = masks.shape[0]
    dtype = np.uint8 if num_masks < 256 else np.uint16 if num_masks < 65536 else np.int32
    ranks = rank.cpu().numpy().astype(dtype)
    stack = masks.numpy()
    winner = np.zeros(stack.shape[1:], dtype=dtype)
    for chunk in _mask_chunks(num_masks, winner.size):
        np.maximum(winner, (stack[chunk] * ranks[chunk, None]).max(axis=0), out=winner)
    return winner


@runtime_checkable
class ScoreBands(Protocol):
    """Full-resolution class probabilities handed out in bands of rows, never whole
    (`ssa.segmentors.base.BranchOutput` is one).

    probability_bands() yields `(r0, r1, probs)`: rows r0..r1-1 of the `(C, H, W)` map as a
    `(C, r1 - r0, W) float32` tensor, covering the H rows in order.
    """

    def probability_bands(self) -> Iterator[tuple[int, int, torch.Tensor]]: ...


def soft_vote_counts(masks: torch.Tensor, scores: torch.Tensor | ScoreBands) -> torch.Tensor:
    """Summed class probabilities per mask: `(N, C) float32` (divide by the area for the mean).

    masks: `(N, H, W) bool`; scores: `(C, H, W)` probabilities or logits (see `as_probabilities`),
    or a `ScoreBands` (then the sum runs band by band: memory grows with the band, not with
    C x H x W; the sums equal the whole map's up to float32 summation order).
    The argmax of the sum is the argmax of the mean: every class shares the mask's area.
    """
    num_masks = masks.shape[0]
    if isinstance(scores, ScoreBands):
        counts = None
        for r0, r1, probs in scores.probability_bands():
            if counts is None:
                counts = torch.zeros((num_masks, probs.shape[0]), dtype=torch.float32,
                                     device=masks.device)
            band = masks[:, r0:r1].reshape(num_masks, -1)  # a copy only for column-major
            flat = probs.to(masks.device).reshape(probs.shape[0], -1)
            for chunk in _mask_chunks(num_masks, flat.shape[1]):
                counts[chunk] += band[chunk].to(flat.dtype) @ flat.T
        if counts is None:  # an image without rows
            return torch.zeros((num_masks, 0), dtype=torch.float32, device=masks.device)
        return counts
    probs = _flat_pixels(as_probabilities(scores), _column_major(masks)).to(masks.device)
    counts = torch.zeros((num_masks, probs.shape[0]), dtype=torch.float32, device=masks.device)
    flat_masks = _flat_masks(masks)
    for chunk in _mask_chunks(num_masks, probs.shape[1]):
        counts[chunk] = flat_masks[chunk].to(probs.dtype) @ probs.T
    return counts


def are_probabilities(scores: torch.Tensor, atol: float = 1e-3) -> bool:
    """Whether `(C, ...)` scores are per-pixel probabilities: non-negative, summing to 1 over
    classes within `atol` at every pixel (bilinear interpolation keeps both, so working-
    resolution scores decide for their full-resolution upsampling)."""
    return bool(
        scores.numel() and scores.min() >= 0 and (scores.sum(dim=0) - 1).abs().max() <= atol
    )


def as_probabilities(scores: torch.Tensor, atol: float = 1e-3) -> torch.Tensor:
    """`(C, H, W)` scores as float32 probabilities: kept when they already are per-pixel
    probabilities (`are_probabilities`), else softmaxed over classes."""
    scores = scores.float()
    return scores if are_probabilities(scores, atol) else scores.softmax(dim=0)


def class_shares(
    masks: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """The share of each mask's voting pixels (branch label in 0..C-1) labelled with its class.

    `(N,) float32`; 0 for masks of class NO_CLASS or without voting pixels.
    """
    counts = hard_vote_counts(masks, labels, num_classes)
    total = counts.sum(dim=1)
    picked = torch.gather(counts, 1, classes.clamp_min(0).view(-1, 1)).view(-1)
    share = picked / total.clamp_min(1)
    return torch.where((classes >= 0) & (total > 0), share, torch.zeros_like(share))


def vote(
    masks: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    top_k: int = 3,
    areas: torch.Tensor | None = None,
    scores: torch.Tensor | ScoreBands | None = None,
    policy: str = "hard",
    min_vote_share: float = 0.0,
) -> VoteResult:
    """Vote on one image with a policy (see the module docstring).

    masks: `(N, H, W) bool`, or an `ssa.io.RleStack` (hard voting then runs mask by mask on
    the CPU, memory by pixels: `_vote_rle`; soft voting decodes it whole);
    labels: `(H, W)` the branch's class indices (any integer dtype);
    scores: the branch's `(C, H, W)` scores or a `ScoreBands` (e.g. the `BranchOutput`),
    needed by `policy="soft"`; min_vote_share in [0, 1], 0 = off.
    """
    from ssa.errors import SSAError
    from ssa.io import RleStack

    if policy not in POLICIES:
        raise SSAError(f"unknown voting policy {policy!r}; choose one of: {', '.join(POLICIES)}")
    if not 0.0 <= min_vote_share <= 1.0:
        raise SSAError(f"--min-vote-share {min_vote_share} must lie in [0, 1]")
    if isinstance(masks, RleStack):
        if policy == "hard":
            return _vote_rle(masks, labels, num_classes, top_k, areas, min_vote_share)
        # Soft votes sum probabilities band by band of rows, which RLE (column-major) cannot
        # give mask by mask: these masks are decoded whole (N x H x W bytes).
        masks = torch.from_numpy(masks.numpy()).to(labels.device)
    if policy == "soft":
        if scores is None:
            raise SSAError(
                "--vote soft needs class scores but the segmentor gives labels only; "
                "use --vote hard, or return (C, H, W) scores from the segmentor"
            )
        counts = soft_vote_counts(masks, scores)
    else:
        counts = hard_vote_counts(masks, labels, num_classes)
    classes, proposals, shares = rank_votes(counts, top_k)
    trusted = None
    if min_vote_share > 0:
        share = (
            shares[:, 0] if policy == "hard" else class_shares(masks, labels, classes, num_classes)
        )
        trusted = (share >= min_vote_share) | (classes < 0)
        classes = torch.where(trusted, classes, torch.full_like(classes, NO_CLASS))
    keep = None if trusted is None else ~trusted
    label_map = paint(masks, classes, labels, areas, keep_branch=keep)
    return VoteResult(classes, counts, proposals, shares, label_map, trusted)


def _vote_rle(
    masks: RleStack,
    labels: torch.Tensor,
    num_classes: int,
    top_k: int,
    areas: torch.Tensor | None,
    min_vote_share: float,
) -> VoteResult:
    """Hard voting (`vote`, the same result) on masks kept as RLE, one mask at a time: each
    mask's pixels as column-major indices (`RleStack.indices`, area x 4 bytes), their branch
    labels counted (`np.bincount`), then painted largest first into one column-major copy of
    the labels. Memory: the labels twice and one mask's indices, whatever N; time grows with
    the masks' summed area."""
    import numpy as np

    num_masks = len(masks)
    base = labels.cpu()
    labels_t = np.ascontiguousarray(base.numpy().T).reshape(-1)  # RLE's pixel order
    counts_np = np.zeros((num_masks, num_classes), dtype=np.float32)
    for k in range(num_masks):
        votes = labels_t[masks.indices(k)]
        if votes.dtype.kind == "i":
            votes = votes[votes >= 0]
        found = np.bincount(votes, minlength=num_classes)[:num_classes]
        counts_np[k] = found
    counts = torch.from_numpy(counts_np)
    classes, proposals, shares = rank_votes(counts, top_k)
    trusted = None
    if min_vote_share > 0:
        trusted = (shares[:, 0] >= min_vote_share) | (classes < 0)
        classes = torch.where(trusted, classes, torch.full_like(classes, NO_CLASS))
    dtype = _map_dtype(base, classes)
    out_t = labels_t.astype(torch.empty(0, dtype=dtype).numpy().dtype)
    if num_masks:
        if areas is None:
            areas = torch.tensor([int(masks.runs(k)[1::2].sum()) for k in range(num_masks)])
        order = torch.sort(areas.cpu(), descending=True, stable=True).indices.tolist()
        cls = classes.tolist()
        keep = [False] * num_masks if trusted is None else (~trusted).tolist()
        for k in order:  # largest first: a later (smaller) mask wins
            if keep[k]:  # an untrusted mask paints the branch's own labels over larger ones
                index = masks.indices(k)
                out_t[index] = labels_t[index]
            elif cls[k] >= 0:
                out_t[masks.indices(k)] = cls[k]
    height, width = masks.size
    label_map = torch.from_numpy(np.ascontiguousarray(out_t.reshape(width, height).T))
    return VoteResult(classes, counts, proposals, shares, label_map, trusted)
