"""The open-vocabulary engine (`ssa engine`) with tiny random BLIP, CLIP, CLIPSeg and OneFormer
models saved with `save_pretrained` (tokenizers included) and loaded through the real code, on
the real Cityscapes fixture frame with masks from its instance ground truth."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CITY_STEM, CITYSCAPES, need
from typer.testing import CliRunner

ADE_NAMES = ["wall", "sky", "tree", "road", "grass", "building"]
COCO_NAMES = ["person", "car", "bus", "wall-other-merged", "tree-merged"]
BLIP_WORDS = ["a", "the", "of", "on", "with", "red", "car", "dog", "tree", "sky", "road",
              "building", "person", "grass", "picture", "street", "there", "is", "bike", "sign"]


def clip_tokenizer():
    """A character-level CLIP BPE tokenizer (no merges): every lowercase text encodes."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,'-":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


def bert_tokenizer():
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *BLIP_WORDS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)}, bos_token="[DEC]")


def _tower(tokens: int | None = None, width: int = 32, layers: int = 2, image: int = 32) -> dict:
    cfg = {"hidden_size": width, "intermediate_size": width + 5, "num_hidden_layers": layers,
           "num_attention_heads": 2}
    if tokens is None:
        cfg.update(image_size=image, patch_size=8)
    else:
        cfg.update(vocab_size=tokens, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                   pad_token_id=1)
    return cfg


def save_tiny_models(
    root: Path, width: int = 32, layers: int = 2, image: int = 32
) -> dict[str, str]:
    """Tiny random models of the five roles, each in a save_pretrained folder. `width`, `layers`
    and `image` (input side) size the BLIP, CLIP and CLIPSeg towers (the benchmark makes them
    larger)."""
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        OneFormerConfig,
        OneFormerForUniversalSegmentation,
        OneFormerImageProcessor,
        OneFormerProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    ctok = clip_tokenizer()
    paths = {role: root / role for role in
             ("captioner", "clip", "clipseg", "oneformer_ade", "oneformer_coco")}
    text_tower, vision_tower = _tower(len(ctok), width, layers), _tower(None, width, layers, image)
    CLIPModel(CLIPConfig(text_config=text_tower, vision_config=vision_tower,
                         projection_dim=16)).save_pretrained(paths["clip"])
    CLIPProcessor(
        CLIPImageProcessor(size={"shortest_edge": image},
                           crop_size={"height": image, "width": image}), ctok
    ).save_pretrained(paths["clip"])
    CLIPSegForImageSegmentation(CLIPSegConfig(
        text_config=text_tower, vision_config=vision_tower, projection_dim=16, reduce_dim=8,
        extract_layers=[1], decoder_num_attention_heads=2, decoder_intermediate_size=16,
    )).save_pretrained(paths["clipseg"])
    CLIPSegProcessor(
        image_processor=CLIPImageProcessor(size={"height": image, "width": image},
                                           do_center_crop=False),
        tokenizer=ctok,
    ).save_pretrained(paths["clipseg"])
    btok = bert_tokenizer()
    text = dict(_tower(len(btok), width, layers), encoder_hidden_size=width, bos_token_id=5,
                eos_token_id=3, sep_token_id=3, pad_token_id=0, max_position_embeddings=40)
    blip = BlipForConditionalGeneration(BlipConfig(
        text_config=text, vision_config=_tower(None, width, layers, image), projection_dim=16
    ))
    blip.generation_config.max_new_tokens = 6  # random weights never stop by themselves
    blip.save_pretrained(paths["captioner"])
    BlipProcessor(BlipImageProcessor(size={"height": image, "width": image}), btok).save_pretrained(
        paths["captioner"]
    )
    for role, names in (("oneformer_ade", ADE_NAMES), ("oneformer_coco", COCO_NAMES)):
        swin = SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
        config = OneFormerConfig(
            backbone_config=swin, num_queries=8, hidden_dim=32, conv_dim=32, mask_dim=32,
            encoder_feedforward_dim=32, dim_feedforward=32, encoder_layers=1, decoder_layers=2,
            num_attention_heads=2, text_encoder_width=32, text_encoder_num_layers=1,
            text_encoder_vocab_size=len(ctok), text_encoder_context_length=16, task_seq_len=16,
            text_encoder_n_ctx=4, query_dec_layers=1, id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
        )
        OneFormerForUniversalSegmentation(config).save_pretrained(paths[role])
        OneFormerProcessor(
            OneFormerImageProcessor(size={"shortest_edge": 64}, num_labels=len(names),
                                    do_reduce_labels=False),
            ctok, max_seq_length=16, task_seq_length=16,
        ).save_pretrained(paths[role])
    return {role: str(p) for role, p in paths.items()}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    pytest.importorskip("scipy")  # OneFormer's modelling code needs it
    return save_tiny_models(tmp_path_factory.mktemp("engine_models"))


def instance_masks(max_masks: int = 8) -> np.ndarray:
    """The largest segments of the fixture frame's instance ground truth, `(N, 128, 256) bool`."""
    from PIL import Image

    ids = np.asarray(Image.open(need(CITYSCAPES) / f"{CITY_STEM}_gtFine_instanceIds.png"))
    values, counts = np.unique(ids, return_counts=True)
    keep = values[np.argsort(-counts, kind="stable")][:max_masks]
    return np.stack([ids == v for v in keep])


@pytest.fixture()
def sa1b_folder(tmp_path) -> tuple[Path, Path, np.ndarray]:
    """images/<stem>.png (the real frame) and masks/<stem>.json (SA-1B records of its segments)."""
    import shutil

    from ssa import io

    src = need(CITYSCAPES) / f"{CITY_STEM}_leftImg8bit.png"
    images, masks_dir = tmp_path / "images" / "city", tmp_path / "masks" / "city"
    images.mkdir(parents=True)
    masks_dir.mkdir(parents=True)
    shutil.copy(src, images / "frame.png")
    masks = instance_masks()
    annotations = []
    for i, (mask, rle) in enumerate(zip(masks, io.encode_rle(masks))):
        ys, xs = np.nonzero(mask)
        annotations.append({
            "id": 100 + i, "segmentation": rle, "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
            "predicted_iou": 0.9, "stability_score": 0.95, "point_coords": [[1.0, 2.0]],
            "crop_box": [0, 0, 256, 128],
        })
    io.write_json(masks_dir / "frame.json", {"image": {"image_id": 1}, "annotations": annotations})
    return tmp_path / "images", tmp_path / "masks", masks


def run_cli(args: list[str]):
    from ssa.cli.commands import app

    return CliRunner().invoke(app, args)


def model_args(models: dict[str, str]) -> list[str]:
    return [x for role, path in models.items() for x in ("--" + role.replace("_", "-"), path)]


def stock_proposals(models: dict[str, str], image: np.ndarray, masks: np.ndarray, k: int):
    """Per mask, one at a time through transformers' own classes: its box by numpy, BLIP's
    greedy caption of the 1.6x crop, CLIP's top-k over the close-set names (checked against
    brute force below) plus the caption's noun phrases on the 1.2x crop. -> (captions,
    proposals)."""
    from transformers import AutoProcessor, BlipForConditionalGeneration, CLIPModel

    from ssa.engine.crops import CLIP_SCALE, CONTEXT_SCALE, enlarge
    from ssa.engine.labeller import EngineLabeller
    from ssa.engine.nouns import noun_phrases

    close = EngineLabeller(models, "cpu", top_k=k).close_set(image, torch.from_numpy(masks))
    blip = BlipForConditionalGeneration.from_pretrained(models["captioner"]).eval()
    blip_proc = AutoProcessor.from_pretrained(models["captioner"])
    limit = blip.generation_config.max_new_tokens or 20  # the saved config's, else 20
    clip = CLIPModel.from_pretrained(models["clip"]).eval()
    clip_proc = AutoProcessor.from_pretrained(models["clip"])
    height, width = image.shape[:2]
    captions, proposals = [], []
    for mask, cands in zip(masks, close):
        ys, xs = np.nonzero(mask)  # an empty mask's crop is the whole image
        box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs)
                        else [0, 0, width, height]])
        x0, y0, x1, y1 = enlarge(box, CONTEXT_SCALE, width, height)[0]
        with torch.no_grad():
            ids = blip.generate(**blip_proc(images=image[y0:y1, x0:x1], return_tensors="pt"),
                                max_new_tokens=limit, do_sample=False)
        caption = blip_proc.batch_decode(ids, skip_special_tokens=True)[0].strip()
        names = list(dict.fromkeys([*cands, *noun_phrases(caption, True)]))
        x0, y0, x1, y1 = enlarge(box, CLIP_SCALE, width, height)[0]
        with torch.no_grad():
            inputs = clip_proc(text=names, images=image[y0:y1, x0:x1], padding=True,
                               return_tensors="pt")
            probs = clip(**inputs).logits_per_image[0].softmax(0)
        order = sorted(range(len(names)), key=lambda j: (-float(probs[j]), j))[:k]
        captions.append(caption)
        proposals.append([names[j] for j in order])
    return captions, proposals


@pytest.mark.parametrize("k", [1, 3])
def test_engine_names_every_mask_with_k_proposals(tiny_models, sa1b_folder, tmp_path, k):
    """`ssa engine` in batches of 3 over 8 masks: captions and proposals equal the stock models'
    one mask at a time; the name is one of the proposals (CLIPSeg's choice is checked against
    the stock model in test_engine_closeset_and_clipseg_match_brute_force)."""
    from ssa import io

    images, masks_dir, masks = sa1b_folder
    out = tmp_path / "out"
    result = run_cli(["engine", "--data-dir", str(images), "--out-dir", str(out), "--masks",
                      str(masks_dir), "--top-k", str(k), "--device", "cpu", "--batch-size", "3",
                      "--save-vis", *model_args(tiny_models)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "city" / "frame_semantic.json").read_text())
    assert (out / "city" / "frame_vis.jpg").is_file()
    anns = data["annotations"]
    assert len(anns) == len(masks)
    image = io.read_image(images / "city" / "frame.png")
    captions, proposals = stock_proposals(tiny_models, image, masks, k)
    assert [a["caption"] for a in anns] == captions
    assert [a["class_proposals"] for a in anns] == proposals
    for i, ann in enumerate(anns):
        assert len(set(ann["class_proposals"])) == k
        assert ann["class_name"] in ann["class_proposals"]
        # SA-1B fields are kept as they were, the mask unchanged.
        assert ann["id"] == 100 + i and ann["predicted_iou"] == 0.9
        assert ann["point_coords"] == [[1.0, 2.0]] and ann["crop_box"] == [0, 0, 256, 128]
        np.testing.assert_array_equal(io.decode_rle(ann["segmentation"]), masks[i])
    if k == 1:
        assert all(a["class_name"] == a["class_proposals"][0] for a in anns)


def test_engine_resumes_and_reports_bad_models(tiny_models, sa1b_folder, tmp_path):
    images, masks_dir, _ = sa1b_folder
    out = tmp_path / "out"
    base = ["engine", "--data-dir", str(images), "--out-dir", str(out), "--masks", str(masks_dir),
            "--device", "cpu"]
    assert run_cli([*base, "--top-k", "1", *model_args(tiny_models)]).exit_code == 0
    path = out / "city" / "frame_semantic.json"
    before = path.stat().st_mtime_ns
    again = run_cli([*base, "--top-k", "1", *model_args(tiny_models)])
    assert again.exit_code == 0 and "nothing to do: 1 of 1 image already done" in again.output
    assert path.stat().st_mtime_ns == before
    path.unlink()
    bad = dict(tiny_models, clip=str(tmp_path / "no-such-clip"))
    result = run_cli([*base, *model_args(bad)])
    assert result.exit_code == 2  # a folder that is not there: refused while planning
    assert "--clip" in result.output and "no-such-clip" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "empty").mkdir()  # a folder without a model: the loader's error, in one line
    result = run_cli([*base, *model_args(dict(tiny_models, clipseg=str(tmp_path / "empty")))])
    assert result.exit_code == 1 and "cannot load --clipseg" in result.output
    assert "Traceback" not in result.output


def test_engine_closeset_and_clipseg_match_brute_force(tiny_models, sa1b_folder):
    """Close-set candidates against a per-mask numpy loop; CLIPSeg's winner against the stock
    processor called on one crop with its prompts."""
    from transformers import AutoProcessor, CLIPSegForImageSegmentation

    from ssa import io
    from ssa.engine.clipseg import ClipSegNamer
    from ssa.engine.closeset import CloseSetVoter

    images, _, masks = sa1b_folder
    image = io.read_image(images / "city" / "frame.png")
    voter = CloseSetVoter("oneformer_coco", tiny_models["oneformer_coco"])
    got = voter.candidates(image, torch.from_numpy(masks), 3)
    # The full-resolution class probabilities as the segmentor gave them before it returned
    # working-resolution scores: class mass upsampled whole, then normalised per pixel.
    mass = torch.nn.functional.interpolate(voter.segmentor(image)[None], size=image.shape[:2],
                                           mode="bilinear", align_corners=False)[0]
    probs = (mass / mass.sum(dim=0, keepdim=True).clamp_min(1e-12)).numpy()
    labels = probs.argmax(axis=0)
    for mask, cands in zip(masks, got):
        hard = np.array([(labels[mask] == c).sum() for c in range(len(probs))], dtype=float)
        soft = probs[:, mask].mean(axis=1)
        order = sorted(range(len(probs)), key=lambda c: (-hard[c], -soft[c], c))[:3]
        assert cands == [voter.names[c] for c in order]
    assert voter.names == ["person", "car", "bus", "wall", "tree"]

    namer = ClipSegNamer(tiny_models["clipseg"], batch_size=5)
    processor = AutoProcessor.from_pretrained(tiny_models["clipseg"])
    model = CLIPSegForImageSegmentation.from_pretrained(tiny_models["clipseg"]).eval()
    crops = [image[10:90, 20:140], image[0:128, 100:256], image[50:60, 0:30]]
    crop_masks = [np.asarray(c[..., 0] > c[..., 0].mean()) for c in crops]
    prompts = [["car", "road", "sky"], ["tree", "person"], ["wall", "bus", "grass"]]
    winners = namer.name(crops, crop_masks, prompts)
    for crop, mask, props, winner in zip(crops, crop_masks, prompts, winners):
        with torch.no_grad():
            inputs = processor(text=props, images=[crop] * len(props), padding=True,
                               return_tensors="pt")
            logits = model(**inputs).logits
        up = torch.nn.functional.interpolate(logits[:, None], size=mask.shape, mode="bilinear",
                                             align_corners=False)[:, 0]
        votes = np.bincount(up.argmax(0).numpy()[mask], minlength=len(props))
        assert winner == int(np.argmax(votes))


def test_engine_noun_phrases_and_crops():
    from ssa.engine.closeset import clean_class_name
    from ssa.engine.crops import enlarge, mask_boxes
    from ssa.engine.nouns import heuristic_noun_phrases

    assert heuristic_noun_phrases("a red car parked next to a tall building") == [
        "red car", "tall building"
    ]
    assert heuristic_noun_phrases("there is a dog sitting on the grass with a dog") == [
        "dog", "grass"
    ]
    assert heuristic_noun_phrases("a picture of the") == []
    assert [clean_class_name(n) for n in ("wall-other-merged", "tree-merged", "dining table",
                                          "windowpane;window", "Pool_Table")] == [
        "wall", "tree", "dining table", "windowpane", "pool table"
    ]
    masks = torch.zeros(2, 10, 20, dtype=torch.bool)
    masks[0, 2:4, 5:9] = True  # box x 5..9, y 2..4 (end-exclusive)
    np.testing.assert_array_equal(mask_boxes(masks), [[5, 2, 9, 4], [0, 0, 20, 10]])
    # 2x about the centre (7, 3): half sizes 4 and 2 -> x 3..11, y 1..5; the second box clips.
    np.testing.assert_array_equal(enlarge(mask_boxes(masks), 2.0, 20, 10),
                                  [[3, 1, 11, 5], [0, 0, 20, 10]])


def test_engine_with_sam_masks(tiny_models, sam_checkpoint, tmp_path):
    """Without --masks, SAM (a tiny random one) makes the masks: segment-anything's own
    generator's masks and records, each named (naming is checked against the stock models in
    test_engine_names_every_mask_with_k_proposals)."""
    from conftest import KEEP_ALL
    from PIL import Image

    from ssa import io

    src = need(CITYSCAPES) / f"{CITY_STEM}_leftImg8bit.png"
    images = tmp_path / "images"
    images.mkdir()
    with Image.open(src) as img:  # downscaled: the test is about the flow, not the pixels
        img.convert("RGB").resize((128, 64)).save(images / "small.png")
    amg = [f"--amg={k}={v}" for k, v in {"points_per_side": 2, **KEEP_ALL}.items()]
    out = tmp_path / "out"
    result = run_cli(["engine", "--data-dir", str(images), "--out-dir", str(out), "--sam-model",
                      "vit_b", "--sam-checkpoint", str(sam_checkpoint), *amg, "--top-k", "2",
                      "--device", "cpu", *model_args(tiny_models)])
    assert result.exit_code == 0, result.output
    anns = json.loads((out / "small_semantic.json").read_text())["annotations"]
    # The masks and their records are segment-anything's own generator's, same settings.
    from segment_anything import SamAutomaticMaskGenerator

    from ssa.masks import load_sam

    image = io.read_image(images / "small.png")
    with torch.inference_mode():
        stock = SamAutomaticMaskGenerator(load_sam("vit_b", sam_checkpoint), points_per_side=2,
                                          **KEEP_ALL).generate(image)
    assert stock and len(anns) == len(stock)
    for ann, ref in zip(anns, stock):  # the fast generator keeps the stock order
        assert ann["point_coords"] == ref["point_coords"]
        np.testing.assert_array_equal(io.decode_rle(ann["segmentation"]), ref["segmentation"])
        assert ann["bbox"] == ref["bbox"] and ann["area"] == ref["area"]
        assert ann["predicted_iou"] == pytest.approx(ref["predicted_iou"], abs=1e-5)
        assert len(ann["class_proposals"]) == 2 and ann["class_name"] in ann["class_proposals"]


def _ssa_subprocess(args: list[str]):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    # One thread per process, so one process and two workers compute the same bits.
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "ssa", *args], env=env,
                          capture_output=True, text=True, timeout=600, check=False)


def test_engine_workers_shard_like_one_process(tiny_models, sa1b_folder, tmp_path):
    """Two workers (--world-size 2; torchrun sets up the same ranks, see test_distributed) each
    name one of two images; the outputs equal one process's."""
    import shutil

    images, masks_dir, _ = sa1b_folder
    shutil.copy(images / "city" / "frame.png", images / "city" / "frame2.png")
    shutil.copy(masks_dir / "city" / "frame.json", masks_dir / "city" / "frame2.json")
    args = ["engine", "--data-dir", str(images), "--masks", str(masks_dir), "--top-k", "2",
            "--device", "cpu", *model_args(tiny_models)]
    one = _ssa_subprocess([*args, "--out-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    spawned = _ssa_subprocess([*args, "--out-dir", str(tmp_path / "spawned"), "--world-size", "2"])
    assert spawned.returncode == 0, spawned.stderr
    assert "[rank 1/2] 1 image to label" in spawned.stderr
    for stem in ("frame", "frame2"):
        want = json.loads((tmp_path / "one" / "city" / f"{stem}_semantic.json").read_text())
        got = json.loads((tmp_path / "spawned" / "city" / f"{stem}_semantic.json").read_text())
        assert got == want
