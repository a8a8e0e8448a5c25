"""`ssa run` with masks from files and segmentors from outside ssa, against brute force."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_voting_policies import brute_force
from typer.testing import CliRunner

from ssa.cli.commands import app
from ssa.io import encode_rle

runner = CliRunner()
CLASSES = ["sky", "tree", "road", "car"]
RELS = [Path("sub/a.png"), Path("b.jpg")]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_masks_json(path: Path, masks: np.ndarray) -> None:
    """SA-1B-style records: the RLE, the SA-1B fields, and an extra field to carry through."""
    anns = []
    for i, (mask, rle) in enumerate(zip(masks, encode_rle(masks))):
        ys, xs = np.nonzero(mask)
        anns.append({
            "id": 100 + i,
            "segmentation": rle,
            "area": int(mask.sum()),
            "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
            "predicted_iou": 0.9,
            "point_coords": [[float(xs[0]), float(ys[0])]],
            "stability_score": 0.95,
            "crop_box": [0, 0, mask.shape[1], mask.shape[0]],
            "source": "hand-made",
        })  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"image": {"file_name": path.stem}, "annotations": anns}))


@pytest.fixture()
def hand_made(tmp_path):
    """Two images in a folder dataset, their masks as SA-1B JSON and branch labels as PNGs."""
    rng = np.random.default_rng(7)
    data, masks_dir, labels_dir = tmp_path / "images", tmp_path / "masks", tmp_path / "labels"
    truth = {}
    for k, rel in enumerate(RELS):
        height, width = 20 + 4 * k, 30
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data / rel)
        labels = rng.integers(0, len(CLASSES), (height, width))
        labels[rng.random(labels.shape) < 0.05] = 255
        masks = rng.random((7, height, width)) < rng.random((7, 1, 1))
        masks[:, 0, 0] = True  # no empty mask (SA-1B has none)
        write_masks_json(masks_dir / rel.parent / f"{rel.stem}.json", masks)
        (labels_dir / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels.astype(np.uint8)).save(labels_dir / rel.parent / f"{rel.stem}.png")
        truth[rel] = (masks, labels)
    classes = tmp_path / "classes.txt"
    classes.write_text("# one per line\n" + "\n".join(CLASSES) + "\n")
    return data, masks_dir, labels_dir, classes, truth


@pytest.mark.parametrize("share", [None, 0.35])
def test_masks_and_labels_match_brute_force(hand_made, tmp_path, share):
    data, masks_dir, labels_dir, classes, truth = hand_made
    out = tmp_path / "out"
    extra = [] if share is None else ["--min-vote-share", share]
    result = invoke(
        "run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
        "--segmentor", f"labels:{labels_dir}", "--classes", classes, "--device", "cpu",
        "--save-branch", *extra,
    )  # fmt: skip  (no SAM checkpoint anywhere: --masks needs none)
    assert result.exit_code == 0, result.output
    for rel, (masks, labels) in truth.items():
        ref_classes, _, ref_map = brute_force(masks, labels, len(CLASSES), min_share=share or 0.0)
        stem = out / rel.parent / rel.stem
        got = np.asarray(Image.open(f"{stem}_semantic.png"))
        np.testing.assert_array_equal(got, ref_map)
        np.testing.assert_array_equal(np.asarray(Image.open(f"{stem}_branch.png")), labels)
        anns = json.loads(Path(f"{stem}_semantic.json").read_text())["annotations"]
        assert [a["id"] for a in anns] == list(range(100, 107))
        assert all(a["source"] == "hand-made" and a["stability_score"] == 0.95 for a in anns)
        assert [a["class_name"] for a in anns] == [
            CLASSES[c] if c >= 0 else None for c in ref_classes
        ]
    if share is not None:
        assert any(c < 0 for rel in truth for c in brute_force(
            *truth[rel], len(CLASSES), min_share=share)[0]), "the threshold must matter here"


def test_masks_missing_file_is_a_recorded_failure(hand_made, tmp_path):
    data, masks_dir, labels_dir, classes, _ = hand_made
    (masks_dir / "b.json").unlink()
    out = tmp_path / "out"
    result = invoke(
        "run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
        "--segmentor", f"labels:{labels_dir}", "--classes", classes, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 1
    failure = json.loads((out / "failures.jsonl").read_text().splitlines()[0])
    assert failure["path"] == "b.jpg" and "no mask file for image b.jpg" in failure["error"]
    assert (out / "sub" / "a_semantic.json").is_file()


PLUGIN = textwrap.dedent(
    """
    import numpy as np

    class Disagree:
        '''Every pixel leans weakly to class 0, except the right third, strongly class 1.'''

        classes = ["sky", "tree", "road"]

        def __init__(self, strength=0.9):
            self.strength = strength

        def __call__(self, image):
            h, w = image.shape[:2]
            probs = np.empty((3, h, w), dtype=np.float32)
            probs[:] = np.array([0.40, 0.35, 0.25], dtype=np.float32)[:, None, None]
            s = self.strength
            probs[:, :, 2 * w // 3:] = np.array([(1 - s) / 2, s, (1 - s) / 2])[:, None, None]
            return probs

    def make(strength: float = 0.9):
        return Disagree(strength)

    def make_labels_only():
        seg = Disagree()
        return type("LabelsOnly", (), {
            "classes": seg.classes, "__call__": lambda self, image: seg(image).argmax(0)})()
    """
)


@pytest.fixture()
def disagree(tmp_path):
    plugin = tmp_path / "disagree.py"
    plugin.write_text(PLUGIN)
    data, masks_dir = tmp_path / "images", tmp_path / "masks"
    data.mkdir()
    Image.fromarray(np.zeros((6, 9, 3), np.uint8)).save(data / "x.png")
    whole = np.ones((1, 6, 9), bool)
    write_masks_json(masks_dir / "x.json", whole)
    return plugin, data, masks_dir


@pytest.mark.parametrize(("policy", "expected"), [("hard", "sky"), ("soft", "tree")])
def test_py_plugin_hard_and_soft_disagree(disagree, tmp_path, policy, expected):
    """One mask over the image: 2/3 of its pixels say sky (0.40 vs 0.35), 1/3 say tree (0.9).
    Hard: sky by 36 votes to 18. Soft: mean tree 0.533 > mean sky 0.300 (worked by hand)."""
    plugin, data, masks_dir = disagree
    out = tmp_path / f"out_{policy}"
    result = invoke(
        "run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
        "--segmentor", f"py:{plugin}:make", "--segmentor-arg", "strength=0.9",
        "--vote", policy, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    ann = json.loads((out / "x_semantic.json").read_text())["annotations"][0]
    assert ann["class_name"] == expected
    label_map = np.asarray(Image.open(out / "x_semantic.png"))
    assert (label_map == ["sky", "tree", "road"].index(expected)).all()


def test_soft_vote_with_labels_only_stops_the_run(disagree, tmp_path):
    plugin, data, masks_dir = disagree
    result = invoke(
        "run", "--data-dir", data, "--out-dir", tmp_path / "out", "--masks", masks_dir,
        "--segmentor", f"py:{plugin}:make_labels_only", "--vote", "soft", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--vote soft needs class scores" in result.output
    assert not (tmp_path / "out" / "failures.jsonl").exists()


@pytest.mark.parametrize(
    ("extra", "message", "code"),
    [
        (["--vote", "mean"], "unknown --vote 'mean'", 2),
        (["--min-vote-share", "2"], "--min-vote-share 2.0 (config key min_vote_share)", 2),
        # the factory's keywords are checked when it is called, as the run starts
        (["--segmentor-arg", "colour=red"], "takes no argument 'colour'", 1),
        (["--classes", "x.txt"], "--classes applies to labels: segmentors", 2),
    ],
)
def test_bad_options_are_one_line_errors(disagree, tmp_path, extra, message, code):
    plugin, data, masks_dir = disagree
    result = invoke(
        "run", "--data-dir", data, "--out-dir", tmp_path / "out", "--masks", masks_dir,
        "--segmentor", f"py:{plugin}:make", "--device", "cpu", *extra,
    )  # fmt: skip
    assert result.exit_code == code
    assert message in " ".join(result.output.split())


def test_config_file_gives_segmentor_args_and_policy(disagree, tmp_path):
    """`segmentor_args`, `vote` and `masks` from YAML; a flag still overrides the file."""
    plugin, data, masks_dir = disagree
    config = tmp_path / "run.yaml"
    config.write_text(
        f"data_dir: {data}\nmasks: {masks_dir}\nsegmentor: py:{plugin}:make\n"
        f"segmentor_args: {{strength: 0.9}}\nvote: soft\ndevice: cpu\n"
    )
    out = tmp_path / "out"
    result = invoke("run", "--config", config, "--out-dir", out)
    assert result.exit_code == 0, result.output
    ann = json.loads((out / "x_semantic.json").read_text())["annotations"][0]
    assert ann["class_name"] == "tree"
    # The flag wins: strength 0.2 makes the right third (0.4, 0.2, 0.4), so the soft means are
    # sky 0.40, tree 0.30, road 0.30 (worked by hand).
    out2 = tmp_path / "out2"
    result = invoke("run", "--config", config, "--out-dir", out2, "--segmentor-arg", "strength=0.2")
    assert result.exit_code == 0, result.output
    assert json.loads((out2 / "x_semantic.json").read_text())["annotations"][0]["class_name"] == "sky"


MASK_SOURCE = textwrap.dedent(
    """
    from pathlib import Path

    import numpy as np

    class Fixed:
        '''Hand-made masks per image, as raw SAM-style records (`HW bool` segmentation).'''

        def __init__(self, masks_file, device="cpu"):
            self.masks = dict(np.load(masks_file))
            self.device = device

        def generate(self, image, *, path=None):
            stack = self.masks[Path(path).as_posix()]
            assert stack.shape[1:] == image.shape[:2]
            return [{"segmentation": m, "predicted_iou": 0.5 + i / 100}
                    for i, m in enumerate(stack)]

    def fixed(masks_file, device="cpu"):
        return Fixed(masks_file, device)
    """
)


def test_py_mask_source_runs_end_to_end(hand_made, tmp_path):
    """`--masks py:file.py:factory`, its argument through `--amg`: the output masks are the
    factory's (pycocotools decode), areas and boxes computed by numpy, votes by brute force."""
    from pycocotools import mask as mask_utils

    data, _, labels_dir, classes, truth = hand_made
    plugin = tmp_path / "fixed_masks.py"
    plugin.write_text(MASK_SOURCE)
    masks_file = tmp_path / "masks.npz"
    np.savez(masks_file, **{rel.as_posix(): masks for rel, (masks, _) in truth.items()})
    out = tmp_path / "out"
    result = invoke(
        "run", "--data-dir", data, "--out-dir", out, "--masks", f"py:{plugin}:fixed",
        "--amg", f"masks_file={masks_file}", "--segmentor", f"labels:{labels_dir}",
        "--classes", classes, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for rel, (masks, labels) in truth.items():
        ref_classes, _, ref_map = brute_force(masks, labels, len(CLASSES))
        stem = out / rel.parent / rel.stem
        anns = json.loads(Path(f"{stem}_semantic.json").read_text())["annotations"]
        assert len(anns) == len(masks)
        for i, (ann, mask) in enumerate(zip(anns, masks)):
            rle = dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode())
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
            ys, xs = np.nonzero(mask)
            assert ann["area"] == int(mask.sum())
            assert ann["bbox"] == [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1,
                                   int(np.ptp(ys)) + 1]
            assert ann["predicted_iou"] == pytest.approx(0.5 + i / 100)
        assert [a["class_name"] for a in anns] == [
            CLASSES[c] if c >= 0 else None for c in ref_classes
        ]
        np.testing.assert_array_equal(np.asarray(Image.open(f"{stem}_semantic.png")), ref_map)


def test_py_mask_source_bad_knob_lists_its_arguments(hand_made, tmp_path):
    data, _, labels_dir, classes, _ = hand_made
    plugin = tmp_path / "fixed_masks.py"
    plugin.write_text(MASK_SOURCE)
    result = invoke(
        "run", "--data-dir", data, "--out-dir", tmp_path / "out", "--masks",
        f"py:{plugin}:fixed", "--amg", "points_per_side=8", "--segmentor",
        f"labels:{labels_dir}", "--classes", classes, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "takes no argument 'points_per_side'; its keyword arguments: masks_file, device" in (
        " ".join(result.output.split())
    )


def test_json_prefix_and_bare_folder_give_the_same_outputs(hand_made, tmp_path):
    data, masks_dir, labels_dir, classes, _ = hand_made
    outputs = {}
    for name, spec in (("prefixed", f"json:{masks_dir}"), ("bare", str(masks_dir))):
        out = tmp_path / name
        result = invoke(
            "run", "--data-dir", data, "--out-dir", out, "--masks", spec,
            "--segmentor", f"labels:{labels_dir}", "--classes", classes, "--device", "cpu",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        outputs[name] = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # a JSON and a PNG per image, and the run's settings (ssa_run.json)
    assert len(outputs["bare"]) == 2 * len(RELS) + 1
    assert outputs["prefixed"] == outputs["bare"]


def test_runner_works_from_python_without_rich(hand_made, tmp_path):
    """`ssa.run.runner.run_rank(RunConfig(...))` in a fresh interpreter: it labels the images (the
    same files as `ssa run`) and never imports rich or typer."""
    import os
    import subprocess
    import sys

    data, masks_dir, labels_dir, classes, _ = hand_made
    out_py, out_cli = tmp_path / "py", tmp_path / "cli"
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from ssa.config import RunConfig
        from ssa.plan import plan_run
        from ssa.run.runner import run_rank
        cfg = RunConfig(data_dir=Path({str(data)!r}), out_dir=Path({str(out_py)!r}),
                        masks={str(masks_dir)!r}, segmentor={f"labels:{labels_dir}"!r},
                        classes=Path({str(classes)!r}), device="cpu")
        summary = run_rank(plan_run(cfg))
        assert summary.done == {len(RELS)} and not summary.failed, summary
        assert "rich" not in sys.modules and "typer" not in sys.modules
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=root,
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    result = invoke(
        "run", "--data-dir", data, "--out-dir", out_cli, "--masks", masks_dir,
        "--segmentor", f"labels:{labels_dir}", "--classes", classes, "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(out_cli) for p in out_cli.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(out_py) for p in out_py.rglob("*") if p.is_file())
    for rel in files:
        assert (out_cli / rel).read_bytes() == (out_py / rel).read_bytes()


PROMPTABLE = textwrap.dedent(
    """
    import numpy as np
    import torch

    from ssa.io import encode_rle
    from ssa.masks import MaskResult

    class ThreeMasks:
        '''Answers any prompt with three fixed masks, not ordered by size.'''

        def set_image(self, image):
            h, w = image.shape[:2]
            patch = np.zeros((h, w), bool)
            patch[1:3, 1:3] = True
            right = np.zeros((h, w), bool)
            right[:, 2 * w // 3:] = True
            self.stack = np.stack([patch, np.ones((h, w), bool), right])

        def predict(self, points, labels, box, multimask=True):
            assert points.tolist() == [[4.0, 2.0]] and labels.tolist() == [1] and box is None
            records = [{"segmentation": rle, "area": int(m.sum()), "predicted_iou": 0.7 + i / 10}
                       for i, (m, rle) in enumerate(zip(self.stack, encode_rle(self.stack)))]
            return MaskResult(records, torch.from_numpy(self.stack))

    def make():
        return ThreeMasks()
    """
)


def test_predict_takes_any_promptable_mask_source(disagree, tmp_path):
    """`ssa predict --masks py:...`: the source's three masks, whole -> subpart by area, each
    labelled by the SSA rule (brute force over the segmentor's argmax labels)."""
    from pycocotools import mask as mask_utils

    plugin, data, _ = disagree
    source = tmp_path / "three_masks.py"
    source.write_text(PROMPTABLE)
    out = tmp_path / "pred.json"
    result = invoke(
        "predict", data / "x.png", "--point", "4,2", "--masks", f"py:{source}:make",
        "--segmentor", f"py:{plugin}:make", "--device", "cpu", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    masks = np.stack([
        mask_utils.decode(dict(m["segmentation"], counts=m["segmentation"]["counts"].encode()))
        for m in doc["masks"]
    ]).astype(bool)
    assert [m["granularity"] for m in doc["masks"]] == ["whole", "part", "subpart"]
    assert [m["multimask_index"] for m in doc["masks"]] == [1, 2, 0]
    assert [m["area"] for m in doc["masks"]] == [54, 18, 4] == masks.sum((1, 2)).tolist()
    assert [m["predicted_iou"] for m in doc["masks"]] == pytest.approx([0.8, 0.9, 0.7])
    labels = np.zeros((6, 9), np.int64)
    labels[:, 6:] = 1  # Disagree's argmax: sky (0.40) on the left, tree (0.9) on the right third
    ref_classes = brute_force(masks, labels, 3)[0]
    assert [m["class_name"] for m in doc["masks"]] == [
        ["sky", "tree", "road"][c] for c in ref_classes
    ] == ["sky", "tree", "sky"]
