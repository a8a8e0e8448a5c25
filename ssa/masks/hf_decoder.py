"""One image, many prompts: transformers' SAM-family mask decoders with the image side shared.

transformers' `SamMaskDecoder`, `SamHQMaskDecoder`, `Sam2MaskDecoder` and `EdgeTamMaskDecoder`
copy the image embedding, its positional encoding and (SAM 2 / EdgeTAM) both high-resolution
feature maps once per prompt (`repeat_interleave`), and every call recomputes the image-wide
positional encoding. `SharedImageDecoder` takes the same modules and weights and, per encoded
image, computes once what no prompt changes (`prepare`): the positional encoding, the image
embedding plus the no-mask dense embedding, the first two-way block's image-side projections
(keys and values of token->image, queries of image->token), the high-resolution features
(SAM 2) and the HQ features (SAM-HQ); per batch of prompts it runs only what depends on them,
with the shared tensors broadcast (never copied). Two modes:

- `"exact"`: transformers' own operations on the same values in the same order (a GEMM row or an
  attention head gives the same bits whether its batch holds one copy or 64): logits and IoUs
  equal the model's bit for bit (tests/test_hf_decoder.py checks `torch.equal`).
- `"fast"` (automatic generation's default): after the first block the image tokens differ per
  prompt, and projecting all `h*w` of them in every attention is most of the decoder's work. As
  `ssa.masks.sam_speedups.decode_fused` does for segment-anything, the products are taken in
  another order with the small token-side factors first (token->image scores
  `Q W_k (keys + pe)^T`, values `(P keys) W_v^T + b_v`; image->token scores
  `(keys + pe)(W_q^T K^T)`, output `P (V W_o^T)`), and each 2x2 stride-2 transposed
  convolution of the upscaling is one channels-last GEMM, with SAM 2's high-resolution features
  added in GEMM order. Same function, another float summation order: logits agree to float
  rounding (a logit within rounding of 0 may change sign; the test bounds every mask's IoU
  with the model's at >= 0.999 and checks the kept sets of automatic generation).

Shapes: prompts' sparse embeddings `(1, B, N, C)` as transformers' prompt encoder gives them;
outputs low-res logits `(B, M, 4h, 4w)` and predicted IoUs `(B, M)` (M = 3 with multimask, else
1), in the model's dtype (autocast applies as for the model).
"""

from __future__ import annotations

import inspect
import types
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

# transformers model_type -> decoder layout.
KINDS = {"sam": "sam", "sam_hq": "sam_hq", "sam2": "sam2", "sam2_video": "sam2",
         "edgetam": "sam2", "edgetam_video": "sam2"}
MODES = ("fast", "exact")


@dataclass
class SharedImage:
    """What every prompt of one encoded image shares.

    keys/key_pe: `(1, 1, h*w, C)` (image embedding + dense no-mask embedding; positional
    encoding); first-block projections in heads layout `(1, heads, h*w, d)` (exact mode
    only); s0/s1: SAM 2's
    projected high-resolution features `(1, C/8, 4h, 4w)` / `(1, C/4, 2h, 2w)` and, for the fast
    mode, the same in GEMM order; SAM-HQ: hq, its image-only HQ features `(1, C/8, 4h, 4w)`,
    hq_src, the input of its upscaling, and per batch size the upscaled and refined features
    (prompt-independent there; `SharedImageDecoder._hq_shared`)."""

    keys: torch.Tensor
    key_pe: torch.Tensor
    size: tuple[int, int]
    t2i_k: torch.Tensor | None
    t2i_v: torch.Tensor | None
    i2t_q: torch.Tensor | None
    s0: torch.Tensor | None = None
    s1: torch.Tensor | None = None
    s0_gemm: torch.Tensor | None = None
    s1_gemm: torch.Tensor | None = None
    hq: torch.Tensor | None = None
    hq_src: torch.Tensor | None = None
    hq_by_batch: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def _out_proj(attn: Any) -> torch.nn.Linear:
    return attn.o_proj if hasattr(attn, "o_proj") else attn.out_proj


def _split(attn: Any, x: torch.Tensor) -> torch.Tensor:
    """`(b, p, n, c)` projected -> heads `(b * p, heads, n, d)`, as the modules split them."""
    b, p, n, c = x.shape
    heads = attn.num_attention_heads
    return x.reshape(b * p, n, heads, c // heads).transpose(1, 2)


def _attend(attn: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, b: int,
            p: int) -> torch.Tensor:
    """The module's own attention function on heads `(b * p, heads, n, d)`, merged and
    projected out: `(b, p, n, C)`."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = inspect.getmodule(type(attn)).eager_attention_forward
    fn = ALL_ATTENTION_FUNCTIONS.get_interface(attn.config._attn_implementation, eager)
    out, _ = fn(attn, q, k, v, attention_mask=None, dropout=0.0, scaling=attn.scaling,
                is_causal=attn.is_causal)
    out = out.reshape(b, p, -1, out.shape[-2] * out.shape[-1]).contiguous()
    return _out_proj(attn)(out)


def _as_speedup(attn: Any) -> Any:
    """The attribute names `ssa.masks.sam_speedups`' attention helpers read."""
    return types.SimpleNamespace(q_proj=attn.q_proj, k_proj=attn.k_proj, v_proj=attn.v_proj,
                                 out_proj=_out_proj(attn), num_heads=attn.num_attention_heads)


def _gemm_order(x: torch.Tensor, levels: int) -> torch.Tensor:
    """`(1, c, 2^L h, 2^L w)` -> `(h*w*4^L, c)`, pixels in the order of the upscaling GEMMs:
    `(i, j, di, dj[, di2, dj2])` for row `2^L i + ..`, column `2^L j + ..`."""
    c, height, width = x.shape[1:]
    h, w = height >> levels, width >> levels
    if levels == 1:
        return x[0].view(c, h, 2, w, 2).permute(1, 3, 2, 4, 0).reshape(-1, c)
    return x[0].view(c, h, 2, 2, w, 2, 2).permute(1, 4, 2, 5, 3, 6, 0).reshape(-1, c)


class SharedImageDecoder:
    """transformers' mask decoder of `model` for many prompts on one image (module docstring).

    model: a `SamModel`, `SamHQModel`, `Sam2Model` or `EdgeTamModel`; model_type: its
    `config.model_type`; mode: `"fast"` or `"exact"`."""

    def __init__(self, model: Any, model_type: str, mode: str = "fast") -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: pass one of {MODES}")
        self.model = model
        self.kind = KINDS[model_type]
        self.mode = mode
        self.decoder = model.mask_decoder

    # ---------------------------------------------------------------- per image

    def prepare(self, embeddings: dict[str, Any]) -> SharedImage:
        """embeddings: what `get_image_embeddings` gave, as `ssa.masks.hf` holds it
        (`image_embeddings`: a tensor, or SAM 2's list `[s0, s1, image]`; SAM-HQ's
        `intermediate_embeddings`)."""
        model, dec = self.model, self.decoder
        image = embeddings["image_embeddings"]
        s0 = s1 = hq = None
        if self.kind == "sam2":
            s0, s1, image = image[0], image[1], image[-1]
        c, h, w = image.shape[1:]
        pe = model.get_image_wide_positional_embeddings()  # (1, C, h, w)
        dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)
        keys = (image + dense).flatten(2).transpose(1, 2).unsqueeze(1)  # (1, 1, hw, C)
        key_pe = pe.flatten(2).transpose(1, 2).unsqueeze(1)
        first = dec.transformer.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        t2i_k = t2i_v = i2t_q = None
        if self.mode == "exact":  # the fast products never project the image side
            key = keys + key_pe
            t2i_k, t2i_v = _split(t2i, t2i.k_proj(key)), _split(t2i, t2i.v_proj(keys))
            i2t_q = _split(i2t, i2t.q_proj(key))
        hq_src = None
        if self.kind == "sam_hq":
            # transformers' SamHQMaskDecoder upscales the image embedding (+ dense, with h and w
            # swapped by its `transpose(2, 3).reshape`), not the transformer's image tokens:
            # the upscaled and refined features are the same for every prompt (`_hq_shared`).
            hq_src = (image + dense).transpose(2, 3).reshape(1, c, h, w)
            hq = self._hq_features(image, embeddings.get("intermediate_embeddings"))
        shared = SharedImage(keys, key_pe, (h, w), t2i_k, t2i_v, i2t_q, s0=s0, s1=s1, hq=hq,
                             hq_src=hq_src)
        if s0 is not None and self.mode == "fast":
            shared.s0_gemm, shared.s1_gemm = _gemm_order(s0, 2), _gemm_order(s1, 1)
        return shared

    def _hq_shared(self, s: SharedImage, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM-HQ's upscaled features and their refinement + HQ features, `(1, C/8, 4h, 4w)`
        each. Every prompt's copy is the same, so one is computed; in exact mode from a batch
        of `b` copies, since the convolution kernel (and so the last bits) that oneDNN picks
        depends on the batch size transformers runs it at."""
        n = b if self.mode == "exact" else 1
        if n not in s.hq_by_batch:
            dec = self.decoder
            x = s.hq_src.expand(n, -1, -1, -1).contiguous()
            up = dec.activation(dec.upscale_conv2(
                dec.activation(dec.upscale_layer_norm(dec.upscale_conv1(x)))))
            refined = dec.mask_conv2(dec.activation(dec.mask_norm(dec.mask_conv1(up))))
            s.hq_by_batch[n] = (up[:1], refined[:1] + s.hq)
        return s.hq_by_batch[n]

    def _hq_features(self, image: torch.Tensor, intermediate: list | None) -> torch.Tensor:
        """`SamHQMaskDecoder.forward`'s image-only features (embedding and ViT features)."""
        dec = self.decoder
        out = dec.encoder_conv2(dec.activation(dec.encoder_norm(dec.encoder_conv1(image))))
        if intermediate is not None and len(intermediate) > 0:
            vit = intermediate[0].permute(0, 3, 1, 2).contiguous()
            vit = dec.activation(dec.compress_vit_norm(dec.compress_vit_conv1(vit)))
            out = out + dec.compress_vit_conv2(vit)
        return out

    # ---------------------------------------------------------------- per batch of prompts

    def _tokens(self, sparse: torch.Tensor) -> torch.Tensor:
        """Output tokens + the prompts' sparse embeddings: `(1, B, T, C)`."""
        dec = self.decoder
        parts = [dec.iou_token.weight, dec.mask_tokens.weight]
        if self.kind == "sam_hq":
            parts.append(dec.hq_token.weight)
        elif self.kind == "sam2":
            parts.insert(0, dec.obj_score_token.weight)
        out = torch.cat(parts, dim=0).repeat(1, sparse.shape[1], 1, 1)
        return torch.cat((out, sparse), dim=2).to(dec.iou_token.weight.dtype)

    def compile(self) -> None:
        """`torch.compile` the per-batch work (dynamic shapes: the last batch is smaller)."""
        self._run = torch.compile(self._run, dynamic=True)

    def __call__(self, shared: SharedImage, sparse: torch.Tensor,
                 multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """sparse: `(1, B, N, C)` -> logits `(B, M, 4h, 4w)`, IoUs `(B, M)`."""
        return self._run(shared, sparse, multimask)

    def _run(self, shared: SharedImage, sparse: torch.Tensor,
             multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self._tokens(sparse)
        if self.mode == "exact":
            hs, keys = self._transformer_exact(shared, tokens)
        else:
            hs, keys = self._transformer_fast(shared, tokens[0])
        return self._heads(shared, hs, keys, multimask)

    def _transformer_exact(self, s: SharedImage, tokens: torch.Tensor):
        """`*TwoWayTransformer.forward` on the same values in the same order, with the first
        block's image side shared, `keys + pe` formed once per block (transformers forms the
        same sum twice) and residuals added in place (IEEE addition commutes: same bits).
        Returns the tokens `(B, T, C)` and image tokens `(B, hw, C)`."""
        transformer = self.decoder.transformer
        b = tokens.shape[1]
        queries, qpe = tokens, tokens
        keys = s.keys  # (1, 1, hw, C) shared, then (B, 1, hw, C)
        for i, layer in enumerate(transformer.layers):
            t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
            if i == 0:
                t2i_k, t2i_v, i2t_q = (x.expand(b, -1, -1, -1) for x in (s.t2i_k, s.t2i_v,
                                                                         s.i2t_q))
            else:
                key = keys + s.key_pe
                t2i_k, t2i_v = _split(t2i, t2i.k_proj(key)), _split(t2i, t2i.v_proj(keys))
                i2t_q = _split(i2t, i2t.q_proj(key))
                del key
            if layer.skip_first_layer_pe:
                queries, _ = layer.self_attn(query=queries, key=queries, value=queries)
            else:
                query = queries + qpe
                queries = queries + layer.self_attn(query=query, key=query, value=queries)[0]
            queries = layer.layer_norm1(queries)
            q = _split(t2i, t2i.q_proj(queries + qpe))
            queries = layer.layer_norm2(queries + _attend(t2i, q, t2i_k, t2i_v, 1, b))
            del t2i_k, t2i_v
            queries = layer.layer_norm3(queries + layer.mlp(queries))
            t = queries + qpe
            # transformers' layout: image tokens (B, 1, hw, C), prompt tokens (1, B, T, C).
            k = _split(i2t, i2t.k_proj(t).transpose(0, 1))
            v = _split(i2t, i2t.v_proj(queries).transpose(0, 1))
            out = _attend(i2t, i2t_q, k, v, b, 1)
            del i2t_q
            keys = layer.layer_norm4(out.add_(keys))
        query = queries + qpe
        key = keys + s.key_pe
        attn_out, _ = transformer.final_attn_token_to_image(query=query, key=key, value=keys)
        queries = transformer.layer_norm_final_attn(queries + attn_out)
        return queries[0], keys[:, 0]

    def _transformer_fast(self, s: SharedImage, tokens: torch.Tensor):
        """The two-way transformer in 3-D `(B, T, C)` / `(1 or B, hw, C)` tensors with the
        image side never projected per prompt (`ssa.masks.sam_speedups`' products)."""
        from ssa.masks.sam_speedups import image_to_token, token_to_image

        transformer = self.decoder.transformer
        queries, qpe = tokens, tokens
        keys, key_pe = s.keys[0], s.key_pe[0]
        for layer in transformer.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(query=queries[None], key=queries[None],
                                          value=queries[None])[0][0]
            else:
                q = (queries + qpe)[None]
                queries = queries + layer.self_attn(query=q, key=q, value=queries[None])[0][0]
            queries = layer.layer_norm1(queries)
            queries = layer.layer_norm2(queries + token_to_image(
                _as_speedup(layer.cross_attn_token_to_image), queries + qpe, keys, key_pe))
            queries = layer.layer_norm3(queries + layer.mlp(queries))
            keys = image_to_token(_as_speedup(layer.cross_attn_image_to_token), keys, key_pe,
                                  queries + qpe, queries, layer.layer_norm4)
        attn_out = token_to_image(_as_speedup(transformer.final_attn_token_to_image),
                                  queries + qpe, keys, key_pe)
        return transformer.layer_norm_final_attn(queries + attn_out), keys

    # ---------------------------------------------------------------- masks and scores

    def _heads(self, s: SharedImage, hs: torch.Tensor, keys: torch.Tensor, multimask: bool):
        """hs `(B, T, C)`, keys `(B, hw, C)` -> logits `(B, M, 4h, 4w)`, IoUs `(B, M)`."""
        dec = self.decoder
        first = 1 if self.kind == "sam2" else 0  # SAM 2's object-score token comes first
        n_masks = dec.num_mask_tokens - (1 if self.kind == "sam_hq" else 0)
        iou = dec.iou_prediction_head(hs[:, first])
        mask_tokens = hs[:, first + 1:]
        b = hs.shape[0]
        h, w = s.size
        if self.kind == "sam2" and not multimask and dec.dynamic_multimask_via_stability:
            picked = list(range(n_masks))  # the stability fallback reads all four
        elif multimask:
            picked = list(range(1, n_masks))
        else:
            picked = [0]
        keys = keys.expand(b, -1, -1)
        if self.kind == "sam_hq":
            hq_up, hq_refined = self._hq_shared(s, b)
            flat = hq_up.reshape(1, hq_up.shape[1], -1)
        elif self.mode == "exact":
            up = self._upscaled_raster(s, keys)  # (B, C/8, 4h, 4w)
            flat = up.reshape(b, up.shape[1], -1)
        else:
            flat = None
        if self.mode == "exact":
            # transformers' products: every token's hypernetwork, one batched matmul.
            hyper = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens[:, i])
                                 for i in range(n_masks)], dim=1)
            masks = (hyper @ flat).reshape(b, n_masks, 4 * h, 4 * w)[:, picked]
        else:
            hyper = torch.stack([dec.output_hypernetworks_mlps[i](mask_tokens[:, i])
                                 for i in picked], dim=1)
            if flat is not None:
                masks = (hyper @ flat).reshape(b, len(picked), 4 * h, 4 * w)
            else:
                masks = self._masks_gemm(s, keys, hyper)
        iou = iou[:, picked]
        if self.kind == "sam_hq":
            masks, iou = self._hq_masks(hq_refined, mask_tokens[:, n_masks], masks, iou,
                                        multimask)
        if self.kind == "sam2" and not multimask and dec.dynamic_multimask_via_stability:
            # transformers' own rule (single-mask output falls back on the best multimask).
            out_masks, out_iou = dec._dynamic_multimask_via_stability(masks[None], iou[None])
            masks, iou = out_masks[0], out_iou[0]
        return masks, iou

    def _upscaled_raster(self, s: SharedImage, keys: torch.Tensor) -> torch.Tensor:
        """The decoder's upscaling of the image tokens `(B, hw, C)`, as transformers runs it
        (NCHW; SAM 2 feeds the convolution a strided view, SAM a contiguous copy: kept, since
        the layout can pick another convolution kernel)."""
        dec = self.decoder
        b, _, c = keys.shape
        h, w = s.size
        x = keys.unsqueeze(1).transpose(2, 3)
        x = x.view(b, c, h, w) if self.kind == "sam2" else x.reshape(b, c, h, w)
        up = dec.upscale_conv1(x)
        if s.s1 is not None:
            up.add_(s.s1)  # in place: the same sum, one pass fewer
        up = dec.activation(dec.upscale_layer_norm(up))
        up = dec.upscale_conv2(up)
        if s.s0 is not None:
            up.add_(s.s0)
        return dec.activation(up)

    def _masks_gemm(self, s: SharedImage, keys: torch.Tensor, hyper: torch.Tensor) -> torch.Tensor:
        """`hyper @ upscaled(keys)` with each transposed convolution one channels-last GEMM
        (stride = kernel, so pixels never overlap), the LayerNorm over channels, SAM 2's
        high-resolution features added in GEMM order; logits back in raster order at the end."""
        dec = self.decoder
        b = keys.shape[0]
        h, w = s.size

        def as_gemm(conv: torch.nn.ConvTranspose2d):
            cin, cout, kh, kw = conv.weight.shape
            return conv.weight.permute(0, 2, 3, 1).reshape(cin, kh * kw * cout), \
                conv.bias.repeat(kh * kw), cout

        w1, b1, c1 = as_gemm(dec.upscale_conv1)
        x = torch.addmm(b1, keys.reshape(-1, keys.shape[-1]), w1).view(b, -1, c1)
        if s.s1_gemm is not None:
            x.add_(s.s1_gemm)
        norm = dec.upscale_layer_norm
        x = dec.activation(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        w2, b2, c2 = as_gemm(dec.upscale_conv2)
        x = torch.addmm(b2, x.view(-1, c1), w2).view(b, -1, c2)
        if s.s0_gemm is not None:
            x.add_(s.s0_gemm)
        x = dec.activation(x)
        m = hyper.shape[1]
        masks = torch.bmm(x, hyper.transpose(1, 2))  # (B, hw*16, M)
        masks = masks.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(b, m, 4 * h, 4 * w)

    def _hq_masks(self, refined: torch.Tensor, hq_token: torch.Tensor, masks: torch.Tensor,
                  iou: torch.Tensor, multimask: bool):
        """SAM-HQ: its own mask from the HQ token over the refined features `(1, C/8, 4h, 4w)`,
        added to the SAM masks (`hq_token_only=False`, the model's default), multimask outputs
        sorted by IoU."""
        dec = self.decoder
        b = hq_token.shape[0]
        c = refined.shape[1]
        hyper = dec.hq_mask_mlp(hq_token)[:, None]  # (B, 1, C/8)
        hq = (hyper @ refined.reshape(1, c, -1)).reshape(b, 1, *refined.shape[-2:])
        if multimask:
            iou, order = torch.sort(iou, dim=1, descending=True)
            masks = torch.gather(masks, 1, order[..., None, None].expand(-1, -1, *masks.shape[-2:]))
        return masks + hq, iou
