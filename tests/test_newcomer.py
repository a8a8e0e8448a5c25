"""A newcomer's first hour (issue 25): the tiny models of the quick start load through the real
loaders, one preset keeps every candidate, the zero-mask warning names every filter and that
preset, errors suggest the name meant and name the flag given, the run's first line says what it
runs.

References: hand-worked counts (points x 3 masks when nothing is filtered), difflib itself, the
files' own shapes read back by torch / transformers, the messages as written by hand.
"""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from test_plugins_run import invoke

from ssa.errors import SSAError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "tiny_models.py"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """`python scripts/tiny_models.py <dir>/tiny --images <dir>/sample`, as the quick start runs it."""
    where = tmp_path_factory.mktemp("tiny")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(where / "tiny"), "--images",
                           str(where / "sample")], capture_output=True, text=True, timeout=120,
                          check=False, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                            "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Writing model shards" not in proc.stderr  # no progress bar for a tiny file
    return where


# --- 1. tiny models in the real formats, and drawn images ---------------------------------------


def test_tiny_sam_is_a_state_dict_that_masks_sam_vit_b_loads(tiny):
    import torch

    from ssa.masks.sam import SamMaskSource, infer_encoder_config
    from ssa.specs.masks import load_mask_source, parse_mask_spec, resolve_mask_settings

    path = tiny / "tiny" / "sam_vit_b_tiny.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)  # a plain state_dict
    assert isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())
    assert state["image_encoder.patch_embed.proj.weight"].shape == (32, 3, 16, 16)
    cfg = infer_encoder_config(state)
    assert (cfg.embed_dim, cfg.depth, cfg.image_size, cfg.window_size, cfg.out_chans) == (
        32, 2, 256, 8, 32)
    spec = parse_mask_spec(f"sam:vit_b:{path}")
    settings = resolve_mask_settings(spec, "keep-all", {"points_per_side": 4})
    source = load_mask_source(spec, "cpu", settings)
    assert isinstance(source, SamMaskSource)
    from PIL import Image

    image = np.asarray(Image.open(tiny / "sample" / "scene_0.png"))
    result = source.generate(image)
    # keep-all keeps every candidate: 4 x 4 points, three masks each (hand-worked).
    assert source.stats.candidates == 48 and len(result.records) == 48


def test_tiny_segformer_is_a_save_pretrained_folder_that_hf_loads(tiny):
    from transformers import AutoModelForSemanticSegmentation

    from ssa.specs.segmentors import load_segmentor

    folder = tiny / "tiny" / "segformer"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in folder.iterdir()}
    model = AutoModelForSemanticSegmentation.from_pretrained(folder, local_files_only=True)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    assert names[:3] == ["wall", "building", "sky"]
    segmentor = load_segmentor(f"hf:{folder}", device="cpu")
    from ssa.segmentors.base import class_names

    assert class_names(segmentor) == names


def test_sample_images_are_drawn_rgb_scenes(tiny):
    from PIL import Image

    paths = sorted((tiny / "sample").glob("*.png"))
    assert [p.name for p in paths] == ["scene_0.png", "scene_1.png", "scene_2.png"]
    arrays = [np.asarray(Image.open(p)) for p in paths]
    assert all(a.shape == (240, 320, 3) and a.dtype == np.uint8 for a in arrays)
    assert not np.array_equal(arrays[0], arrays[1])  # different scenes
    assert len(np.unique(arrays[0].reshape(-1, 3)[:, 0] // 32)) >= 4  # several regions


# --- 1b. the keep-all preset ---------------------------------------------------------------


def test_keep_all_preset_sets_the_three_filters_for_sam_and_hf():
    pytest.importorskip("transformers", reason="hf: knobs are read off transformers")
    from ssa.specs.masks import resolve_mask_settings

    off = {"pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    sam = resolve_mask_settings("sam:vit_b", "keep-all")
    assert {k: sam[k] for k in off} == off
    assert resolve_mask_settings("sam:vit_b", "keep-all", {"box_nms_thresh": 0.5})[
        "box_nms_thresh"] == 0.5  # --amg still wins
    hf = resolve_mask_settings("hf:some/model", "keep-all")
    assert hf == off  # hf: takes the preset's knobs it supports, the model's defaults for the rest


# --- 3. the zero-mask warning names every filter and the preset -----------------------------


def test_no_masks_message_names_each_filter_with_counts_and_the_preset():
    from ssa.masks.knobs import no_masks_message

    # All removed by the first filter: the later ones had nothing left to judge.
    first = no_masks_message({"candidates": 192, "pred_iou_thresh": 192,
                              "stability_score_thresh": 0, "crop edge": 0, "box_nms_thresh": 0})
    assert first == (
        "no image got a mask: of 192 candidates, pred_iou_thresh removed 192 "
        "(stability_score_thresh and box_nms_thresh then had none to judge); for random or "
        "untrained weights, --amg-preset keep-all keeps every candidate (pred_iou_thresh=0.0, "
        "stability_score_thresh=0.0, box_nms_thresh=1.0)")
    # Several filters share the removals; one the preset leaves on gets its own --amg.
    mixed = no_masks_message({"candidates": 100, "pred_iou_thresh": 60,
                              "stability_score_thresh": 30, "min_mask_region_area": 10})
    assert "pred_iou_thresh removed 60, stability_score_thresh 30, min_mask_region_area 10" \
        in mixed
    assert mixed.endswith("--amg-preset keep-all keeps every candidate (pred_iou_thresh=0.0, "
                          "stability_score_thresh=0.0, box_nms_thresh=1.0), and --amg "
                          "min_mask_region_area=0")
    assert "--amg-preset keep-all" in no_masks_message({})  # a source that does not count
    assert "--amg-preset keep-all" in no_masks_message({"candidates": 5})  # hf: counts no share


@pytest.fixture(scope="module")
def quick_args(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("quick") / "out"
    return out, ["run", "--dataset", "folder", "--data-dir", tiny / "sample", "--out-dir", out,
                 "--masks", f"sam:vit_b:{tiny / 'tiny' / 'sam_vit_b_tiny.pth'}", "--segmentor",
                 f"hf:{tiny / 'tiny' / 'segformer'}", "--amg", "points_per_side=4", "--device",
                 "cpu", "--limit", "1"]


def test_random_weights_run_names_the_filters_then_keep_all_labels(quick_args, monkeypatch):
    """The library's thresholds on random weights keep nothing, and the warning says so naming
    pred_iou_thresh (all 48 candidates) and the filters after it; the preset it names, added
    to the same command, gives a labelled run with all 48 masks."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, args = quick_args
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "0 masks" in said
    assert ("of 48 candidates, pred_iou_thresh removed 48 (stability_score_thresh and "
            "box_nms_thresh then had none to judge)") in said
    assert "--amg-preset keep-all keeps every candidate" in said
    again = invoke(*args, "--amg-preset", "keep-all", "--overwrite")
    assert again.exit_code == 0, again.output
    assert "48 masks" in " ".join(again.output.split())
    assert "no image got a mask" not in again.output


# --- 5. the run says what it ran -----------------------------------------------------------


def _plan(dataset: str, masks: str, segmentor: str, device: str, **settings):
    """A `RunPlan` built by hand with the parts `describe_run` reads."""
    from ssa.plan import Images, MaskBranch, Outputs, RunPlan, SemanticBranch, Voting
    from ssa.specs.masks import parse_mask_spec

    return RunPlan(images=Images(dataset, Path("d"), None, None, Path("d"), ()),
                   masks=MaskBranch(parse_mask_spec(masks)), semantic=SemanticBranch(segmentor),
                   voting=Voting(), outputs=Outputs(Path("o")), device=device, settings=settings)


def test_describe_run_names_masks_segmentor_and_device():
    from ssa.run.describe import describe_run

    plan = _plan("folder", "sam:vit_b:ckp/tiny/sam.pth", "hf:ckp/tiny/segformer", "cpu",
                 amg_preset="keep-all", amg={"points_per_side": 8})
    assert describe_run(plan) == (
        "masks sam:vit_b:ckp/tiny/sam.pth (fast generator, preset keep-all, points_per_side=8), "
        "segmentor hf:ckp/tiny/segformer, device cpu")
    default = _plan("ade20k", "sam:vit_h", "hf:nvidia/segformer-b5-finetuned-ade-640-640",
                    "cuda", amg_preset=None, amg={})  # the preset: the dataset's
    assert describe_run(default, world_size=4) == (
        "masks sam:vit_h (ckp/sam_vit_h_4b8939.pth, fast generator, preset ssa), segmentor "
        "hf:nvidia/segformer-b5-finetuned-ade-640-640, device cuda (4 workers)")
    files = _plan("folder", "json:masks", "labels:x", "cpu")
    assert describe_run(files) == "masks json:masks, segmentor labels:x, device cpu"


def test_the_run_prints_the_description_first(quick_args, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _, args = quick_args
    result = invoke(*args, "--amg-preset", "keep-all", "--overwrite")
    assert result.exit_code == 0, result.output
    lines = [" ".join(line.split()) for line in result.output.splitlines() if line.strip()]
    first = next(line for line in lines if "masks sam:vit_b:" in line)
    assert "(fast generator, preset keep-all, points_per_side=4), segmentor hf:" in first
    assert first.rstrip().endswith("device cpu")
    assert lines.index(next(line for line in lines if "masks sam:vit_b:" in line)) < lines.index(
        next(line for line in lines if line.startswith(("done:",)) or " done: " in line))


# --- 4. errors that teach ------------------------------------------------------------------


def test_did_you_mean_is_difflibs_closest_match():
    from ssa.words import did_you_mean

    keys = ["points_per_side", "points_per_batch", "pred_iou_thresh", "box_nms_thresh"]
    assert did_you_mean("points_per_sid", keys) == " (did you mean 'points_per_side'?)"
    assert difflib.get_close_matches("points_per_sid", keys, n=1) == ["points_per_side"]
    assert did_you_mean("ADE20K", ["ade20k", "cityscapes"]) == " (did you mean 'ade20k'?)"
    assert did_you_mean("zzz", keys) == ""
    assert did_you_mean("box_nms_thresh", keys) == ""  # a valid name suggests nothing


def test_unknown_amg_key_suggests_the_knob():
    from ssa.masks.sam import parse_amg

    with pytest.raises(SSAError) as err:
        parse_amg(["points_per_sid=8"])
    msg = str(err.value)
    assert "unknown --amg key 'points_per_sid' for sam: (did you mean 'points_per_side'?)" in msg
    assert "valid keys: box_nms_thresh" in msg and "\n" not in msg


def test_cli_amg_typo_is_one_line_with_the_suggestion(tmp_path):
    (tmp_path / "img").mkdir()
    result = invoke("run", "--dataset", "folder", "--data-dir", tmp_path / "img", "--out-dir",
                    tmp_path / "out", "--masks", "sam:vit_b", "--segmentor", "hf:x/y",
                    "--amg", "points_per_sid=8")
    assert result.exit_code != 0
    assert "did you mean 'points_per_side'?" in " ".join(result.output.split())


@pytest.mark.parametrize(("call", "wanted"), [
    (lambda: __import__("ssa.datasets", fromlist=["x"]).get_dataset("ade20"), "'ade20k'"),
    (lambda: __import__("ssa.export.runner", fromlist=["x"]).get_exporter("coco-instance"),
     "'coco-instances'"),
    (lambda: __import__("ssa.specs.masks", fromlist=["x"]).resolve_mask_settings(
        "sam:vit_b", "keepall"), "'keep-all'"),
    (lambda: __import__("ssa.masks.sam", fromlist=["x"]).default_checkpoint("vit-b"), "'vit_b'"),
])
def test_unknown_names_suggest_the_one_meant(call, wanted):
    with pytest.raises(SSAError, match=f"did you mean {wanted}"):
        call()


def test_unknown_class_names_suggest_the_class(tmp_path):
    from ssa.export.coco_panoptic import thing_flags
    from ssa.segmentors.sam3 import read_prompts_file

    prompts = tmp_path / "prompts.yaml"
    prompts.write_text("skyy: the sky\nroad: a road\n")
    with pytest.raises(SSAError, match=r"\(skyy\) \(did you mean 'sky'\?\)"):
        read_prompts_file(prompts, ["sky", "road", "car"])
    things = tmp_path / "things.txt"
    things.write_text("cars\n")
    plan = SimpleNamespace(class_names=["sky", "road", "car"], cfg=SimpleNamespace(things=things))
    with pytest.raises(SSAError, match=r"did you mean 'car'\?"):
        thing_flags(plan)


def test_missing_checkpoint_names_the_flag_given(tmp_path, monkeypatch):
    """`--masks sam:vit_b:/nonexistent.pth` is blamed on --masks (it was passed), and
    `--sam-checkpoint` on itself; through the command line, before any model loads."""
    (tmp_path / "img").mkdir()
    from conftest import make_image

    make_image(tmp_path / "img" / "a.png")
    common = ["run", "--dataset", "folder", "--data-dir", tmp_path / "img", "--out-dir",
              tmp_path / "out", "--segmentor", "hf:x/y"]
    by_masks = invoke(*common, "--masks", "sam:vit_b:/nonexistent.pth")
    said = " ".join(by_masks.output.split())
    assert by_masks.exit_code != 0
    assert "--masks sam:vit_b:/nonexistent.pth: /nonexistent.pth does not exist" in said
    assert "--sam-checkpoint" not in said
    by_flag = invoke(*common, "--sam-model", "vit_b", "--sam-checkpoint", "/nonexistent.pth")
    said = " ".join(by_flag.output.split())
    assert "--sam-checkpoint /nonexistent.pth does not exist" in said and "--masks" not in said


def test_wrong_model_type_names_the_fix_in_the_flag_given(tmp_path):
    import torch

    from ssa.masks import SAM_ENCODERS, build_sam_from_config
    from ssa.masks.sam import load_sam

    with torch.device("meta"):
        state = build_sam_from_config(SAM_ENCODERS["vit_b"]).state_dict()
    path = tmp_path / "b.pth"
    torch.save({k: torch.zeros(v.shape) for k, v in state.items()}, path)
    with pytest.raises(SSAError) as err:
        load_sam("vit_h", path, flag="--masks")
    assert str(err.value) == (f"--masks sam:vit_h:{path} holds a vit_b model, not vit_h; write "
                              f"--masks sam:vit_b:{path}")
    with pytest.raises(SSAError, match="pass --sam-model vit_b"):
        load_sam("vit_h", path)


def test_unknown_factory_argument_suggests_the_keyword():
    from ssa.plugins import call_factory

    def make(threshold: float = 0.5, device: str = "cpu"):
        return threshold

    with pytest.raises(SSAError, match=r"takes no argument 'treshold' \(did you mean "
                                       r"'threshold'\?\); its keyword arguments: threshold, device"):
        call_factory(make, "segmentor py:x:make", "cpu", {"treshold": 0.3})
