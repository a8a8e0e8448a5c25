"""`hf:` mask sources against transformers' own `pipeline("mask-generation")` and models.

Tiny random SAM, SAM-HQ and SAM 2 models (256 px input, hidden sizes 8..64) are saved with
`save_pretrained` beside their processors and loaded through `load_hf_mask_source`. Random
weights at transformers' init give masks that all span the image, so box NMS keeps one: the
models here are drawn with a larger init (1.0) and a stronger positional embedding, which gives
masks of varied boxes on an image of coloured blocks (NMS at 0.7 keeps several).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssa.errors import SSAError

S = 256  # the models' input size (SAM pads to it, SAM 2 squashes to it)
POINTS = 8


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _blocks(height: int, width: int) -> np.ndarray:
    """A synthetic image of coloured blocks on black: `HWC uint8`."""
    img = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = height / 128, width / 128
    for (y0, y1, x0, x1), colour in [
        ((10, 50, 10, 60), (255, 0, 0)), ((70, 120, 20, 50), (0, 255, 0)),
        ((30, 100, 80, 120), (0, 0, 255)), ((90, 125, 60, 125), (255, 255, 0)),
    ]:
        img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)] = colour
    return img


def _sam_folder(folder, hq: bool = False):
    from transformers import SamImageProcessor

    if hq:
        from transformers import SamHQConfig as Config
        from transformers import SamHQMaskDecoderConfig as Decoder
        from transformers import SamHQModel as Model
        from transformers import SamHQProcessor as Processor
        from transformers import SamHQPromptEncoderConfig as Prompt
        from transformers import SamHQVisionConfig as Vision
        extra = {"vit_dim": 32}
    else:
        from transformers import SamConfig as Config
        from transformers import SamMaskDecoderConfig as Decoder
        from transformers import SamModel as Model
        from transformers import SamProcessor as Processor
        from transformers import SamPromptEncoderConfig as Prompt
        from transformers import SamVisionConfig as Vision
        extra = {}
    torch.manual_seed(0)
    vision = Vision(hidden_size=32, output_channels=32, num_hidden_layers=1, num_attention_heads=2,
                    image_size=S, patch_size=16, window_size=4, global_attn_indexes=[],
                    mlp_dim=64, num_pos_feats=16, initializer_range=1.0)
    prompt = Prompt(hidden_size=32, image_size=S, patch_size=16, mask_input_channels=4)
    decoder = Decoder(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                      iou_head_hidden_dim=32, **extra)
    model = Model(Config(vision_config=vision, prompt_encoder_config=prompt,
                         mask_decoder_config=decoder, initializer_range=1.0)).eval()
    with torch.no_grad():
        model.shared_image_embedding.positional_embedding.mul_(10)
    processor = Processor(SamImageProcessor(size={"longest_edge": S},
                                            pad_size={"height": S, "width": S}))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _sam2_folder(folder):
    from transformers import (
        Sam2Config,
        Sam2HieraDetConfig,
        Sam2ImageProcessor,
        Sam2MaskDecoderConfig,
        Sam2Model,
        Sam2Processor,
        Sam2PromptEncoderConfig,
        Sam2VisionConfig,
    )

    torch.manual_seed(0)
    # Hiera: patch stride 4, three query-pool stages (S/4 .. S/32); a global block must not be
    # a stage's first (pooling) block.
    backbone = Sam2HieraDetConfig(
        hidden_size=8, num_attention_heads=1, image_size=[S, S], blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[8, 4, 4, 4], global_attention_blocks=[3],
        window_positional_embedding_background_size=[4, 4], initializer_range=1.0)
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[S // 4] * 2, [S // 8] * 2, [S // 16] * 2],
                              fpn_hidden_size=32, initializer_range=1.0)
    prompt = Sam2PromptEncoderConfig(hidden_size=32, image_size=S, patch_size=16,
                                     mask_input_channels=4)
    decoder = Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                    iou_head_hidden_dim=32)
    model = Sam2Model(Sam2Config(vision_config=vision, prompt_encoder_config=prompt,
                                 mask_decoder_config=decoder, initializer_range=1.0)).eval()
    with torch.no_grad():
        model.shared_image_embedding.positional_embedding.mul_(10)
    processor = Sam2Processor(Sam2ImageProcessor(size={"height": S, "width": S},
                                                 mask_size={"height": S // 4, "width": S // 4}))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def _edgetam_folder(folder):
    """A tiny EdgeTAM: timm's RepViT backbone (widths 8..64, one block per stage) through
    transformers' `TimmWrapperConfig`, SAM 2's sizes elsewhere; None without timm."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return None
    from transformers import (
        EdgeTamConfig,
        EdgeTamMaskDecoderConfig,
        EdgeTamModel,
        EdgeTamPromptEncoderConfig,
        EdgeTamVisionConfig,
        Sam2ImageProcessor,
        Sam2Processor,
        TimmWrapperConfig,
    )

    torch.manual_seed(0)
    backbone = TimmWrapperConfig(architecture="repvit_m1", model_args={
        "in_chans": 3, "features_only": True, "out_indices": [0, 1, 2, 3],
        "embed_dim": (8, 16, 32, 64), "depth": (1, 1, 1, 1)})
    vision = EdgeTamVisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                                 backbone_feature_sizes=[[S // 4] * 2, [S // 8] * 2,
                                                         [S // 16] * 2],
                                 fpn_hidden_size=32, initializer_range=1.0)
    prompt = EdgeTamPromptEncoderConfig(hidden_size=32, image_size=S, patch_size=16,
                                        mask_input_channels=4)
    decoder = EdgeTamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2,
                                       iou_head_hidden_dim=32)
    model = EdgeTamModel(EdgeTamConfig(vision_config=vision, prompt_encoder_config=prompt,
                                       mask_decoder_config=decoder,
                                       initializer_range=1.0)).eval()
    with torch.no_grad():
        model.shared_image_embedding.positional_embedding.mul_(10)
    processor = Sam2Processor(Sam2ImageProcessor(size={"height": S, "width": S},
                                                 mask_size={"height": S // 4, "width": S // 4}))
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hfmasks")
    return {
        "sam": _sam_folder(root / "sam"),
        "sam_hq": _sam_folder(root / "sam_hq", hq=True),
        "sam2": _sam2_folder(root / "sam2"),
        "edgetam": _edgetam_folder(root / "edgetam"),
    }


def _folder(folders, family):
    if folders[family] is None:
        pytest.skip("EdgeTAM's backbone needs timm (pip install timm; the test extra has it)")
    return folders[family]


def _pipeline(folder, image: np.ndarray, **kwargs):
    """transformers' pipeline on `image`: `(N, H, W) bool` masks, `(N,)` scores, `(N, 4)` XYXY."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForMaskGeneration, pipeline

    gen = pipeline("mask-generation", model=AutoModelForMaskGeneration.from_pretrained(folder),
                   image_processor=AutoImageProcessor.from_pretrained(folder), device="cpu")
    out = gen(Image.fromarray(image), output_bboxes_mask=True, **kwargs)
    masks = [torch.as_tensor(np.array(m), dtype=torch.bool) for m in out["masks"]]
    stack = torch.stack(masks) if masks else torch.zeros(0, *image.shape[:2], dtype=torch.bool)
    return stack, out["scores"].float(), out["bounding_boxes"].long()


def _match(ref: torch.Tensor, got: torch.Tensor) -> list[tuple[int, int]]:
    """One-to-one pairs (i, j) at mask IoU >= 0.99, greedy in `ref` order (duplicate masks,
    which NMS off keeps, pair with the first unused equal one, the same index preferred)."""
    r, g = ref.flatten(1).float(), got.flatten(1).float()
    inter = r @ g.T
    union = r.sum(1)[:, None] + g.sum(1)[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), 1.0)
    used = torch.zeros(len(g), dtype=torch.bool)
    pairs = []
    for i in range(len(r)):
        row = torch.where(used, -1.0, iou[i])
        if i < len(g):
            row[i] += 1e-6
        j = int(row.argmax()) if len(g) else -1
        if j >= 0 and row[j] >= 0.99:
            used[j] = True
            pairs.append((i, j))
    return pairs


def _xyxy(record: dict) -> list[int]:
    x, y, w, h = record["bbox"]
    return [x, y, x + w, y + h]


# (family, image, box NMS, crop layers, fewest masks the pipeline keeps): NMS off and on, one
# crop layer; SAM also on a landscape image.
CASES = [
    ("sam", (96, 96), 1.0, 0, 150), ("sam", (96, 96), 0.7, 0, 10),
    ("sam", (80, 128), 0.7, 1, 5), ("sam2", (96, 96), 1.0, 0, 150),
    ("sam2", (96, 96), 0.7, 0, 10), ("sam2", (96, 96), 0.7, 1, 10),
    ("sam_hq", (96, 96), 1.0, 0, 150), ("edgetam", (96, 96), 1.0, 0, 150),
]


@pytest.mark.parametrize(("family", "size", "nms", "layers", "fewest"), CASES)
def test_generate_equals_pipeline(folders, family, size, nms, layers, fewest):
    from ssa.io import decode_rle
    from ssa.masks.base import MaskSource
    from ssa.masks.hf import load_hf_mask_source

    image = _blocks(*size)
    folder = _folder(folders, family)
    ref_masks, ref_scores, ref_boxes = _pipeline(
        folder, image, points_per_crop=POINTS, pred_iou_thresh=0.0, stability_score_thresh=0.0,
        crops_nms_thresh=nms, crops_n_layers=layers)
    # The exact shared-image decoder (transformers' arithmetic); the fast one against it:
    # test_fast_decoder_keeps_the_exact_sets.
    source = load_hf_mask_source(str(folder), "cpu", {
        "points_per_side": POINTS, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
        "box_nms_thresh": nms, "crop_n_layers": layers}, decoder="exact")
    assert isinstance(source, MaskSource)
    out = source.generate(image)
    n_ref, n_got = len(ref_masks), len(out.records)
    assert n_ref >= fewest  # the case means something
    assert abs(n_got - n_ref) <= 0.02 * n_ref
    pairs = _match(ref_masks, out.masks.cpu())
    assert len(pairs) >= 0.98 * n_ref
    for i, j in pairs:
        rec = out.records[j]
        assert rec["predicted_iou"] == pytest.approx(float(ref_scores[i]), abs=1e-5)
        assert _xyxy(rec) == ref_boxes[i].tolist()
    # Records: the SA-1B contract, RLE = the mask stack, in record order.
    h, w = size
    for rec, mask in zip(out.records, out.masks.cpu()):
        assert np.array_equal(decode_rle(rec["segmentation"]), mask.numpy())
        assert rec["area"] == int(mask.sum())
        x0, y0, x1, y1 = rec["crop_box"][0], rec["crop_box"][1], *rec["crop_box"][2:]
        assert 0 <= x0 and 0 <= y0 and x0 + x1 <= w and y0 + y1 <= h
        (px, py), = rec["point_coords"]
        assert 0 <= px <= w and 0 <= py <= h
        # 0 / 0 (no pixel even at the lower level) is NaN, as segment-anything gives it.
        assert 0.0 <= rec["stability_score"] <= 1.0 or rec["area"] == 0
    # Every crop (the image, then 2x2 for one layer) was decoded at every grid point.
    assert source.stats.candidates == (1 + 4 * layers) * 3 * POINTS * POINTS


def test_sam2_landscape_equals_pipeline_with_processor_scaling(folders, monkeypatch):
    """On a non-square image the pipeline scales SAM 2 grid points for a longest-edge resize;
    with `Sam2Processor`'s own point scaling patched in, it gives ssa's masks."""
    import transformers.models.sam2.image_processing_sam2 as sam2_ip
    from transformers import AutoProcessor

    from ssa.masks.hf import load_hf_mask_source

    image = _blocks(80, 128)
    folder = folders["sam2"]
    settings = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
    source = load_hf_mask_source(str(folder), "cpu", dict(settings, points_per_side=POINTS,
                                                          box_nms_thresh=0.7))
    out = source.generate(image)
    stock, _, _ = _pipeline(folder, image, points_per_crop=POINTS, crops_nms_thresh=0.7,
                            **settings)
    processor = AutoProcessor.from_pretrained(folder)
    monkeypatch.setattr(sam2_ip, "_normalize_coordinates",
                        lambda target, coords, size: processor._normalize_coordinates(
                            target, coords, size))
    fixed, _, _ = _pipeline(folder, image, points_per_crop=POINTS, crops_nms_thresh=0.7,
                            **settings)
    assert len(fixed) >= 3
    assert len(out.records) == len(fixed)
    assert len(_match(fixed, out.masks)) == len(fixed)
    # Unpatched, the prompts differ (the grid covers the top 5/8 of the image only).
    assert len(_match(stock, out.masks)) < len(fixed) or len(stock) != len(fixed)


def test_default_knobs_equal_pipeline(folders):
    """The pipeline's own defaults for every knob but the grid and the thresholds (its batch,
    NMS, crop settings, offset, multimask)."""
    from ssa.masks.hf import knobs, load_hf_mask_source

    assert set(knobs()) == {"points_per_side", "points_per_batch", "pred_iou_thresh",
                            "stability_score_thresh", "stability_score_offset", "box_nms_thresh",
                            "crop_n_layers", "crop_nms_thresh", "crop_overlap_ratio",
                            "crop_n_points_downscale_factor", "min_mask_region_area",
                            "multimask_output"}
    image = _blocks(96, 96)
    ref_masks, _ref_scores, _ = _pipeline(folders["sam"], image, points_per_crop=POINTS,
                                         pred_iou_thresh=0.0, stability_score_thresh=0.0)
    source = load_hf_mask_source(str(folders["sam"]), "cpu", {
        "points_per_side": POINTS, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    out = source.generate(image)
    assert len(out.records) == len(ref_masks) >= 3
    assert len(_match(ref_masks, out.masks)) == len(ref_masks)


def test_stability_threshold_equals_pipeline(folders):
    from ssa.masks.hf import load_hf_mask_source

    image = _blocks(128, 128)
    ref_masks, _, _ = _pipeline(folders["sam"], image, points_per_crop=POINTS, pred_iou_thresh=0.0,
                                stability_score_thresh=0.6, crops_nms_thresh=1.0)
    source = load_hf_mask_source(str(folders["sam"]), "cpu", {
        "points_per_side": POINTS, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.6,
        "box_nms_thresh": 1.0})
    out = source.generate(image)
    assert 0 < len(ref_masks) < 3 * POINTS * POINTS  # the filter removes some, keeps some
    assert len(out.records) == len(ref_masks)
    assert len(_match(ref_masks, out.masks)) == len(ref_masks)


def _brute_small_regions(mask: np.ndarray, area: int) -> tuple[np.ndarray, bool]:
    """segment-anything's `remove_small_regions` (holes, then islands; 8-connected) by scipy
    labelling: holes smaller than `area` filled, islands smaller than `area` removed (the
    largest island kept when all are small)."""
    from scipy import ndimage

    eight = np.ones((3, 3), dtype=int)
    changed = False
    out = mask.copy()
    holes, n = ndimage.label(~out, structure=eight)
    for k in range(1, n + 1):
        if (holes == k).sum() < area:
            out[holes == k] = True
            changed = True
    islands, n = ndimage.label(out, structure=eight)
    sizes = [(islands == k).sum() for k in range(1, n + 1)]
    small = [k + 1 for k, s in enumerate(sizes) if s < area]
    if small:
        changed = True
        keep = [k for k in range(1, n + 1) if k not in small] or [int(np.argmax(sizes)) + 1]
        out = np.isin(islands, keep)
    return out, changed


def test_min_mask_region_area_brute_force(folders):
    from torchvision.ops import batched_nms

    from ssa.masks.hf import load_hf_mask_source

    image = _blocks(96, 96)
    area = 30
    base = {"points_per_side": 6, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
            "box_nms_thresh": 0.9}
    plain = load_hf_mask_source(str(folders["sam"]), "cpu", base).generate(image)
    cleaned = load_hf_mask_source(str(folders["sam"]), "cpu",
                                  dict(base, min_mask_region_area=area)).generate(image)
    masks, scores = [], []
    for m in plain.masks.cpu().numpy():
        new, changed = _brute_small_regions(m, area)
        masks.append(new)
        scores.append(0.0 if changed else 1.0)
    assert 0.0 in scores  # some mask had a small region
    stack = torch.from_numpy(np.stack(masks))
    ys, xs = stack.any(2), stack.any(1)
    boxes = []
    for y, x in zip(ys, xs):
        yi, xi = y.nonzero().flatten(), x.nonzero().flatten()
        boxes.append([xi.min(), yi.min(), xi.max(), yi.max()] if len(yi) else [0, 0, 0, 0])
    keep = batched_nms(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores),
                       torch.zeros(len(boxes)), iou_threshold=0.9)
    assert len(cleaned.records) == len(keep)
    for rec, mask, k in zip(cleaned.records, cleaned.masks.cpu(), keep.tolist()):
        assert torch.equal(mask, stack[k])
        assert rec["area"] == int(stack[k].sum())


@pytest.mark.parametrize("family", ["sam", "sam2"])
def test_predict_equals_model(folders, family):
    """Clicks and a box on a landscape image: the masks, scores of the processor + model called
    directly (the processor scales the prompts; SAM 2 to its square input)."""
    from transformers import AutoModelForMaskGeneration, AutoProcessor

    from ssa.masks.hf import load_hf_mask_source

    image = _blocks(96, 160)
    folder = str(folders[family])
    source = load_hf_mask_source(folder, "cpu", {})
    source.set_image(image)
    model = AutoModelForMaskGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    prompts = [
        {"points": [[30.0, 20.0], [120.0, 70.0]], "labels": [1, 0], "box": None},
        {"points": None, "labels": None, "box": [10.0, 5.0, 90.0, 60.0]},
    ]
    for prompt in prompts:
        for multimask in (True, False):
            kwargs = {}
            if prompt["points"] is not None:
                kwargs["input_points"] = [[prompt["points"]]]
                kwargs["input_labels"] = [[prompt["labels"]]]
            if prompt["box"] is not None:
                kwargs["input_boxes"] = [[prompt["box"]]]
            # In the model's dtype, as pipelines feed it (the processor gives float64 points).
            inputs = processor(images=image, return_tensors="pt", **kwargs).to(model.dtype)
            with torch.no_grad():
                ref = model(**{k: v for k, v in inputs.items()
                               if k not in ("original_sizes", "reshaped_input_sizes")},
                            multimask_output=multimask)
            post = {"reshaped_input_sizes": inputs["reshaped_input_sizes"]} if family == "sam" else {}
            ref_masks = processor.post_process_masks(ref.pred_masks, inputs["original_sizes"],
                                                     **post)[0][0]
            out = source.predict(
                None if prompt["points"] is None else np.array(prompt["points"]),
                None if prompt["labels"] is None else np.array(prompt["labels"]),
                None if prompt["box"] is None else np.array(prompt["box"]), multimask)
            assert len(out.records) == (3 if multimask else 1)
            assert torch.equal(out.masks.cpu(), ref_masks)
            got = torch.tensor([r["predicted_iou"] for r in out.records])
            assert torch.allclose(got, ref.iou_scores[0, 0], atol=1e-6)


def test_refuses_non_sam_folder(tmp_path):
    from transformers import SegformerConfig

    from ssa.masks.hf import load_hf_mask_source

    SegformerConfig(num_encoder_blocks=1, depths=[1], sr_ratios=[1], hidden_sizes=[8],
                    num_attention_heads=[1]).save_pretrained(tmp_path)
    with pytest.raises(SSAError, match="not a SAM-family mask generator") as err:
        load_hf_mask_source(str(tmp_path), "cpu", {})
    assert "segformer" in str(err.value) and "sam2" in str(err.value)
    assert "\n" not in str(err.value)


def test_offline_missing_id_one_line(monkeypatch, tmp_path):
    from ssa.masks.hf import load_hf_mask_source

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(SSAError) as err:
        load_hf_mask_source("facebook/sam2.1-hiera-does-not-exist", "cpu", {})
    text = str(err.value)
    assert "facebook/sam2.1-hiera-does-not-exist" in text and "hf download" in text
    assert "\n" not in text


def test_unknown_knob_lists_valid_keys(folders):
    from ssa.masks.hf import load_hf_mask_source

    with pytest.raises(SSAError, match="valid keys: .*points_per_side"):
        load_hf_mask_source(str(folders["sam"]), "cpu", {"points_per_sid": 8})


def test_ssa_run_with_an_hf_mask_source(folders, tmp_path):
    """`ssa run --masks hf:<SAM 2 folder>` end to end: the output JSON's masks are the
    pipeline's (pycocotools decode, matched one-to-one) and the label map follows the SSA rule
    (brute force) over the branch's labels."""
    from PIL import Image
    from pycocotools import mask as mask_utils
    from test_voting_policies import brute_force
    from typer.testing import CliRunner

    from ssa.cli.commands import app

    image = _blocks(96, 96)
    data, labels_dir, out = tmp_path / "images", tmp_path / "labels", tmp_path / "out"
    data.mkdir()
    labels_dir.mkdir()
    Image.fromarray(image).save(data / "x.png")
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, image.shape[:2]).astype(np.uint8)
    Image.fromarray(labels).save(labels_dir / "x.png")
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\n")
    knobs = {"points_per_side": POINTS, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
             "box_nms_thresh": 1.0}
    result = CliRunner().invoke(app, [
        "run", "--dataset", "folder", "--data-dir", str(data), "--out-dir", str(out),
        "--masks", f"hf:{folders['sam2']}", *[f"--amg={k}={v}" for k, v in knobs.items()],
        "--segmentor", f"labels:{labels_dir}", "--classes", str(classes), "--device", "cpu",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    import json

    doc = json.loads((out / "x_semantic.json").read_text())
    got = np.stack([mask_utils.decode(a["segmentation"]).astype(bool) for a in doc["annotations"]])
    ref_masks, _, _ = _pipeline(folders["sam2"], image, points_per_crop=POINTS,
                                pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                crops_nms_thresh=1.0, crops_n_layers=0)
    assert len(got) == len(ref_masks) > 10
    assert len(_match(ref_masks, torch.from_numpy(got))) == len(ref_masks)
    ref_classes, _, ref_map = brute_force(got, labels.astype(np.int64), 3)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "x_semantic.png")), ref_map)
    assert [a["class_name"] for a in doc["annotations"]] == [
        "abc"[c] if c >= 0 else None for c in ref_classes
    ]


def test_ssa_predict_with_an_hf_mask_source(folders, tmp_path):
    """`ssa predict --masks hf:<SAM folder>` gives the source's own three masks for the click,
    ordered whole -> subpart by area."""
    import json

    from PIL import Image
    from pycocotools import mask as mask_utils
    from typer.testing import CliRunner

    from ssa.cli.commands import app
    from ssa.masks.hf import load_hf_prompt_source

    image = _blocks(96, 96)
    path = tmp_path / "x.png"
    Image.fromarray(image).save(path)
    plugin = tmp_path / "halves.py"  # a segmentor: class 0 on the left half, 1 on the right
    plugin.write_text(
        "import numpy as np\n"
        "class Halves:\n"
        "    classes = ['left', 'right']\n"
        "    def __call__(self, image):\n"
        "        out = np.zeros(image.shape[:2], np.int64)\n"
        "        out[:, image.shape[1] // 2:] = 1\n"
        "        return out\n"
        "def make(device='cpu'):\n"
        "    return Halves()\n"
    )
    out = tmp_path / "p.json"
    result = CliRunner().invoke(app, [
        "predict", str(path), "--point", "30,20", "--masks", f"hf:{folders['sam']}",
        "--segmentor", f"py:{plugin}:make", "--json", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    source = load_hf_prompt_source(str(folders["sam"]))
    source.set_image(image)
    ref = source.predict(np.array([[30.0, 20.0]]), np.array([1]), None, True).masks.numpy()
    doc = json.loads(out.read_text())
    records = doc["masks"] if isinstance(doc, dict) and "masks" in doc else doc
    got = [mask_utils.decode(r["segmentation"]).astype(bool) for r in records]
    assert len(got) == 3
    by_area = sorted(range(3), key=lambda i: -int(ref[i].sum()))
    for mask, i, record in zip(got, by_area, records):
        np.testing.assert_array_equal(mask, ref[i])
        left, right = int(mask[:, :48].sum()), int(mask[:, 48:].sum())
        assert record["class_name"] == ("left" if left >= right else "right")


def test_bf16_runs_the_networks_in_bf16_and_decides_in_fp32(folders):
    """`precision="bf16"`: the encoder and decoder under CPU autocast (the embeddings come out
    bf16), every candidate kept as in fp32, the records' scores float32; fp16 refused on the
    CPU. (This tiny random model, initializer_range 1.0, has activations in the hundreds, so
    bf16 rounding moves its masks far more than a trained SAM's: agreement is tested on the
    segment-anything path, tests/test_precision.py.)"""
    from ssa.errors import SSAError
    from ssa.masks.hf import load_hf_mask_source

    image = _blocks(96, 96)
    settings = {"points_per_side": POINTS, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                "box_nms_thresh": 1.0}
    fp32_source = load_hf_mask_source(str(folders["sam"]), "cpu", settings)
    source = load_hf_mask_source(str(folders["sam"]), "cpu", settings, precision="bf16")
    with torch.inference_mode():
        emb = source._encode(image, [0, 0, 96, 96]).embeddings["image_embeddings"]
        ref = fp32_source._encode(image, [0, 0, 96, 96]).embeddings["image_embeddings"]
    assert emb.dtype == torch.bfloat16 and ref.dtype == torch.float32
    fp32, bf16 = fp32_source.generate(image), source.generate(image)
    assert len(bf16.records) == len(fp32.records) >= 10
    assert all(type(r["predicted_iou"]) is float for r in bf16.records)
    with pytest.raises(SSAError, match="^--precision fp16 needs a CUDA device"):
        load_hf_mask_source(str(folders["sam"]), "cpu", settings, precision="fp16")


def _embeddings(model, processor, image: np.ndarray) -> dict:
    """`get_image_embeddings` of the processed image, keyed as `ssa.masks.hf` holds them."""
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    out = model.get_image_embeddings(pixels)
    if isinstance(out, tuple):  # SAM-HQ
        return {"image_embeddings": out[0], "intermediate_embeddings": out[1]}
    return {"image_embeddings": out}


def _prompts(batch: int, seed: int) -> list[dict]:
    """Point batches (one click; a click and a negative click), boxes, and a box with a click,
    in the prompt encoder's frame (the models' 256-px input)."""
    gen = torch.Generator().manual_seed(seed)
    pts = torch.rand(batch, 2, 2, generator=gen) * S
    corner = torch.rand(batch, 2, generator=gen) * S / 2
    boxes = torch.cat([corner, corner + S / 3], dim=1)
    return [
        {"input_points": pts[None, :, :1], "input_labels": torch.ones(1, batch, 1, dtype=torch.long)},
        {"input_points": pts[None], "input_labels": torch.tensor([[[1, 0]] * batch])},
        {"input_boxes": boxes[None]},
        {"input_points": pts[None, :, :1], "input_labels": torch.ones(1, batch, 1, dtype=torch.long),
         "input_boxes": boxes[None]},
    ]


def _mask_ious(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of each pair of binarised masks (the last two dims), 1 where both are empty."""
    a, b = a.flatten(-2), b.flatten(-2)
    inter, union = (a & b).sum(-1), (a | b).sum(-1)
    return torch.where(union > 0, inter / union.clamp_min(1), 1.0)


@pytest.mark.parametrize("family", ["sam", "sam_hq", "sam2", "edgetam"])
def test_shared_image_decoder_equals_the_model(folders, family):
    """`ssa.masks.hf_decoder.SharedImageDecoder` against the transformers model it replaces
    (`model(image_embeddings=..., prompts)`, loaded with `from_pretrained` from the saved tiny
    config), 13 prompts a batch, points, boxes and both, one mask and three: the exact mode
    bit for bit; the fast mode (another summation order) within float rounding. These random
    models (init 1.0, activations in the thousands, attention logits in the hundreds) are far
    worse conditioned than trained ones, so "rounding" is up to 2e-3 of the largest logit
    here; a logit may change sign only within that of 0 (at most 1 in 10^4 of them) and every
    low-res mask keeps IoU >= 0.99 with the model's (BENCHMARKS.md has the full-size figures)."""
    from transformers import AutoConfig, AutoModelForMaskGeneration, AutoProcessor

    from ssa.masks.hf_decoder import SharedImageDecoder

    folder = _folder(folders, family)
    model = AutoModelForMaskGeneration.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    model_type = AutoConfig.from_pretrained(folder).model_type
    decoders = {mode: SharedImageDecoder(model, model_type, mode) for mode in ("exact", "fast")}
    with torch.inference_mode():
        emb = _embeddings(model, processor, _blocks(96, 96))
        shared = {mode: d.prepare(emb) for mode, d in decoders.items()}
        for prompt in _prompts(13, seed=1):
            for multimask in (True, False):
                ref = model(**emb, **prompt, multimask_output=multimask)
                ref_masks, ref_iou = ref.pred_masks[0], ref.iou_scores[0]
                sparse, _ = model.prompt_encoder(input_points=prompt.get("input_points"),
                                                 input_labels=prompt.get("input_labels"),
                                                 input_boxes=prompt.get("input_boxes"),
                                                 input_masks=None)
                masks, iou = decoders["exact"](shared["exact"], sparse, multimask)
                assert masks.shape == ref_masks.shape == (13, 3 if multimask else 1, S // 4, S // 4)
                assert torch.equal(masks, ref_masks) and torch.equal(iou, ref_iou)
                masks, iou = decoders["fast"](shared["fast"], sparse, multimask)
                tol = 2e-3 * float(ref_masks.abs().max())
                assert (masks - ref_masks).abs().max() <= tol
                flipped = (masks > 0) != (ref_masks > 0)
                assert int(flipped.sum()) <= 1e-4 * flipped.numel()
                assert bool((ref_masks[flipped].abs() <= tol).all())
                assert bool((_mask_ious(masks > 0, ref_masks > 0) >= 0.99).all())
                assert torch.allclose(iou, ref_iou, rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize(("family", "nms", "stability"), [
    ("sam", 0.7, 0.6), ("sam", 1.0, 0.0), ("sam_hq", 1.0, 0.0), ("sam2", 0.7, 0.0),
    ("sam2", 1.0, 0.6), ("edgetam", 1.0, 0.0)])
def test_fast_decoder_keeps_the_exact_sets(folders, family, nms, stability):
    """Automatic generation with the fast decoder keeps the same candidates, in the same order,
    as with transformers' model called per batch (`decoder="stock"`, the pipeline's network):
    the same prompt points and crop boxes, every mask at IoU >= 0.99 (a pixel whose logit is
    within rounding of 0 may differ; see the test above), scores within rounding."""
    from ssa.masks.hf import load_hf_mask_source

    folder = str(_folder(folders, family))
    image = _blocks(96, 96)
    settings = {"points_per_side": POINTS, "pred_iou_thresh": 0.0,
                "stability_score_thresh": stability, "box_nms_thresh": nms}
    stock = load_hf_mask_source(folder, "cpu", settings, decoder="stock").generate(image)
    fast = load_hf_mask_source(folder, "cpu", settings).generate(image)
    assert len(stock.records) >= 3
    assert len(fast.records) == len(stock.records)
    ious = _mask_ious(fast.masks.cpu(), stock.masks.cpu())
    assert bool((ious >= 0.99).all()) and float(ious.mean()) >= 0.999
    for a, b in zip(fast.records, stock.records):
        assert a["point_coords"] == b["point_coords"] and a["crop_box"] == b["crop_box"]
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], rel=1e-2, abs=1e-4)
