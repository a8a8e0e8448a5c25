"""`ssa run` end to end through the real loading paths (state_dict SAM, save_pretrained Segformer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CITY_STEM, make_image
from typer.testing import CliRunner

from ssa.cli.commands import app

runner = CliRunner()
TINY = ["--amg", "points_per_side=4", "--amg", "pred_iou_thresh=0", "--amg",
        "stability_score_thresh=0", "--amg", "box_nms_thresh=1.0"]  # fmt: skip


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def run_args(data_dir, out_dir, sam, seg, *extra):
    return ["run", "--data-dir", data_dir, "--out-dir", out_dir, "--sam-model", "vit_b",
            "--sam-checkpoint", sam, "--segmentor", f"hf:{seg}", "--device", "cpu",
            "--amg-preset", "default", *TINY, *extra]  # fmt: skip


def check_outputs(json_path: Path, image_size: tuple[int, int], class_names: list[str]):
    from PIL import Image
    from pycocotools import mask as mask_utils

    data = json.loads(json_path.read_text())
    height, width = image_size
    assert data["annotations"], "no masks"
    for ann in data["annotations"]:
        rle = dict(ann["segmentation"])
        assert isinstance(rle["counts"], str)
        decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert decoded.shape == (height, width)
        assert int(decoded.sum()) == ann["area"]
        assert ann["class_name"] in class_names
        assert ann["class_proposals"][0] == ann["class_name"]
        assert len(ann["class_proposals"]) <= 3
        for key in ("bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"):
            assert key in ann
    # uint8 with 255 = no label, uint16 with 65535 beyond 255 classes (read back by PIL).
    dtype, none = (np.uint8, 255) if len(class_names) <= 255 else (np.uint16, 65535)
    png = np.asarray(Image.open(json_path.with_name(json_path.name.replace(".json", ".png"))))
    assert png.shape == (height, width) and png.dtype == dtype
    assert set(np.unique(png)) <= set(range(len(class_names))) | {none}
    # semantic_mask agrees with the PNG, class by class.
    rebuilt = np.full((height, width), none, dtype=dtype)
    for class_id, rle in data["semantic_mask"].items():
        m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        assert not (rebuilt[m] != none).any(), "classes overlap"
        rebuilt[m] = int(class_id)
    np.testing.assert_array_equal(rebuilt, png)
    return data, png


def test_run_cityscapes_end_to_end(cityscapes_root, tmp_path, sam_checkpoint, segformer_city):
    from ssa.datasets import CITYSCAPES_CLASSES

    out = tmp_path / "out"
    result = invoke(
        *run_args(cityscapes_root, out, sam_checkpoint, segformer_city),
        "--dataset", "cityscapes", "--save-branch", "--save-vis",
    )
    assert result.exit_code == 0, result.output
    folder = out / "frankfurt"
    stem = f"{CITY_STEM}_leftImg8bit"
    data, png = check_outputs(folder / f"{stem}_semantic.json", (128, 256), list(CITYSCAPES_CLASSES))
    assert (folder / f"{stem}_branch.png").is_file() and (folder / f"{stem}_vis.jpg").is_file()
    assert not list(folder.glob(".ssa-tmp-*"))
    # The voted map follows the rule: recompute it from the JSON masks and the branch map.
    import torch
    from PIL import Image

    from ssa.io import decode_rle
    from ssa.voting import vote

    branch = np.asarray(Image.open(folder / f"{stem}_branch.png")).astype(np.int64)
    masks = np.stack([decode_rle(a["segmentation"]) for a in data["annotations"]])
    expected = vote(torch.from_numpy(masks), torch.from_numpy(branch), 19).label_map.numpy()
    np.testing.assert_array_equal(png, expected)
    names = [CITYSCAPES_CLASSES[i] for i in vote(torch.from_numpy(masks),
             torch.from_numpy(branch), 19).classes.tolist()]  # fmt: skip
    assert [a["class_name"] for a in data["annotations"]] == names


def test_run_masks_equal_stock_generator(tmp_path, sam_checkpoint, segformer_5):
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from ssa.io import decode_rle, read_image
    from ssa.masks import load_sam

    img = make_image(tmp_path / "data" / "sub" / "a.png")
    out = tmp_path / "out"
    result = invoke(*run_args(tmp_path / "data", out, sam_checkpoint, segformer_5),
                    "--dataset", "folder")  # fmt: skip
    assert result.exit_code == 0, result.output
    data, _ = check_outputs(out / "sub" / "a_semantic.json", (64, 96),
                            ["sky", "tree", "road", "car", "person"])  # fmt: skip
    settings = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0,
                    "box_nms_thresh": 1.0}  # fmt: skip
    with torch.inference_mode():
        stock = SamAutomaticMaskGenerator(load_sam("vit_b", sam_checkpoint), **settings).generate(
            read_image(img)
        )
    assert len(stock) == len(data["annotations"])
    for ours, ref in zip(data["annotations"], stock):
        np.testing.assert_array_equal(decode_rle(ours["segmentation"]), ref["segmentation"])
        assert ours["bbox"] == ref["bbox"]


def test_config_file_and_flag_override(tmp_path, sam_checkpoint, segformer_5):
    make_image(tmp_path / "data" / "x.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"dataset: folder\ndata_dir: {tmp_path / 'data'}\nout_dir: {tmp_path / 'wrong'}\n"
        f"segmentor: hf:{segformer_5}\nsam_model: vit_b\nsam_checkpoint: {sam_checkpoint}\n"
        "amg_preset: default\ntop_k: 1\namg:\n  points_per_side: 2\n  pred_iou_thresh: 0\n"
        "  stability_score_thresh: 0\n  box_nms_thresh: 1.0\ndevice: cpu\n"
    )
    out = tmp_path / "right"
    result = invoke("run", "--config", cfg, "--out-dir", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "x_semantic.json").read_text())
    assert len(data["annotations"]) == 12  # 2x2 points x 3 masks, all kept
    assert all(len(a["class_proposals"]) == 1 for a in data["annotations"])
    assert not (tmp_path / "wrong").exists()


def one_line_error(result, code: int = 2) -> str:
    """One `Error:` line; code 2 for a usage error (found while planning), 1 at run time."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("Error:"), result.output
    return lines[-1]


def test_label_count_mismatch_refused_before_reading(tmp_path, sam_checkpoint, segformer_5):
    root = tmp_path / "city" / "leftImg8bit" / "val" / "x"
    (root).mkdir(parents=True)
    (root / "a_leftImg8bit.png").write_bytes(b"not an image")  # never read
    result = invoke(*run_args(tmp_path / "city", tmp_path / "out", sam_checkpoint, segformer_5),
                    "--dataset", "cityscapes")  # fmt: skip
    line = one_line_error(result, 1)  # the segmentor loaded: a runtime failure
    assert "5 classes" in line and "19" in line and str(segformer_5) in line
    assert not (tmp_path / "out").exists()


def test_unknown_amg_key_error(tmp_path):
    result = invoke("run", "--data-dir", tmp_path, "--out-dir", tmp_path / "o", "--amg", "foo=1")
    line = one_line_error(result)
    assert "'foo'" in line and "points_per_side" in line


def test_missing_checkpoint_error(tmp_path, segformer_5):
    make_image(tmp_path / "data" / "x.png")
    result = invoke("run", "--data-dir", tmp_path / "data", "--out-dir", tmp_path / "o",
                    "--segmentor", f"hf:{segformer_5}", "--sam-checkpoint", tmp_path / "none.pth")  # fmt: skip
    line = one_line_error(result)
    assert "none.pth" in line and "--sam-checkpoint" in line


def test_unreadable_image_named(tmp_path, sam_checkpoint, segformer_5):
    make_image(tmp_path / "data" / "good.png")
    (tmp_path / "data" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out"
    result = invoke(*run_args(tmp_path / "data", out, sam_checkpoint, segformer_5,
                              "--dataset", "folder", "--amg", "points_per_side=2"))  # fmt: skip
    assert result.exit_code == 1
    assert "bad.jpg" in result.output and "cannot read image" in result.output
    assert (out / "good_semantic.json").is_file()
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == ["bad.jpg"]


def test_segmentor_that_cannot_load(tmp_path):
    make_image(tmp_path / "data" / "x.png")
    (tmp_path / "masks").mkdir()  # no SAM checkpoint needed: the segmentor is what fails
    result = invoke("run", "--data-dir", tmp_path / "data", "--out-dir", tmp_path / "o",
                    "--masks", f"json:{tmp_path / 'masks'}",
                    "--segmentor", f"hf:{tmp_path / 'nothing'}")  # fmt: skip
    line = one_line_error(result, 1)  # loading it is a runtime failure
    assert "nothing" in line


HELP_SCRIPT = """
import sys
from ssa.cli.commands import app
try:
    app(["--help"], prog_name="ssa")
except SystemExit as exc:
    print("EXIT", exc.code)
print("HEAVY", sorted(m for m in sys.modules
                      if m.split(".")[0] in ("torch", "transformers", "cv2", "segment_anything")))
"""


def test_version_and_help():
    """`--version` prints pyproject's version; `--help` lists the six commands and imports no
    heavy library (so it is instant)."""
    import re
    import subprocess
    import sys

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    text = pyproject.read_text()
    version = re.search(r"^version = \"(.+)\"$", text, flags=re.MULTILINE).group(1)
    result = invoke("--version")
    assert result.exit_code == 0 and result.output == f"ssa {version}\n"
    env = {"PYTHONPATH": str(pyproject.parent), "COLUMNS": "100", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", HELP_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    commands = re.findall(r"^│ (\w+) ", out.split("Commands")[1], flags=re.MULTILINE)
    assert commands == ["run", "eval", "predict", "engine", "export", "report"]
    assert "EXIT 0" in out and "HEAVY []" in out


@pytest.mark.parametrize("bad", ["--limit 0"])
def test_bad_limit(tmp_path, bad, segformer_5):
    make_image(tmp_path / "data" / "x.png")
    flag, value = bad.split()
    result = invoke("run", "--data-dir", tmp_path / "data", "--out-dir", tmp_path / "o",
                    "--segmentor", f"hf:{segformer_5}", flag, value)  # fmt: skip
    assert "--limit 0" in one_line_error(result)


OOM_SEGMENTOR = """
import torch

from ssa.specs.segmentors import load_segmentor


class OutOfMemoryOnNarrowImages:
    \"\"\"The hf: segmentor, except that a 40-pixel-wide image raises CUDA's out-of-memory.\"\"\"

    def __init__(self, inner):
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, image):
        if image.shape[1] == 40:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.inner(image)


def make(device="cpu", model=""):
    return OutOfMemoryOnNarrowImages(load_segmentor("hf:" + model, device=device))
"""


def test_out_of_memory_fails_one_image_then_overwrite_relabels_all_uint16(
    tmp_path, sam_checkpoint, segformer_5
):
    """The production loop (prefetch and background writes): a segmentor's CUDA out-of-memory
    error on the first image is that image's failure in failures.jsonl and the next images are
    labelled. Then `--overwrite` with a 300-class segmentor relabels every image, done ones
    too: 300 class names in each JSON, uint16 PNGs that agree with it, no failure report."""
    from conftest import save_segformer
    from PIL import Image

    from ssa.run.outputs import FAILURES_FILE, read_failures

    data, out = tmp_path / "data", tmp_path / "out"
    for i, width in enumerate((40, 48, 56)):
        make_image(data / f"im{i}.png", width=width, height=32, seed=i)
    plugin = tmp_path / "oom.py"
    plugin.write_text(OOM_SEGMENTOR)
    args = [str(a) for a in run_args(data, out, sam_checkpoint, segformer_5)]
    at = args.index("--segmentor")
    args[at + 1: at + 2] = [f"py:{plugin}:make", "--segmentor-arg", f"model={segformer_5}"]
    result = invoke(*args)
    assert result.exit_code == 1, result.output  # a failed image: exit code 1
    assert read_failures(out) == [{"path": "im0.png", "stage": "label",
                                   "error": "CUDA out of memory on this image; free GPU memory "
                                            "or lower --amg points_per_batch"}]
    assert not (out / "im0_semantic.json").exists()
    names5 = ["sky", "tree", "road", "car", "person"]
    for i in (1, 2):
        assert json.loads((out / f"im{i}_semantic.json").read_text())["class_names"] == names5
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*_semantic.json")}

    many = [f"class {i}" for i in range(300)]
    seg300 = save_segformer(tmp_path / "seg300", many, seed=3)
    result = invoke(*run_args(data, out, sam_checkpoint, seg300, "--overwrite", "--save-branch"))
    assert result.exit_code == 0, result.output
    assert not (out / FAILURES_FILE).exists()
    labels = set()
    for i, width in enumerate((40, 48, 56)):
        path = out / f"im{i}_semantic.json"
        assert path.stat().st_mtime_ns != mtimes.get(path.name)
        doc, png = check_outputs(path, (32, width), many)
        assert doc["class_names"] == many
        with Image.open(out / f"im{i}_branch.png") as branch:
            assert np.asarray(branch).dtype == np.uint16
        labels |= set(np.unique(png).tolist())
    assert max(labels - {65535}) > 255, "no class beyond 255: the uint16 path is not used"
