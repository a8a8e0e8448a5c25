"""Drop-in speed-ups for segment-anything's modules that keep their outputs (up to float rounding).

`use_sdpa(image_encoder)` routes the encoder's attention through
`torch.nn.functional.scaled_dot_product_attention`, with the decomposed relative-position terms
passed as an additive mask: the same softmax(q k^T * scale + bias) v, computed by a fused kernel
(flash/memory-efficient on CUDA). Used by the fast generator on CUDA by default.
"""

from __future__ import annotations

import types
from typing import Any

import torch


def _sdpa_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """segment-anything `Attention.forward` (x: `(B, H, W, C)`), attention by SDPA."""
    import torch.nn.functional as F
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    B, H, W, _ = x.shape
    qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
    bias = None
    if self.use_rel_pos:
        zeros = q.new_zeros(B * self.num_heads, H * W, H * W)
        bias = add_decomposed_rel_pos(zeros, q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    out = out.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
    return self.proj(out)


def use_sdpa(image_encoder: torch.nn.Module) -> int:
    """Patch every attention module of a SAM image encoder in place; returns how many."""
    from segment_anything.modeling.image_encoder import Attention

    count = 0
    for module in image_encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_sdpa_forward, module)
            count += 1
    return count
