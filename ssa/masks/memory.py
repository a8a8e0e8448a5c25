"""GPU memory of the fast generator's decoder: how many point prompts one decoder call may take.

The image encoder's peak does not depend on the prompts; the decoder's grows with the prompt
batch: per prompt, `ssa.masks.sam_speedups.decode_fused` holds the image side of the two-way
transformer after the first residual (`(h*w, C)` per prompt, three such tensors around the
image->token update) and the upscaling's activations (after the first transposed
convolution `(2h*2w, C/4)` twice, after the second `(4h*4w, C/8)` twice), then the candidates'
low-resolution logits and the bool grids of their bounds. `per_prompt_bytes` adds these up from
the shapes (float32 bytes, which also bounds the mixed tensors of autocast), and
`prompt_batch_for` turns free memory into a batch size. Both are pure functions of numbers, so
the rule is tested without a GPU; `FastMaskGenerator` reads the numbers from
`torch.cuda.mem_get_info` and `torch.cuda.memory_allocated` before each decoder call.
"""

from __future__ import annotations

# The generator's default budget on CUDA (bytes): the goal for vit_h at the SSA preset.
DEFAULT_BUDGET = 8 * 1024**3
# Bounds of an automatic prompt batch: below 16 the GEMMs starve, past 1024 nothing is gained.
MIN_BATCH, MAX_BATCH = 16, 1024


def per_prompt_bytes(embed_hw: tuple[int, int] = (64, 64), channels: int = 256,
                     masks_per_prompt: int = 3, value_bytes: int = 4) -> int:
    """Peak bytes one point prompt adds inside a decoder call and its filters.

    embed_hw: the image embedding's `(h, w)` (64x64 for SAM at 1024); channels: the decoder's
    transformer width (256 for every SAM); masks_per_prompt: 3 (multimask) or 1."""
    h, w = embed_hw
    hw = h * w
    transformer = 3 * hw * channels  # keys, the residual sum and its LayerNorm
    upscale = 2 * (4 * hw) * (channels // 4) + 2 * (16 * hw) * (channels // 8)
    logits = masks_per_prompt * 16 * hw * 2  # the logits and their float32 copy
    values = (transformer + upscale + logits) * value_bytes
    # Bounds: above-level bool grids, block windows and their ORs per candidate (about 8).
    grids = masks_per_prompt * 16 * hw * 8
    return values + grids


def prompt_batch_for(free_bytes: int, allocated_bytes: int, per_prompt: int,
                     budget_bytes: int | None = DEFAULT_BUDGET, lo: int = MIN_BATCH,
                     hi: int = MAX_BATCH) -> int:
    """Prompts per decoder call that fit: the room is what the device has free
    (`free_bytes`: `mem_get_info`'s free plus the allocator's cached, unused bytes) and, where a
    budget is set, the budget less what is allocated now (`allocated_bytes`: weights, image
    features, candidates kept so far); `room // per_prompt` clamped to `[lo, hi]`. `lo` wins
    where nothing fits (the call may then run out of memory and the image is recorded as
    failed, never silently skipped)."""
    if per_prompt <= 0:
        raise ValueError(f"per_prompt {per_prompt!r} must be a positive number of bytes")
    room = free_bytes
    if budget_bytes is not None:
        room = min(room, budget_bytes - allocated_bytes)
    return int(max(lo, min(hi, room // per_prompt)))


def cuda_memory(device: object) -> tuple[int, int]:
    """`(free_bytes, allocated_bytes)` of a CUDA device as `prompt_batch_for` reads them."""
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free + cached, torch.cuda.memory_allocated(device)
