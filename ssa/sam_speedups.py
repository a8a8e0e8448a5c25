"""Drop-in speed-ups for segment-anything's modules that keep their outputs (up to float rounding).

`use_sdpa(image_encoder)` routes the encoder's attention through
`torch.nn.functional.scaled_dot_product_attention`, with the decomposed relative-position terms
passed as an additive mask: the same softmax(q k^T * scale + bias) v, computed by a fused kernel
(flash/memory-efficient on CUDA). Used by the fast generator on CUDA by default.

`decode_shared(mask_decoder, ...)` is `MaskDecoder.forward` for many prompts on one image: the
stock decoder `repeat_interleave`s the image embedding (+ the dense embedding, which is the same
`no_mask_embed` for every point prompt) and its positional encoding once per prompt, and the
first two-way block then projects that identical image side per prompt (keys and values of the
token->image attention, queries of the image->token attention). Here they are projected once and
broadcast; from the first block's image->token residual on the image side differs per prompt
and the stock code runs unchanged. Same outputs up to float rounding (summation order of the
GEMMs); used by the fast generator.
"""

from __future__ import annotations

import math
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


def _attention(attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """segment-anything `Attention.forward` where q or k/v may have batch 1 (broadcast).

    q: `(Bq, Nq, C)`, k/v: `(Bk, Nk, C)`, Bq and Bk equal or one of them 1; returns
    `(max(Bq, Bk), Nq, C)`. Batch-1 keys/values are attended by all queries in one GEMM.
    """
    q = attn._separate_heads(attn.q_proj(q), attn.num_heads)  # (Bq, heads, Nq, c)
    k = attn._separate_heads(attn.k_proj(k), attn.num_heads)
    v = attn._separate_heads(attn.v_proj(v), attn.num_heads)
    bq, heads, nq, c_per_head = q.shape
    if k.shape[0] == 1 and bq > 1:
        # Every prompt's tokens against the one image: (1, heads, Bq * Nq, c) @ (1, heads, c, Nk).
        flat = q.transpose(0, 1).reshape(1, heads, bq * nq, c_per_head)
        a = torch.softmax(flat @ k.permute(0, 1, 3, 2) / math.sqrt(c_per_head), dim=-1)
        out = (a @ v).reshape(heads, bq, nq, c_per_head).transpose(0, 1)
    else:
        a = torch.softmax(q @ k.permute(0, 1, 3, 2) / math.sqrt(c_per_head), dim=-1)
        out = a @ v
    return attn.out_proj(attn._recombine_heads(out))


def _first_block(layer: Any, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
                 key_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`TwoWayAttentionBlock.forward` with `keys`/`key_pe` of batch 1 (the shared image side).

    queries/query_pe: `(B, N, C)`; keys/key_pe: `(1, HW, C)`; returns `(B, N, C)`, `(B, HW, C)`.
    """
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    q = queries + query_pe
    k = keys + key_pe  # once per image, not per prompt
    queries = layer.norm2(queries + _attention(layer.cross_attn_token_to_image, q, k, keys))
    queries = layer.norm3(queries + layer.mlp(queries))
    q = queries + query_pe
    keys = layer.norm4(keys + _attention(layer.cross_attn_image_to_token, k, q, queries))
    return queries, keys


def decode_shared(
    decoder: Any,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_prompt_embeddings: torch.Tensor,
    dense_prompt_embeddings: torch.Tensor,
    multimask_output: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`decoder(...)` (a segment-anything `MaskDecoder`) for B prompts on one image.

    image_embeddings/image_pe: `(1, C, h, w)`; sparse: `(B, N, C)`; dense: `(B, C, h, w)`, the
    same for every prompt (batch 1 or stride 0, as the prompt encoder gives without mask input).
    Returns masks `(B, M, 4h, 4w)` and IoU predictions `(B, M)` as the stock forward; other
    inputs go to the stock forward.
    """
    dense = dense_prompt_embeddings
    shared = image_embeddings.shape[0] == 1 and (dense.shape[0] == 1 or dense.stride(0) == 0)
    transformer = decoder.transformer
    if not shared or len(transformer.layers) == 0:
        return decoder(image_embeddings=image_embeddings, image_pe=image_pe,
                       sparse_prompt_embeddings=sparse_prompt_embeddings,
                       dense_prompt_embeddings=dense, multimask_output=multimask_output)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)
    src = image_embeddings + dense[:1]
    b, (_, c, h, w) = tokens.shape[0], src.shape

    # TwoWayTransformer.forward, the first block on the shared image side.
    keys = src.flatten(2).permute(0, 2, 1)  # (1, hw, C)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    first, *rest = transformer.layers
    queries, keys = _first_block(first, tokens, keys, tokens, key_pe)
    for layer in rest:
        queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=key_pe)
    attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + key_pe, v=keys)
    hs = transformer.norm_final_attn(queries + attn_out)

    # MaskDecoder.predict_masks from the transformer on.
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : (1 + decoder.num_mask_tokens), :]
    upscaled = decoder.output_upscaling(keys.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :])
                            for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, mask_slice], iou_pred[:, mask_slice]
