"""The fast generator against segment-anything's own `SamAutomaticMaskGenerator`.

Tolerance: masks, boxes, areas, points and crop boxes identical; predicted IoU and stability
scores within 1e-5 (float rounding). The fast generator decides every filter from rigorous
low-res bounds or, where they do not settle it, from the exact stock values, so no decision
may differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ADE20K_FULL, CITY_STEM, CITYSCAPES, KEEP_ALL, need


def _image(kind: str) -> np.ndarray:
    from PIL import Image

    if kind == "city":
        path = need(CITYSCAPES / f"{CITY_STEM}_leftImg8bit.png")
        return np.asarray(Image.open(path).convert("RGB"))
    path = need(ADE20K_FULL / "ADE_train_00016869.jpg")
    with Image.open(path) as img:  # a real 2200x1467 photo, downscaled for speed
        return np.asarray(img.convert("RGB").resize((240, 160), Image.BILINEAR))


@pytest.fixture(scope="module")
def sams(sam_checkpoint: Path) -> dict[str, torch.nn.Module]:
    """The random tiny checkpoint, loaded by ssa's loader; "sharp" scales the mask logits so
    stability scores spread over 0..0.5 (random weights otherwise give logits near 0)."""
    from ssa.masks import load_sam

    plain = load_sam("vit_b", sam_checkpoint)
    sharp = load_sam("vit_b", sam_checkpoint)
    with torch.no_grad():
        for mlp in sharp.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 30
    return {"plain": plain, "sharp": sharp}


def assert_same_records(stock: list[dict], fast: list[dict]) -> None:
    assert len(fast) == len(stock)
    for a, b in zip(stock, fast):
        assert np.array_equal(a["segmentation"], b["segmentation"])
        assert a["bbox"] == b["bbox"]
        assert a["area"] == b["area"]
        assert a["point_coords"] == b["point_coords"]
        assert [float(x) for x in a["crop_box"]] == [float(x) for x in b["crop_box"]]
        assert b["predicted_iou"] == pytest.approx(a["predicted_iou"], abs=1e-5)
        assert b["stability_score"] == pytest.approx(a["stability_score"], abs=1e-5, nan_ok=True)


CASES = {
    "nms_off": ("plain", "city", {**KEEP_ALL, "points_per_side": 4}),
    "nms_and_stability": ("sharp", "city", {"points_per_side": 4, "pred_iou_thresh": 0.0,
                                            "stability_score_thresh": 0.3,
                                            "box_nms_thresh": 0.7}),
    "crops": ("sharp", "city", {"points_per_side": 2, "pred_iou_thresh": 0.0,
                                "stability_score_thresh": 0.0, "box_nms_thresh": 0.9,
                                "crop_n_layers": 1, "crop_n_points_downscale_factor": 2}),
    "small_regions": ("sharp", "ade", {**KEEP_ALL, "points_per_side": 3,
                                       "min_mask_region_area": 60}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_matches_stock(case: str, sams) -> None:
    from segment_anything import SamAutomaticMaskGenerator

    from ssa.masks.fast_amg import FastMaskGenerator

    model, image_kind, settings = CASES[case]
    image = _image(image_kind)
    sam = sams[model]
    with torch.inference_mode():
        stock = SamAutomaticMaskGenerator(sam, **settings).generate(image)
        fast = FastMaskGenerator(sam, **settings).generate(image)
    assert stock, "a case that keeps no mask tests nothing"
    assert_same_records(stock, fast)


def _disk_logits() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    specs = [(30, 60, 80, 1.0), (10, 100, 50, 0.5), (60, 90, 120, 2.0), (5, 20, 200, 0.3),
             (200, 0, 0, 1.0)]
    return torch.stack([r - torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) * k
                        for r, cy, cx, k in specs])


@pytest.mark.parametrize("size", [(1467, 2200), (128, 256), (500, 333)])
def test_low_res_bounds_hold_the_exact_values(size, sams) -> None:
    """Smooth synthetic logits: the box and stability of segment-anything's own upsampling
    (`Sam.postprocess_masks`, `calculate_stability_score`, `batched_mask_to_box`) lie within the
    bounds from the low-res grid, and the box bounds are tight (a few low-res cells)."""
    from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

    from ssa.masks.fast_amg import FastMaskGenerator

    sam = sams["plain"]
    gen = FastMaskGenerator(sam, points_per_side=2)
    h, w = size
    scale = 1024 / max(h, w)
    input_size = (int(h * scale + 0.5), int(w * scale + 0.5))  # ResizeLongestSide's rounding
    gen.predictor.input_size = input_size
    logits = _disk_logits()
    with torch.inference_mode():
        bounds = gen._bounds(logits, gen._axes(size), boxes=True, stability=True)
        full = sam.postprocess_masks(logits[:, None], input_size, size)[:, 0]
        stab = calculate_stability_score(full, sam.mask_threshold, gen.stability_score_offset)
        boxes = batched_mask_to_box(full > sam.mask_threshold)
        del full
    ok = ~torch.isnan(stab)
    assert ((bounds.stab_lo <= stab + 1e-6) & (stab <= bounds.stab_hi + 1e-6))[ok].all()
    assert ((bounds.box_lo <= boxes) & (boxes <= bounds.box_hi)).all()
    cell = 4 * max(h, w) / 1024  # one low-res cell in image pixels
    assert ((bounds.box_hi - bounds.box_lo)[ok] <= 3 * cell + 2).all()


def test_interval_nms_matches_torchvision() -> None:
    from torchvision.ops import batched_nms

    from ssa.masks.interval_nms import interval_nms
    from ssa.masks.stats import Stats

    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(60, 2, generator=gen) * 100
    wh = torch.rand(60, 2, generator=gen) * 60 + 5
    exact = torch.cat([xy, xy + wh], 1).round()
    scores = torch.rand(60, generator=gen)
    slack = torch.rand(60, 4, generator=gen) * 6
    lo, hi = exact - slack, exact + slack.flip(1)
    asked: list[int] = []

    def exact_boxes(idx: torch.Tensor) -> torch.Tensor:
        asked.extend(idx.tolist())
        return exact[idx]

    for thresh in (0.3, 0.5, 0.7):
        want = batched_nms(exact, scores, torch.zeros(60), thresh)
        got = interval_nms(lo, hi, scores, thresh, exact_boxes, Stats())
        assert got.tolist() == want.tolist()
    assert asked, "the slack should leave some pairs to the exact boxes"


def test_device_rle_matches_pycocotools() -> None:
    from ssa import io
    from ssa.masks.device_rle import encode_rle_device, rle_areas

    masks = torch.rand(300, 37, 23, generator=torch.Generator().manual_seed(1)) > 0.5
    rles = encode_rle_device(masks)
    assert rles == io.encode_rle(masks.numpy())
    assert rle_areas(rles) == masks.flatten(1).sum(1).tolist()  # > 255 masks: chunked


def test_mask_generator_impls_agree_and_bad_impl_is_refused(sams) -> None:
    from ssa.errors import SSAError
    from ssa.masks import SamMaskSource

    image = _image("city")
    settings = {**KEEP_ALL, "points_per_side": 2}
    stock = SamMaskSource(sams["plain"], impl="stock", **settings).generate(image)
    fast = SamMaskSource(sams["plain"], **settings).generate(image)
    stock_records, stock_masks, fast_records, fast_masks = (
        stock.records, stock.masks, fast.records, fast.masks
    )
    assert torch.equal(stock_masks, fast_masks.cpu())
    assert [r["segmentation"] for r in stock_records] == [r["segmentation"] for r in fast_records]
    with pytest.raises(SSAError, match="--amg-impl"):
        SamMaskSource(sams["plain"], impl="quick")


def test_sdpa_encoder_matches_stock(sams) -> None:
    import copy

    from ssa.masks.sam_speedups import use_sdpa

    encoder = sams["plain"].image_encoder
    patched = copy.deepcopy(encoder)
    assert use_sdpa(patched) == len(encoder.blocks)
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(patched(x), encoder(x), atol=1e-4, rtol=1e-4)


def test_sdpa_and_compile_leave_the_given_model_alone(sams) -> None:
    """Like SamPredictor, the generator never changes the model it is given: SDPA patches and
    compiled modules live in its own module tree, which shares the model's weights."""
    from segment_anything.modeling.image_encoder import Attention

    from ssa.masks.fast_amg import FastMaskGenerator

    sam = sams["plain"]
    modules = dict(sam.named_modules())
    gen = FastMaskGenerator(sam, points_per_side=2, sdpa=True, compile=True)
    assert dict(sam.named_modules()) == modules
    assert not any("forward" in vars(m) for m in sam.modules())
    assert gen.model is not sam and gen.model.image_encoder is not sam.image_encoder
    attention = [m for m in gen.model.modules() if isinstance(m, Attention)]
    assert len(attention) == len(sam.image_encoder.blocks)
    assert all("forward" in vars(m) for m in attention)  # SDPA's, in the generator's tree
    ours = dict(gen.model.named_parameters())
    for name, param in sam.named_parameters():  # the same tensors, not copies
        key = name if name in ours else name.replace("image_encoder.", "image_encoder._orig_mod.")
        key = key if key in ours else key.replace("mask_decoder.", "mask_decoder._orig_mod.")
        assert ours[key] is param, name


def test_overlapped_loop_keeps_order_and_reports_failures(tmp_path: Path) -> None:
    from conftest import make_image

    from ssa.run.prefetch import process_overlapped

    rels = [Path("a.png"), Path("missing.png"), Path("b.png"), Path("c.png")]
    for rel in rels:
        if rel.name != "missing.png":
            make_image(tmp_path / "in" / rel)
    written: list[str] = []

    class FakeLabeller:
        def label(self, image, rel=None):
            return {"records": [1] * int(image.shape[0] // 32)}

        def write(self, out, paths, image):
            if paths["semantic"].name.startswith("c"):
                raise OSError("disk full")
            written.append(paths["semantic"].name)
            return len(out["records"])

    results = list(process_overlapped(FakeLabeller(), tmp_path / "in", rels, tmp_path / "out"))
    assert [r.rel for r in results] == rels
    assert [r.status for r in results] == ["done", "failed", "done", "failed"]
    assert results[1].stage == "read" and results[3].stage == "write"
    assert results[0].num_masks == 2
    assert written == ["a_semantic.json", "b_semantic.json"]


def _decoder_inputs(sam: torch.nn.Module, n: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    pe = sam.prompt_encoder
    h, w = pe.image_embedding_size
    points = torch.rand(n, 1, 2, generator=gen) * sam.image_encoder.img_size
    sparse, dense = pe(points=(points, torch.ones(n, 1, dtype=torch.int)), boxes=None, masks=None)
    return {"image_embeddings": torch.randn(1, pe.embed_dim, h, w, generator=gen),
                "image_pe": pe.get_dense_pe(), "sparse_prompt_embeddings": sparse,
                "dense_prompt_embeddings": dense}


@pytest.mark.parametrize("multimask", [True, False])
def test_fused_decoder_matches_stock(sams, multimask: bool) -> None:
    """decode_fused against MaskDecoder.forward: the tiny checkpoint, and vit_b's real decoder
    shapes (256 channels, 64x64 embedding, two blocks, 8 heads) with random weights."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    from ssa.masks.sam_speedups import decode_fused

    torch.manual_seed(0)
    full = torch.nn.Module()
    full.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                        input_image_size=(1024, 1024), mask_in_chans=16)
    full.mask_decoder = MaskDecoder(
        num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
    )
    full.image_encoder = torch.nn.Module()
    full.image_encoder.img_size = 1024
    for sam, n in ((sams["sharp"], 7), (full, 5)):
        decoder = sam.mask_decoder.eval()
        with torch.inference_mode():
            inputs = _decoder_inputs(sam, n, seed=n)
            masks, iou = decoder(**inputs, multimask_output=multimask)
            fast_masks, fast_iou = decode_fused(decoder, **inputs, multimask_output=multimask)
            # A dense embedding per prompt (as from mask inputs) takes the stock path.
            own = dict(inputs, dense_prompt_embeddings=inputs["dense_prompt_embeddings"].clone())
            stock_b, _ = decode_fused(decoder, **own, multimask_output=multimask)
        assert fast_masks.shape == masks.shape == (n, 3 if multimask else 1, 256, 256)
        torch.testing.assert_close(fast_masks, masks, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast_iou, iou, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stock_b, masks, atol=1e-5, rtol=1e-5)


def test_upsample_stability_boxes_match_stock(sams) -> None:
    """The buffered upsampling, stability and boxes of kept masks against segment-anything's
    `postprocess_masks`, `calculate_stability_score` and `batched_mask_to_box`, bit for bit,
    by the torch kernels (any device) and the CPU's plane-by-plane ones: chunks of several
    masks, an empty mask, a one-pixel-wide mask, non-finite logits."""
    from concurrent.futures import ThreadPoolExecutor

    from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

    from ssa.masks import candidates
    from ssa.masks.bilinear import CountBuffer, PlaneStats
    from ssa.masks.candidates import box_from_lines
    from ssa.masks.fast_amg import FastMaskGenerator

    sam = sams["sharp"]
    gen = FastMaskGenerator(sam, **{**KEEP_ALL, "points_per_side": 2})
    g = torch.Generator().manual_seed(3)
    logits = torch.nn.functional.interpolate(torch.randn(7, 1, 8, 8, generator=g) * 4, (256, 256),
                                             mode="bilinear")[:, 0]
    logits[1] = -5.0  # empty at every level
    logits[2] = -5.0
    logits[2, 100:140, 37] = 5.0  # a thin vertical line
    input_size, crop_size = (80, 128), (97, 151)
    old = candidates._CHUNK_PIXELS
    candidates._CHUNK_PIXELS = 3 * crop_size[0] * crop_size[1]  # chunks of at most 3
    try:
        for data in (logits, torch.where(logits > 4.5, torch.inf, logits)):
            with torch.inference_mode():
                ref = sam.postprocess_masks(data[:, None], input_size, crop_size)[:, 0]
                got = torch.cat([full.clone() for _, full in gen._upsample(data, input_size,
                                                                           crop_size)])
                stab, rows, cols, area, mask = gen._kept_stats(ref, CountBuffer(ref.shape, "cpu"))
                boxes = box_from_lines(rows > 0, cols > 0)
            torch.testing.assert_close(got, ref, atol=0, rtol=0, equal_nan=True)
            assert torch.equal(mask, ref > sam.mask_threshold)
            assert area.tolist() == (ref > sam.mask_threshold).sum((1, 2)).tolist()
            stock = calculate_stability_score(ref, sam.mask_threshold, 1.0)  # empty: 0/0 NaN
            torch.testing.assert_close(stab, stock, atol=0, rtol=0, equal_nan=True)
            assert torch.equal(boxes, batched_mask_to_box(ref > sam.mask_threshold))
            assert boxes[1].tolist() == [0, 0, 0, 0]
            assert boxes[2, 0] == boxes[2, 2]  # one column wide

            # The CPU's plane-by-plane path (numpy and OpenCV in threads): the same figures,
            # each mask written transposed into a whole plane or a crop's window of one.
            stack = np.zeros((len(ref), crop_size[1] + 5, crop_size[0] + 3), np.uint8)
            planes = [stack[i, : crop_size[1], : crop_size[0]] if i % 2 else
                      stack[i, 5:, 3:] for i in range(len(ref))]
            with ThreadPoolExecutor(2) as pool:
                got_stab, got_rows, got_cols, got_area = gen._plane_stats(
                    ref.contiguous(), PlaneStats(crop_size, pool), planes)
            torch.testing.assert_close(got_stab, stock, atol=0, rtol=0, equal_nan=True)
            assert got_area.tolist() == area.tolist()
            assert torch.equal(box_from_lines(got_rows > 0, got_cols > 0), boxes)
            want = (ref > sam.mask_threshold).transpose(1, 2).numpy()
            assert all(np.array_equal(plane, want[i]) for i, plane in enumerate(planes))
            assert stack[0::2, :5].sum() == 0 and stack[1::2, crop_size[1]:].sum() == 0
    finally:
        candidates._CHUNK_PIXELS = old


def test_chunked_encoder_attention_matches_stock(sams) -> None:
    """chunked_attention against the stock encoder: the tiny checkpoint's (windowed and global
    blocks), and one global block (64 channels, 4 heads, 32x32 tokens, relative positions) with
    budgets that take every row of two heads at once, ragged 12-row blocks of one head, and
    3-row blocks of one head. The stock forwards are back afterwards."""
    from segment_anything.modeling.image_encoder import Attention

    from ssa.masks.sam_speedups import chunked_attention

    gen = torch.Generator().manual_seed(0)
    encoder = sams["plain"].image_encoder
    x = torch.randn(1, 3, 1024, 1024, generator=gen)
    with torch.inference_mode():
        expected = encoder(x)
        with chunked_attention(encoder) as patched:
            got = encoder(x)
        assert patched == len(encoder.blocks)
        assert not any("forward" in vars(m) for m in encoder.modules())
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

        block = torch.nn.Module()
        block.attn = Attention(64, num_heads=4, use_rel_pos=True, input_size=(32, 32))
        torch.nn.init.normal_(block.attn.rel_pos_h, std=0.5)
        torch.nn.init.normal_(block.attn.rel_pos_w, std=0.5)
        tokens = torch.randn(1, 32, 32, 64, generator=gen)
        expected = block.attn(tokens)
        n = 32 * 32  # rows = min(n, budget // n), heads per block = budget // (rows n)
        for budget in (4 * n * 512, 4 * n * 3, 3 * n):
            with chunked_attention(block, budget=budget):
                torch.testing.assert_close(block.attn(tokens), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("image_size", [256, 512])
def test_fast_matches_stock_for_a_custom_image_size(image_size: int, tmp_path: Path) -> None:
    """A SAM trained at another input size (logits image_size / 4): same masks as the stock
    generator (the low-res grid used to be fixed at 256 cells: "index 191 is out of bounds")."""
    from segment_anything import SamAutomaticMaskGenerator

    from ssa.masks import EncoderConfig, build_sam_from_config, load_sam
    from ssa.masks.fast_amg import FastMaskGenerator

    torch.manual_seed(image_size)
    model = build_sam_from_config(
        EncoderConfig(16, 1, 1, (0,), window_size=4, image_size=image_size, out_chans=32)
    )
    torch.save(model.state_dict(), tmp_path / "sam.pth")
    sam = load_sam("vit_b", tmp_path / "sam.pth")
    assert sam.image_encoder.img_size == image_size
    with torch.no_grad():  # sharper logits: stability scores spread, as with "sharp" above
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 30
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 255, (20, 30, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    settings = {"points_per_side": 3, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                "box_nms_thresh": 0.8, "crop_n_layers": 1}
    with torch.inference_mode():
        stock = SamAutomaticMaskGenerator(sam, **settings).generate(image)
        fast = FastMaskGenerator(sam, **settings).generate(image)
    assert stock, "a case that keeps no mask tests nothing"
    assert_same_records(stock, fast)
