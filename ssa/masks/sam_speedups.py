"""Drop-in speed-ups for segment-anything's modules that keep their outputs (up to float rounding).

`use_sdpa(image_encoder)` routes the encoder's attention through
`torch.nn.functional.scaled_dot_product_attention`, with the decomposed relative-position terms
passed as an additive mask: the same softmax(q k^T * scale + bias) v, computed by a fused kernel
(flash/memory-efficient on CUDA). Used by the fast generator on CUDA by default.

`chunked_attention(image_encoder)` (a context manager) runs the encoder's attention with its
relative-position terms over blocks of query rows, so the `(rows, keys)` scores that the stock
code writes, adds the two position terms to, softmaxes and reads back stay in cache instead of
making five passes over a 12 x 4096 x 4096 float matrix (800 MB) in each global block. The same
operations on the same values: outputs equal the stock encoder's to the last bit in our runs
(tested with `atol=1e-5`); faster on CPU (BENCHMARKS.md). Used by the
fast generator on CPU, where no fused kernel takes a decomposed position bias.

`decode_fused(mask_decoder, ...)` is `MaskDecoder.forward` for many point prompts on one image.
The stock decoder copies the image embedding once per prompt and then, per prompt, projects the
whole `(64*64, 256)` image side in every attention (keys and values of token->image, queries and
output of image->token) and runs the upscaling in NCHW through several elementwise passes. Only
the few tokens (7 per point prompt) differ between prompts, so the same products are taken in
another order, with the small token-side factors multiplied first:
- token->image: scores `Q_h W_k,h (keys + pe)^T` (the `q.b_k` term is constant along the softmax
  and cancels) and output `(P_h keys) W_v,h^T + b_v` (softmax rows sum to one), never `keys W_k`;
- image->token: scores `(keys + pe) (W_q,h^T K_h^T)` and output `P (V_h W_o,h^T)`, the residual
  `keys +` added by the same GEMM; the first block's image side is shared by all prompts;
- upscaling: each 2x2 stride-2 transposed convolution is one channels-last GEMM
  (`C_in -> 2*2*C_out`), LayerNorm2d a `layer_norm` over channels, GELU the decoder's own module;
  pixels stay in GEMM order until the small mask logits are put back in raster order; only the
  masks asked for (3 multimask or 1) are produced.
Same function, other summation order: logits agree with the stock decoder to about 1e-6
relative (tested with `atol=1e-5`); how many logits change sign and the seconds it saves are
in BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Iterator
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F


def _split_qkv(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """segment-anything `Attention`'s q, k, v of x `(B, H, W, C)`: `(3, B * heads, H * W, d)`."""
    b, h, w, _ = x.shape
    qkv = attn.qkv(x).reshape(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    return qkv.reshape(3, b * attn.num_heads, h * w, -1)


def _merge_heads(attn: Any, out: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """`(B * heads, H * W, d)` attention output -> `attn.proj` of it, `(B, H, W, C)`."""
    out = out.view(b, attn.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attn.proj(out)


def _sdpa_forward(self: Any, x: torch.Tensor) -> torch.Tensor:
    """segment-anything `Attention.forward` (x: `(B, H, W, C)`), attention by SDPA."""
    from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

    B, H, W, _ = x.shape
    q, k, v = _split_qkv(self, x).unbind(0)
    bias = None
    if self.use_rel_pos:
        zeros = q.new_zeros(B * self.num_heads, H * W, H * W)
        bias = add_decomposed_rel_pos(zeros, q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
    return _merge_heads(self, out, B, H, W)


def use_sdpa(image_encoder: torch.nn.Module) -> int:
    """Patch every attention module of a SAM image encoder in place; returns how many."""
    from segment_anything.modeling.image_encoder import Attention

    count = 0
    for module in image_encoder.modules():
        if isinstance(module, Attention):
            module.forward = types.MethodType(_sdpa_forward, module)
            count += 1
    return count


# Scores computed at once by the chunked encoder attention (16 MB of float32: within a
# shared L3, and large enough that each head's GEMMs have rows to spare; BENCHMARKS.md).
_SCORE_BUDGET = 1 << 22


def _chunked_forward(self: Any, x: torch.Tensor, budget: int = _SCORE_BUDGET) -> torch.Tensor:
    """segment-anything `Attention.forward` (x: `(B, H, W, C)`) over blocks of (batch x head,
    query rows) holding about `budget` scores each, with the stock arithmetic."""
    from segment_anything.modeling.image_encoder import get_rel_pos

    b, h, w, _ = x.shape
    q, k, v = _split_qkv(self, x).unbind(0)
    groups, n = q.shape[:2]
    if self.use_rel_pos:
        # add_decomposed_rel_pos's two terms, kept apart: (groups, queries, key rows/cols).
        r_q = q.reshape(groups, h, w, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, self.rel_pos_h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, self.rel_pos_w))
        rel_h, rel_w = rel_h.reshape(groups, n, h, 1), rel_w.reshape(groups, n, 1, w)
    q = q * self.scale
    k_t = k.transpose(-2, -1)
    out = v.new_empty(groups, n, v.shape[-1])
    # Query rows of one head first, then more heads: a block of many rows of few heads keeps
    # the GEMMs tall (42 rows x 12 heads ran 1.5x slower than 1024 rows x 1 head).
    rows = max(1, min(n, budget // n))
    per = max(1, budget // (rows * n))
    for g in range(0, groups, per):
        gs = slice(g, g + per)
        for i in range(0, n, rows):
            rs = slice(i, i + rows)
            scores = torch.bmm(q[gs, rs], k_t[gs])
            if self.use_rel_pos:
                grid = scores.view(scores.shape[0], scores.shape[1], h, w)
                grid.add_(rel_h[gs, rs]).add_(rel_w[gs, rs])
            torch.bmm(scores.softmax(dim=-1), v[gs], out=out[gs, rs])
    return _merge_heads(self, out, b, h, w)


@contextlib.contextmanager
def chunked_attention(image_encoder: torch.nn.Module, budget: int = _SCORE_BUDGET) -> Iterator[int]:
    """Run the encoder's attention modules chunked (see the module docstring) inside the block;
    yields how many were patched. Modules already patched (e.g. by `use_sdpa`) are left alone,
    and the stock forwards are restored on exit, so the model stays segment-anything's own."""
    from segment_anything.modeling.image_encoder import Attention

    patched = [m for m in image_encoder.modules()
               if isinstance(m, Attention) and "forward" not in vars(m)]
    for module in patched:
        module.forward = types.MethodType(partial(_chunked_forward, budget=budget), module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


def _heads(attn: Any, x: torch.Tensor, proj: torch.nn.Linear) -> torch.Tensor:
    """`proj(x)` split into heads: `(B, heads, N, d)`."""
    b, n, _ = x.shape
    return proj(x).view(b, n, attn.num_heads, -1).transpose(1, 2)


def _head_weights(attn: Any, proj: torch.nn.Linear) -> torch.Tensor:
    """A projection's weight per head: `(heads, d, C)`."""
    return proj.weight.view(attn.num_heads, -1, proj.weight.shape[1])


def token_to_image(attn: Any, q: torch.Tensor, keys: torch.Tensor, key_pe: torch.Tensor):
    """`attn(q=q, k=keys + key_pe, v=keys)` (tokens attend to the image), without projecting the
    image side: scores `Q_h W_k,h (keys + pe)^T` and values `(P_h keys) W_v,h^T + b_v` (rows of
    the softmax sum to one). q: `(B, N, C)`; keys: `(B or 1, HW, C)`; key_pe: `(1, HW, C)`."""
    b, n, c = q.shape
    qh = _heads(attn, q, attn.q_proj)  # (B, h, N, d)
    d = qh.shape[-1]
    # The query-key bias term q.b_k is constant along the softmax axis and cancels.
    a = torch.einsum("bhnd,hdc->bhnc", qh, _head_weights(attn, attn.k_proj)) / math.sqrt(d)
    a = a.reshape(b, -1, c)  # (B, h*N, C)
    if keys.shape[0] == 1:
        k0 = (keys + key_pe)[0]
        scores = (a.reshape(-1, c) @ k0.T).view(b, -1, k0.shape[0])
        probs = scores.softmax(-1)
        pk = (probs.view(-1, k0.shape[0]) @ keys[0]).view(b, -1, c)
    else:
        scores = torch.baddbmm(a @ key_pe[0].T, a, keys.transpose(1, 2))
        probs = scores.softmax(-1)
        pk = torch.bmm(probs, keys)  # (B, h*N, C)
    pk = pk.view(b, attn.num_heads, n, c)
    out = torch.einsum("bhnc,hdc->bhnd", pk, _head_weights(attn, attn.v_proj))
    out = out + attn.v_proj.bias.view(attn.num_heads, 1, -1)
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, -1))


def image_to_token(attn: Any, keys: torch.Tensor, key_pe: torch.Tensor, t: torch.Tensor,
                    tokens: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """`norm(keys + attn(q=keys + key_pe, k=t, v=tokens))` (the image attends to the tokens),
    without projecting the image side: scores `(keys + pe) (W_q,h^T K_h^T)`, output
    `P @ (V_h W_o,h^T)`, the residual added by the same GEMM. keys: `(B or 1, HW, C)`."""
    b, n, c = t.shape
    h = attn.num_heads
    kh = _heads(attn, t, attn.k_proj)  # (B, h, N, d)
    vh = _heads(attn, tokens, attn.v_proj)
    d = kh.shape[-1]
    # Columns ordered (token, head): the softmax over tokens then runs on a middle axis with
    # the heads contiguous, three times faster on CPU than over a last axis of 7.
    g = torch.einsum("hdc,bhnd->bcnh", _head_weights(attn, attn.q_proj), kh) / math.sqrt(d)
    g = g.reshape(b, c, n * h)
    bias = torch.einsum("hd,bhnd->bnh", attn.q_proj.bias.view(h, d), kh).reshape(b, 1, n * h)
    bias = bias / math.sqrt(d)
    wo = attn.out_proj.weight.view(c, h, d)
    # Each head's softmax rows sum to one, so b_o / h on every row of M adds b_o once.
    m = torch.einsum("bhnd,chd->bnhc", vh, wo).reshape(b, n * h, c) + attn.out_proj.bias / h
    hw = keys.shape[1]
    if keys.shape[0] == 1:
        scores = torch.matmul((keys + key_pe)[0], g) + bias  # (B, HW, h*N)
    else:
        scores = torch.baddbmm(torch.matmul(key_pe[0], g) + bias, keys, g)
    probs = scores.view(b, hw, n, h).softmax(-2).view(b, hw, n * h)
    out = torch.baddbmm(keys.expand(b, -1, -1), probs, m)
    return norm(out)


def decode_fused(
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
    inputs (a dense embedding per prompt, from mask inputs) go to the stock forward.
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
    b, (h, w) = tokens.shape[0], src.shape[-2:]
    # TwoWayTransformer.forward; the image side stays (1, hw, C) until the first residual.
    keys = src.flatten(2).permute(0, 2, 1).contiguous()
    key_pe = image_pe.flatten(2).permute(0, 2, 1).contiguous()
    queries, query_pe = tokens, tokens
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        queries = layer.norm2(queries + token_to_image(layer.cross_attn_token_to_image,
                                                        queries + query_pe, keys, key_pe))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = image_to_token(layer.cross_attn_image_to_token, keys, key_pe,
                               queries + query_pe, queries, layer.norm4)
    attn_out = token_to_image(transformer.final_attn_token_to_image, queries + query_pe, keys,
                               key_pe)
    hs = transformer.norm_final_attn(queries + attn_out)

    # MaskDecoder.predict_masks from the transformer on.
    iou_pred = decoder.iou_prediction_head(hs[:, 0, :])
    picked = range(1, decoder.num_mask_tokens) if multimask_output else range(1)
    hyper = torch.stack([decoder.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in picked],
                        dim=1)  # (B, M, C/8)
    masks = _upscale_masks(decoder.output_upscaling, keys.expand(b, -1, -1), hyper, h, w)
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    return masks, iou_pred[:, mask_slice]


def _act_(act: Any, x: torch.Tensor) -> torch.Tensor:
    """`act(x)`, written into `x` where `act` is an `nn.GELU` (the same kernel: a fresh
    output of this size costs more in allocation than the GELU itself)."""
    if type(act) is torch.nn.GELU:
        return torch._C._nn.gelu(x, approximate=act.approximate, out=x)
    return act(x)


def _upscale_masks(
    up: Any, keys: torch.Tensor, hyper: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """`hyper @ output_upscaling(keys as (B, C, h, w))` as `(B, M, 4h, 4w)`, channels last: each
    2x2 stride-2 transposed convolution is one GEMM per pixel (`C_in -> 2*2*C_out`), the
    LayerNorm2d is `layer_norm` over the channels, and the pixels stay in GEMM order
    `(i, j, di, dj, di2, dj2)` until the small mask logits are put back in raster order."""
    conv1, norm, act1, conv2, act2 = up
    b = keys.shape[0]

    def as_gemm(conv: torch.nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor, int]:
        # Output column (di, dj, c_out) of one input pixel; stride = kernel, so no overlaps.
        cin, cout, kh, kw = conv.weight.shape
        weight = conv.weight.permute(0, 2, 3, 1).reshape(cin, kh * kw * cout)
        return weight, conv.bias.repeat(kh * kw), cout

    w1, b1, c1 = as_gemm(conv1)
    x = torch.addmm(b1, keys.reshape(-1, keys.shape[-1]), w1).view(-1, c1)
    x = _act_(act1, F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
    w2, b2, c2 = as_gemm(conv2)
    x = _act_(act2, torch.addmm(b2, x, w2)).view(b, -1, c2)  # (B, hw*16, C/8)
    m = hyper.shape[1]
    masks = torch.bmm(x, hyper.transpose(1, 2))  # (B, hw*16, M)
    # Pixel (i, j, di, dj, di2, dj2) is row 4i + 2di + di2, column 4j + 2dj + dj2.
    masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return masks.reshape(b, m, 4 * h, 4 * w)
