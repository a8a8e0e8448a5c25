"""SAM 3 prompted with class names, against transformers' own model + post-processing per class.

The model is a tiny random `Sam3Config` saved with `save_pretrained`, with a `Sam3Processor`
whose CLIP tokenizer is built here from a small vocabulary (characters plus whole-word merges).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_plugins_run import invoke, write_masks_json
from test_voting_policies import brute_force

from ssa.errors import SSAError
from ssa.segmentors import class_names
from ssa.segmentors.base import branch_output
from ssa.segmentors.sam3 import Sam3Segmentor, read_prompts_file
from ssa.specs.segmentors import load_segmentor
from ssa.voting import vote

NAMES = ["sky", "road", "car", "person", "tree"]
WORDS = [*NAMES, "a", "photo", "of", "the", "blue", "street", "people"]
THRESHOLD = 0.5


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_tokenizer():
    """A CLIP tokenizer: every letter (so any lower-case word encodes) plus whole-word merges."""
    from transformers import CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": len(letters) + i for i, c in enumerate(letters)})
    merges = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            parts = [parts[0] + parts[1], *parts[2:]]
            vocab.setdefault(parts[0], len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges))), vocab


def save_tiny_sam3(folder: Path, seed: int = 0) -> Path:
    from transformers import Sam3Config, Sam3ImageProcessor, Sam3Model, Sam3Processor

    tokenizer, vocab = tiny_tokenizer()
    h, small = 32, {"num_attention_heads": 2, "intermediate_size": 64}
    eos = vocab["<|endoftext|>"]
    config = Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model", "hidden_size": h, "num_hidden_layers": 2,
                "image_size": 112, "patch_size": 14, "window_size": 4,
                "global_attn_indexes": [1], "pretrain_image_size": 56, **small,
            },
            "fpn_hidden_size": h,
            "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
        },
        text_config={
            "vocab_size": len(vocab), "hidden_size": h, "projection_dim": h,
            "num_hidden_layers": 1, "max_position_embeddings": 32,
            "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": eos, "pad_token_id": eos,
            **small,
        },
        geometry_encoder_config={"hidden_size": h, "num_layers": 1, **small},
        detr_encoder_config={"hidden_size": h, "num_layers": 1, **small},
        detr_decoder_config={"hidden_size": h, "num_layers": 1, "num_queries": 8, **small},
        mask_decoder_config={"hidden_size": h, "num_attention_heads": 2},
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Sam3Model(config).eval()
    with torch.no_grad():  # random weights barely tell phrases apart; these spread the maps
        model.text_projection.weight.mul_(30.0)
        model.mask_decoder.semantic_projection.weight.mul_(10.0)
    model.save_pretrained(folder)
    processor = Sam3Processor(
        image_processor=Sam3ImageProcessor(size={"height": 112, "width": 112}),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def sam3_folder(tmp_path_factory) -> Path:
    return save_tiny_sam3(tmp_path_factory.mktemp("sam3_tiny"))


@pytest.fixture(scope="session")
def stock(sam3_folder):
    from transformers import Sam3Model, Sam3Processor

    return Sam3Model.from_pretrained(sam3_folder).eval(), Sam3Processor.from_pretrained(sam3_folder)


def _image(height: int = 60, width: int = 90, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def reference(stock, image: np.ndarray, phrase: str, full: bool = True) -> torch.Tensor:
    """One phrase the stock way: processor(images, text) -> model -> post-processing.
    `(H, W)` probabilities at the image's size (full) or the model's working resolution."""
    model, processor = stock
    inputs = processor(images=image, text=phrase, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    sizes = [image.shape[:2]] if full else None
    post = processor.post_process_semantic_segmentation(
        outputs, target_sizes=sizes, threshold=THRESHOLD, return_segmentation_scores=True
    )[0]
    return post["segmentation_scores"][0]


def test_per_class_maps_match_stock_per_class_calls(sam3_folder, stock):
    image = _image()
    expected = torch.stack([reference(stock, image, name) for name in NAMES])
    assert expected.std(dim=0).mean() > 1e-3, "the classes must differ for the test to bite"
    for batch in (1, 3, len(NAMES)):
        seg = Sam3Segmentor(str(sam3_folder), NAMES, prompt_batch=batch)
        low = seg.scores(image)
        assert low.shape == (len(NAMES), 32, 32)  # the working resolution: 112 / 14 * 4
        full = torch.nn.functional.interpolate(
            low[None], size=image.shape[:2], mode="bilinear", align_corners=False
        )[0]
        torch.testing.assert_close(full, expected, atol=1e-4, rtol=0)


def test_claims_follow_the_threshold_rule(sam3_folder, stock):
    """The branch's labels and soft scores, rebuilt by hand from the stock per-class maps."""
    image = _image(seed=1)
    probs = torch.stack([reference(stock, image, name) for name in NAMES]).numpy()
    for threshold in (0.5, 0.6):
        seg = Sam3Segmentor(str(sam3_folder), NAMES, threshold=threshold)
        branch = branch_output(seg, seg(image), len(NAMES), image.shape[:2])
        claimed = probs > threshold
        labels = np.where(claimed.any(0), probs.argmax(0), 255)
        assert 0 < (labels == 255).mean() < 1 and len(np.unique(labels)) > 2
        kept = np.where(claimed, probs, 0.0)
        claims = kept / np.maximum(kept.sum(0, keepdims=True), 1e-12)
        np.testing.assert_array_equal(branch.labels.numpy(), labels)
        np.testing.assert_allclose(branch.probabilities().numpy(), claims, atol=1e-4)


def test_vision_backbone_runs_once_per_image(sam3_folder):
    seg = Sam3Segmentor(str(sam3_folder), NAMES, prompt_batch=2)
    calls = {"vision": 0, "text": 0, "decoder": 0}
    hooks = [
        seg.model.vision_encoder.register_forward_hook(lambda *_: calls.__setitem__(
            "vision", calls["vision"] + 1)),
        seg.model.text_encoder.register_forward_hook(lambda *_: calls.__setitem__(
            "text", calls["text"] + 1)),
        seg.model.mask_decoder.register_forward_hook(lambda *_: calls.__setitem__(
            "decoder", calls["decoder"] + 1)),
    ]  # fmt: skip
    for seed in range(2):
        seg(_image(seed=seed))
    for hook in hooks:
        hook.remove()
    # Two images: the backbone twice, the phrases in ceil(5 / 2) = 3 batches each, and the
    # text encoder not at all (it ran once per batch of phrases when the segmentor was built).
    assert calls == {"vision": 2, "text": 0, "decoder": 6}


def test_prompts_take_the_max_over_phrases(sam3_folder, stock, tmp_path):
    image = _image(seed=2)
    file = tmp_path / "prompts.yaml"
    file.write_text(
        "sky: [sky, blue sky]\nperson:\n  - person\n  - people\ncar: a photo of the car\n"
    )
    prompts = read_prompts_file(file, NAMES)
    assert prompts == {"sky": ["sky", "blue sky"], "person": ["person", "people"],
                       "car": ["a photo of the car"]}  # fmt: skip
    phrases = {"sky": ["sky", "blue sky"], "road": ["road"], "car": ["a photo of the car"],
               "person": ["person", "people"], "tree": ["tree"]}  # fmt: skip
    expected = torch.stack([
        torch.stack([reference(stock, image, p, full=False) for p in phrases[n]]).amax(0)
        for n in NAMES
    ])  # fmt: skip
    for batch in (1, 3, 16):
        seg = Sam3Segmentor(str(sam3_folder), NAMES, prompts=prompts, prompt_batch=batch)
        assert len(seg.phrases) == 7
        torch.testing.assert_close(seg.scores(image), expected, atol=1e-4, rtol=0)
    json_file = tmp_path / "prompts.json"
    json_file.write_text(json.dumps({"tree": ["tree", "the tree"]}))
    assert read_prompts_file(json_file, NAMES) == {"tree": ["tree", "the tree"]}


@pytest.mark.parametrize("policy", ["hard", "soft"])
def test_voting_follows_the_ssa_rule(sam3_folder, stock, policy):
    image = _image(seed=3)
    height, width = image.shape[:2]
    rng = np.random.default_rng(3)
    masks = rng.random((9, height, width)) < rng.random((9, 1, 1))
    masks[:, 0, 0] = True
    probs = torch.stack([reference(stock, image, name) for name in NAMES]).numpy()
    claimed = probs > THRESHOLD
    labels = np.where(claimed.any(0), probs.argmax(0), 255)
    kept = np.where(claimed, probs, 0.0)
    claims = kept / np.maximum(kept.sum(0, keepdims=True), 1e-12)
    ref_classes, _, ref_map = brute_force(
        masks, labels, len(NAMES), scores=claims if policy == "soft" else None
    )
    seg = Sam3Segmentor(str(sam3_folder), NAMES)
    branch = branch_output(seg, seg(image), len(NAMES), (height, width))
    result = vote(torch.from_numpy(masks), branch.labels, len(NAMES), top_k=3,
                  scores=branch, policy=policy)  # fmt: skip
    assert result.classes.tolist() == ref_classes
    np.testing.assert_array_equal(result.label_map.numpy(), ref_map)
    assert (result.proposals[:, 0] == result.classes).all()


def test_one_line_refusals(sam3_folder, tmp_path):
    from ssa.config import RunConfig
    from ssa.datasets import get_dataset
    from ssa.plan import semantic_branch
    from ssa.run.labeller import build_segmentor

    def build(cfg):
        return build_segmentor(semantic_branch(cfg, None), get_dataset(cfg.dataset), "cpu")

    spec = f"hf:{sam3_folder}"
    four = tmp_path / "four.txt"
    four.write_text("sky\nroad\ncar\ntree\n")
    cfg = RunConfig(dataset="cityscapes", segmentor=spec, classes=four)
    with pytest.raises(SSAError, match="names 4 classes but --dataset cityscapes has 19") as err:
        semantic_branch(cfg, None)
    assert "\n" not in str(err.value)
    with pytest.raises(SSAError, match="needs class names to prompt") as err:
        load_segmentor(spec, classes=[])
    assert "\n" not in str(err.value)
    with pytest.raises(SSAError, match="needs class names to prompt"):
        build(RunConfig(dataset="folder", segmentor=spec))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(SSAError, match="holds no class names"):
        build(RunConfig(segmentor=spec, classes=empty))
    bad = tmp_path / "prompts.yaml"
    bad.write_text("sky: blue sky\nzebra: striped horse\nunicorn: [horn]\n")
    with pytest.raises(SSAError, match=r"names 2 unknown class\(es\) \(zebra, unicorn\)") as err:
        build(RunConfig(segmentor=spec, classes=four, prompts=bad))
    assert "\n" not in str(err.value)
    with pytest.raises(SSAError, match="--prompts applies to SAM 3"):
        load_segmentor("labels:/nowhere", classes=NAMES, prompts={"sky": ["sky"]})
    with pytest.raises(SSAError, match="--prompt-batch 0 must be"):
        load_segmentor(spec, classes=NAMES, args={"prompt_batch": 0})
    with pytest.raises(SSAError, match="threshold 1.5 must be"):
        load_segmentor(spec, classes=NAMES, args={"threshold": 1.5})


def test_non_sam3_hf_refuses_prompts(segformer_5, tmp_path):
    from ssa.config import RunConfig
    from ssa.datasets import get_dataset
    from ssa.plan import semantic_branch

    file = tmp_path / "p.yaml"
    file.write_text("sky: sky\n")
    cfg = RunConfig(segmentor=f"hf:{segformer_5}", prompts=file)
    with pytest.raises(SSAError, match="--prompts applies to SAM 3 segmentors"):
        semantic_branch(cfg, get_dataset("folder").default_segmentor)


def test_dataset_classes_are_prompted(sam3_folder):
    from ssa.config import RunConfig
    from ssa.datasets import CITYSCAPES_CLASSES, get_dataset
    from ssa.plan import semantic_branch
    from ssa.run.labeller import build_segmentor

    cfg = RunConfig(dataset="cityscapes", segmentor=f"hf:{sam3_folder}", prompt_batch=8)
    seg, names = build_segmentor(semantic_branch(cfg, None), get_dataset("cityscapes"), "cpu")
    assert names == list(CITYSCAPES_CLASSES) == class_names(seg) == seg.phrases
    assert seg.prompt_batch == 8


@pytest.mark.parametrize("policy", ["hard", "soft"])
def test_run_end_to_end(sam3_folder, stock, tmp_path, policy):
    """`ssa run --dataset folder --classes FILE --segmentor hf:<SAM 3> --masks <json>`."""
    data, masks_dir, out = tmp_path / "images", tmp_path / "masks", tmp_path / "out"
    image = _image(40, 56, seed=4)
    data.mkdir()
    Image.fromarray(image).save(data / "x.png")
    rng = np.random.default_rng(4)
    masks = rng.random((6, 40, 56)) < rng.random((6, 1, 1))
    masks[:, 0, 0] = True
    write_masks_json(masks_dir / "x.json", masks)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(NAMES) + "\n")
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("person: [person, people]\n")
    result = invoke(
        "run", "--dataset", "folder", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
        "--segmentor", f"hf:{sam3_folder}", "--classes", classes, "--prompts", prompts,
        "--prompt-batch", 2, "--segmentor-arg", "threshold=0.55", "--vote", policy,
        "--device", "cpu", "--save-branch",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    # The reference: stock per-phrase maps at the working resolution, the max over a class's
    # phrases, upsampled as the post-processor does, then the rule written out by hand.
    low = {n: reference(stock, image, n, full=False) for n in [*NAMES, "people"]}
    low["person"] = torch.maximum(low["person"], low["people"])
    probs = torch.nn.functional.interpolate(
        torch.stack([low[n] for n in NAMES])[None], size=image.shape[:2], mode="bilinear",
        align_corners=False,
    )[0].numpy()  # fmt: skip
    claimed = probs > 0.55
    labels = np.where(claimed.any(0), probs.argmax(0), 255)
    assert 0 < (labels == 255).mean() < 1
    kept = np.where(claimed, probs, 0.0)
    claims = kept / np.maximum(kept.sum(0, keepdims=True), 1e-12)
    ref_classes, _, ref_map = brute_force(
        masks, labels, len(NAMES), scores=claims if policy == "soft" else None
    )
    np.testing.assert_array_equal(np.asarray(Image.open(out / "x_branch.png")), labels)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "x_semantic.png")), ref_map)
    doc = json.loads((out / "x_semantic.json").read_text())
    assert doc["class_names"] == NAMES
    assert [a["class_name"] for a in doc["annotations"]] == [
        NAMES[c] if c >= 0 else None for c in ref_classes
    ]


def test_shipped_cityscapes_prompts_name_its_classes():
    from ssa.datasets import CITYSCAPES_CLASSES

    file = Path(__file__).resolve().parents[1] / "configs" / "prompts" / "cityscapes_sam3.yaml"
    prompts = read_prompts_file(file, CITYSCAPES_CLASSES)
    assert set(prompts) <= set(CITYSCAPES_CLASSES) and prompts["person"][0] == "person"


def test_image_at_the_working_resolution(sam3_folder, stock):
    """No resize at all (32 x 32 = the working resolution): the claims of the stock maps."""
    image = _image(32, 32, seed=5)
    probs = torch.stack([reference(stock, image, name) for name in NAMES]).numpy()
    seg = Sam3Segmentor(str(sam3_folder), NAMES)
    out = branch_output(seg, seg(image), len(NAMES), image.shape[:2]).probabilities().numpy()
    kept = np.where(probs > THRESHOLD, probs, 0.0)
    np.testing.assert_allclose(out, kept / np.maximum(kept.sum(0, keepdims=True), 1e-12), atol=1e-4)


def test_sam3_video_layout_is_recognised(sam3_folder, tmp_path):
    """`facebook/sam3` is published as a `sam3_video` config with the image model under
    `detector_config` and its weights under `detector_model.`: the same segmentor, same maps."""
    from safetensors.torch import load_file, save_file

    video = tmp_path / "sam3_video"
    video.mkdir()
    detector = json.loads((sam3_folder / "config.json").read_text())
    (video / "config.json").write_text(json.dumps(
        {"model_type": "sam3_video", "architectures": ["Sam3VideoModel"],
         "detector_config": detector}
    ))  # fmt: skip
    weights = load_file(sam3_folder / "model.safetensors")
    save_file({f"detector_model.{k}": v for k, v in weights.items()}, video / "model.safetensors")
    for file in sam3_folder.iterdir():
        if file.name not in ("config.json", "model.safetensors"):
            (video / file.name).write_bytes(file.read_bytes())
    image = _image(seed=6)
    seg = load_segmentor(f"hf:{video}", classes=NAMES)
    assert isinstance(seg, Sam3Segmentor)
    expected = Sam3Segmentor(str(sam3_folder), NAMES).scores(image)
    torch.testing.assert_close(seg.scores(image), expected, atol=1e-6, rtol=0)


def test_predict_with_sam3_classes_and_prompts(sam3_folder, sam_checkpoint, tmp_path):
    """`ssa predict --segmentor hf:<SAM 3> --classes --prompts`: the CLI's labels are the
    Python predictor's with the same segmentor (its votes are tested in test_predict.py)."""
    from ssa.config import RunConfig
    from ssa.plan import plan_predict
    from ssa.run.predictor import build_predictor

    path = tmp_path / "img.png"
    Image.fromarray(_image(64, 96, seed=7)).save(path)
    classes, prompts = tmp_path / "classes.txt", tmp_path / "prompts.yaml"
    classes.write_text("\n".join(NAMES) + "\n")
    prompts.write_text("person: [person, people]\n")
    out = tmp_path / "pred.json"
    result = invoke(
        "predict", path, "--point", "40,30", "--sam-model", "vit_b", "--sam-checkpoint",
        sam_checkpoint, "--segmentor", f"hf:{sam3_folder}", "--classes", classes,
        "--prompts", prompts, "--device", "cpu", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = [m["class_name"] for m in json.loads(out.read_text())["masks"]]
    cfg = RunConfig(sam_model="vit_b", sam_checkpoint=sam_checkpoint, device="cpu",
                    segmentor=f"hf:{sam3_folder}", classes=classes, prompts=prompts)  # fmt: skip
    predictor = build_predictor(plan_predict(cfg))
    assert len(predictor.segmentor.phrases) == 6
    predictor.set_image(np.asarray(Image.open(path).convert("RGB")))
    assert got == [r["class_name"] for r in predictor.predict(points=[(40, 30)], labels=[1])]
