"""Precision, compilation, the vote's GEMM plan and the decoder's memory rule, on the CPU.

References: fp32 runs of the same models (bf16 agreement), brute-force counts (the padded
int8 GEMM), hand-worked numbers (memory), the device rules as the issue and torch state them.
"""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import ADE20K_FULL, KEEP_ALL, need

from ssa.errors import SSAError

# ------------------------------------------------------------------ device rules (pure)


def test_precision_rules_by_message() -> None:
    from ssa.precision import check_precision

    for device in ("cpu", "cuda"):
        check_precision("fp32", device)
    check_precision("bf16", "cpu")
    check_precision("fp16", "cuda")
    check_precision("bf16", "cuda", bf16_supported=True)
    with pytest.raises(SSAError, match=r"^--precision fp16 needs a CUDA device"):
        check_precision("fp16", "cpu")
    with pytest.raises(SSAError, match=r"^--precision bf16: this GPU has no bfloat16"):
        check_precision("bf16", "cuda", bf16_supported=False)
    with pytest.raises(SSAError, match=r"^--precision 'fp64': choose one of fp32, bf16, fp16"):
        check_precision("fp64", "cpu")


def test_compile_rules_by_message() -> None:
    from ssa.precision import check_compile

    check_compile("cpu", have_cxx=True)
    check_compile("cuda", have_cxx=False, have_triton=True, have_cc=True)
    with pytest.raises(SSAError, match=r"^--compile on the CPU needs a C\+\+ compiler"):
        check_compile("cpu", have_cxx=False)
    with pytest.raises(SSAError, match=r"^--compile on CUDA needs Triton"):
        check_compile("cuda", have_cxx=True, have_triton=False)


def test_config_key_and_flag_validate_precision() -> None:
    from ssa.config import build_config

    cfg = build_config({"precision": "bf16", "compile": "yes"}, {})
    assert (cfg.precision, cfg.compile) == ("bf16", True)
    assert build_config({}, {}).precision == "fp32"
    with pytest.raises(SSAError, match=r"--precision 'fp8'.*fp32 \| bf16 \| fp16"):
        build_config({}, {"precision": "fp8"})


def test_generator_refuses_fp16_on_cpu(sam_checkpoint) -> None:
    from ssa.masks import load_sam
    from ssa.masks.fast_amg import FastMaskGenerator

    sam = load_sam("vit_b", sam_checkpoint)
    with pytest.raises(SSAError, match=r"^--precision fp16 needs a CUDA device"):
        FastMaskGenerator(sam, precision="fp16")


def test_stock_generator_refuses_precision(sam_checkpoint) -> None:
    from ssa.specs.masks import load_mask_source

    with pytest.raises(SSAError, match=r"--precision bf16 / --compile need --amg-impl fast"):
        load_mask_source(f"sam:vit_b:{sam_checkpoint}", "cpu", {}, impl="stock",
                         precision="bf16")


# ------------------------------------------------------------------ vote GEMM plan


def test_int_mm_plan_cuda_shapes() -> None:
    from ssa.voting import int_mm_plan

    plan = int_mm_plan("cuda", rows=5, k=333 * 500, n=8)
    assert (plan.path, plan.pad_rows, plan.pad_k, plan.pad_n) == ("int_mm", 12, 4, 0)
    plan = int_mm_plan("cuda", rows=17, k=2048 * 1024, n=3)
    assert (plan.path, plan.pad_rows, plan.pad_k, plan.pad_n) == ("int_mm", 0, 0, 5)
    plan = int_mm_plan("cuda", rows=16, k=7, n=16)
    assert (plan.pad_rows, plan.pad_k) == (1, 1)
    assert int_mm_plan("cpu", rows=1, k=7, n=3) == int_mm_plan("cpu", 1000, 8, 8)
    assert int_mm_plan("cpu", 1, 7, 3).path == "int_mm"
    assert int_mm_plan("mps", 100, 64, 8).path == "bincount"
    assert int_mm_plan("cuda", 100, 64, 8, has_int_mm=False).path == "bincount"


@pytest.mark.parametrize("num_masks,num_pixels", [(3, 37), (16, 101), (17, 64), (40, 333)])
def test_padded_int_mm_counts_match_brute_force(num_masks: int, num_pixels: int) -> None:
    """The CUDA plan (padded rows and pixels, column-major one-hot) run on the CPU."""
    from ssa.voting import _onehot_counts

    g = torch.Generator().manual_seed(num_pixels)
    masks = torch.rand(num_masks, num_pixels, generator=g) < 0.4
    k = 37  # two passes of 32 classes
    index = torch.randint(-1, k, (num_pixels,), generator=g)
    brute = torch.zeros(num_masks, k, dtype=torch.int64)
    for m in range(num_masks):
        for p in range(num_pixels):
            if masks[m, p] and index[p] >= 0:
                brute[m, index[p]] += 1
    for device_type in ("cuda", None):
        got = _onehot_counts(masks, index, k, device_type=device_type)
        assert torch.equal(got.long(), brute)


def test_bincount_fallback_is_logged_once(caplog) -> None:
    from ssa import voting

    masks = torch.rand(4, 50, generator=torch.Generator().manual_seed(0)) < 0.5
    index = torch.randint(-1, 5, (50,), generator=torch.Generator().manual_seed(1))
    voting._warned.clear()
    with caplog.at_level(logging.WARNING, logger="ssa.voting"):
        a = voting._onehot_counts(masks, index, 5, device_type="mps")
        b = voting._onehot_counts(masks, index, 5, device_type="mps")
    assert torch.equal(a, b)
    assert torch.equal(a, voting._onehot_counts(masks, index, 5))
    warnings = [r for r in caplog.records if "bincount" in r.getMessage()]
    assert len(warnings) == 1


# ------------------------------------------------------------------ decoder memory rule


def test_prompt_batch_from_fake_memory() -> None:
    from ssa.masks.memory import per_prompt_bytes, prompt_batch_for

    per = per_prompt_bytes((64, 64), 256, 3)
    # By hand: transformer 3*4096*256, upscale 2*16384*64 + 2*65536*32, logits 3*65536*2
    # values of 4 bytes, plus 3*65536*8 bytes of grids.
    assert per == (3 * 4096 * 256 + 2 * 16384 * 64 + 2 * 65536 * 32 + 3 * 65536 * 2) * 4 \
        + 3 * 65536 * 8
    gib = 1024**3
    # vit_h weights and features (3 GiB) on an 8 GiB budget, 80 GiB free: the budget decides.
    assert prompt_batch_for(80 * gib, 3 * gib, per, 8 * gib) == (5 * gib) // per
    assert (5 * gib) // per * per + 3 * gib <= 8 * gib
    # Less free than the budget allows: the free memory decides.
    assert prompt_batch_for(1 * gib, 3 * gib, per, 8 * gib) == gib // per
    # Nothing fits: the minimum; everything fits: the maximum.
    assert prompt_batch_for(0, 9 * gib, per, 8 * gib) == 16
    assert prompt_batch_for(10**15, 0, per, None) == 1024
    with pytest.raises(ValueError, match="per_prompt 0"):
        prompt_batch_for(gib, 0, 0)


# ------------------------------------------------------------------ bf16 agreement


def _matched_iou(ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """For each mask of `ref` `(N, H, W) bool`, its best IoU with any mask of `other`."""
    a, b = ref.flatten(1).float(), other.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return (inter / union.clamp_min(1)).max(1).values


def _ade_image(size: tuple[int, int] = (330, 220)) -> np.ndarray:
    from PIL import Image

    with Image.open(need(ADE20K_FULL / "ADE_train_00016869.jpg")) as img:
        return np.asarray(img.convert("RGB").resize(size, Image.BILINEAR))


def test_bf16_masks_match_fp32(sam_checkpoint) -> None:
    """Tiny random SAM, every candidate kept (108 masks): at least 95% of the fp32 masks have a
    bf16 mask with IoU >= 0.98 (measured: 97%)."""
    from ssa.masks import load_sam
    from ssa.masks.fast_amg import FastMaskGenerator

    image = _ade_image()
    sam = load_sam("vit_b", sam_checkpoint)
    settings = {**KEEP_ALL, "points_per_side": 6}
    with torch.inference_mode():
        fp32 = FastMaskGenerator(sam, **settings).generate_masks(image)
        bf16 = FastMaskGenerator(sam, precision="bf16", **settings).generate_masks(image)
    assert len(fp32.records) == 108
    iou = _matched_iou(fp32.masks, bf16.masks)
    assert float((iou >= 0.98).float().mean()) >= 0.95
    for record in bf16.records:  # post-processing in fp32: plain floats in the records
        assert isinstance(record["predicted_iou"], float)


def test_semantic_branch_bf16_agrees_with_fp32(segformer_5, monkeypatch) -> None:
    from ssa.segmentors.hf import HFSegmentor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    fp32 = HFSegmentor(str(segformer_5))(image)
    seg = HFSegmentor(str(segformer_5), precision="bf16")
    assert seg.model.dtype == torch.bfloat16
    bf16 = seg(image)
    assert bf16.dtype == torch.float32 and bf16.shape == fp32.shape
    agree = (bf16.argmax(0) == fp32.argmax(0)).float().mean()
    assert float(agree) >= 0.99
    with pytest.raises(SSAError, match=r"^--precision fp16 needs a CUDA device"):
        HFSegmentor(str(segformer_5), precision="fp16")


# ------------------------------------------------------------------ SDPA and compile paths


def _tiny_sam():
    """A SAM far smaller than conftest's (256 px input, one encoder block, a one-layer decoder of
    width 32), so compiling it takes the least time inductor needs."""
    from functools import partial

    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=256, patch_size=16, embed_dim=16, depth=1, num_heads=1,
                              norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True,
                              use_rel_pos=True, global_attn_indexes=(0,), window_size=4,
                              out_chans=32)
    prompts = PromptEncoder(embed_dim=32, image_embedding_size=(16, 16),
                            input_image_size=(256, 256), mask_in_chans=16)
    decoder = MaskDecoder(transformer_dim=32, iou_head_hidden_dim=32,
                          transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64,
                                                        num_heads=2))
    return Sam(image_encoder=encoder, prompt_encoder=prompts, mask_decoder=decoder).eval()


def _tiny_run(sam, **kwargs):
    return _tiny_gen_run(sam, **kwargs)[1]


def _tiny_gen_run(sam, **kwargs):
    """The generator (its own module tree: SDPA and compile never change `sam`) and its masks."""
    from ssa.masks.fast_amg import FastMaskGenerator

    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    settings = {**KEEP_ALL, "points_per_side": 2}
    gen = FastMaskGenerator(sam, **settings, **kwargs)
    with torch.inference_mode():
        return gen, gen.generate_masks(image)


def test_sdpa_encoder_path_runs_on_cpu() -> None:
    from ssa.masks.sam_speedups import _sdpa_forward

    ref = _tiny_run(_tiny_sam(), sdpa=False)
    sam = _tiny_sam()
    gen, got = _tiny_gen_run(sam, sdpa=True)
    assert sam.image_encoder.blocks[0].attn.forward.__func__ is not _sdpa_forward
    assert gen.model.image_encoder.blocks[0].attn.forward.__func__ is _sdpa_forward
    assert len(got.records) == len(ref.records) == 12
    assert float(_matched_iou(ref.masks, got.masks).min()) >= 0.99


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None,
                    reason="torch.compile on the CPU needs a C++ compiler ($CXX or g++), and "
                           "none is on PATH here")
def test_compile_path_runs_on_cpu() -> None:
    """Inductor builds C++ kernels for the encoder and decoder (the slowest test here: the
    compilation, about 2 minutes on 2 busy cores, whatever the model's size)."""
    ref = _tiny_run(_tiny_sam())
    sam = _tiny_sam()
    gen, got = _tiny_gen_run(sam, compile=True)
    assert hasattr(gen.model.image_encoder, "_orig_mod")
    assert hasattr(gen.model.mask_decoder, "_orig_mod")
    assert not hasattr(sam.image_encoder, "_orig_mod")  # the model given stays as it was
    assert len(got.records) == len(ref.records) == 12
    assert float(_matched_iou(ref.masks, got.masks).min()) >= 0.99


# ------------------------------------------------------------------ the command line


@pytest.mark.parametrize("extra,message", [
    (["--precision", "fp16"], "--precision fp16 needs a CUDA device"),
    (["--precision", "bf16", "--amg-impl", "stock"], "need --amg-impl fast"),
    (["--precision", "fp64"], "--precision 'fp64'"),
])
def test_run_refuses_with_one_line(tmp_path, sam_checkpoint, segformer_5, monkeypatch,
                                   extra, message) -> None:
    from conftest import make_image
    from test_run import invoke, one_line_error, run_args

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    make_image(tmp_path / "data" / "x.png")
    result = invoke(*run_args(tmp_path / "data", tmp_path / "out", sam_checkpoint, segformer_5,
                              "--dataset", "folder", *extra))
    assert message in one_line_error(result)


def test_precision_reaches_both_branches(tmp_path, sam_checkpoint, segformer_5,
                                         monkeypatch) -> None:
    from ssa.config import build_config
    from ssa.plan import plan_run
    from ssa.run.labeller import build_labeller

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "data").mkdir()
    cfg = build_config({"precision": "bf16"}, {
        "dataset": "folder", "data_dir": tmp_path / "data", "out_dir": tmp_path / "out",
        "sam_model": "vit_b", "sam_checkpoint": sam_checkpoint, "segmentor": f"hf:{segformer_5}",
        "device": "cpu", "amg_preset": "default"})
    (tmp_path / "data" / "a.png").write_bytes(b"")  # one image to plan (never read)
    labeller = build_labeller(plan_run(cfg))
    assert labeller.mask_source.generator.autocast_dtype == torch.bfloat16
    assert labeller.segmentor.model.dtype == torch.bfloat16
    cfg = build_config({}, {**{k: getattr(cfg, k) for k in ("dataset", "data_dir", "out_dir",
                                                            "sam_checkpoint", "device")},
                            "segmentor": f"hf:{segformer_5}", "amg_preset": "default"})
    labeller = build_labeller(plan_run(cfg))  # fp32: nothing cast
    assert labeller.mask_source.generator.autocast_dtype is None
    assert labeller.segmentor.model.dtype == torch.float32
