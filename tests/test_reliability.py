"""Issue 23's reliability findings, one regression test (or a few) each: hostile config files
(6), export write failures (8), NaN/Inf from a segmentor (9), extreme aspect ratios with `sam:`
(10). Export validation (5) is in test_export_validation.py; the launcher (12) in
test_distributed.py; memory by pixels (13) in test_memory.py and scripts/benchmark_memory.py."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from export_run import invoke, make_run, things_file

from ssa.errors import SSAError

# --- finding 6: YAML aliases, duplicate keys, size cap -----------------------------------------

BOMB = "amg:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}]\n"
    for i in range(8)
)  # 9^9 = 387M strings once expanded


def test_config_alias_bomb_is_refused(tmp_path: Path) -> None:
    from ssa.config import load_yaml

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(SSAError, match=r"--config .*bomb.yaml uses the YAML alias \*a \(line 3\)"):
        load_yaml(path)
    path.write_text("amg: &knobs {points_per_side: 8}\nsegmentor_args: *knobs\n")
    with pytest.raises(SSAError, match=r"alias \*knobs"):
        load_yaml(path)


def test_config_duplicate_key_is_named(tmp_path: Path) -> None:
    from ssa.config import load_yaml

    path = tmp_path / "dup.yaml"
    path.write_text("dataset: ade20k\ntop_k: 2\namg:\n  points_per_side: 8\n  points_per_side: 16\n")
    with pytest.raises(SSAError, match=r"--config .*dup.yaml gives key 'points_per_side' twice "
                                       r"\(line 5\)"):
        load_yaml(path)
    path.write_text("top_k: 2\ndataset: ade20k\ntop_k: 5\n")
    with pytest.raises(SSAError, match="key 'top_k' twice"):
        load_yaml(path)


def test_config_size_cap(tmp_path: Path) -> None:
    from ssa.config import load_yaml
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (4 << 20) + "\ntop_k: 2\n")
    with pytest.raises(SSAError, match=r"--config .*big.yaml is 4.0 MiB, over the 4 MiB limit"):
        load_yaml(path)


def test_config_limits_from_the_cli_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    result = invoke("run", "--config", path, "--data-dir", tmp_path, "--out-dir", tmp_path / "o")
    assert result.exit_code in (1, 2), result.output
    text = " ".join(result.output.split())
    assert "uses the YAML alias *a" in text and "Traceback" not in text, text


def test_prompts_file_gets_the_same_loader(tmp_path: Path) -> None:
    from ssa.segmentors.sam3 import read_prompts_file

    path = tmp_path / "prompts.yaml"
    path.write_text("sky: blue sky\ntree: a tree\nsky: the sky\n")
    with pytest.raises(SSAError, match="--prompts .*gives key 'sky' twice"):
        read_prompts_file(path, ["sky", "tree"])
    path.write_text('{"sky": "blue sky", "sky": "sky"}')  # JSON too
    with pytest.raises(SSAError, match="key 'sky' twice"):
        read_prompts_file(path, ["sky", "tree"])


# --- finding 8: export write failures are one line ---------------------------------------------

FORMATS = ["coco-instances", "coco-panoptic", "label-studio", "hf-dataset", "hf-parquet"]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability_run")
    data, out = make_run(tmp)
    return tmp, data, out


@pytest.fixture
def disk(tmp_path):
    """A real 1 MiB tmpfs at tmp_path/disk (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): " + made.stderr.decode()[:80])
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _export_args(fmt: str, data: Path, out: Path, target: Path, tmp: Path) -> list:
    name = "hf-dataset" if fmt == "hf-parquet" else fmt
    args = ["export", "--format", name, "--pred-dir", out, "--out", target, "--data-dir", data]
    if fmt == "coco-panoptic":
        args += ["--things", things_file(tmp)]
    return args


def _target(disk: Path, fmt: str) -> Path:
    return disk / "exports" / {"coco-instances": "i.json", "hf-parquet": "d.parquet"}.get(fmt, "x")


def _one_line(result) -> str:
    text = " ".join(result.output.split())
    assert result.exit_code == 1, text
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and result.output.count("Error:") == 1, result.output
    return text


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_to_a_read_only_folder(small_run, disk, fmt):
    if fmt.startswith("hf"):
        pytest.importorskip("datasets", reason="hf-dataset needs the datasets package")
    tmp, data, out = small_run
    (disk / "exports").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    text = _one_line(invoke(*_export_args(fmt, data, out, _target(disk, fmt), tmp)))
    assert "read-only" in text and "--out" in text, text


def _fill(disk: Path, free: int) -> None:
    """Fill the tmpfs until `free` bytes (about) are left."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    if free:
        os.truncate(disk / "filler", max(0, os.path.getsize(disk / "filler") - free))


@pytest.mark.parametrize("free", [0, 12 << 10, 40 << 10], ids=["full", "12k", "40k"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_on_a_full_disk(small_run, disk, fmt, free):
    if fmt.startswith("hf"):
        pytest.importorskip("datasets", reason="hf-dataset needs the datasets package")
    tmp, data, out = small_run
    (disk / "exports").mkdir()
    _fill(disk, free)
    target = _target(disk, fmt)
    result = invoke(*_export_args(fmt, data, out, target, tmp))
    if result.exit_code == 0:  # it fitted: then it is whole
        assert target.exists()
        return
    text = _one_line(result)
    assert "disk is full" in text and "--out" in text, text
    assert not target.exists()
    assert sorted(p.name for p in (disk / "exports").iterdir()) == []  # no staging left


# --- finding 9: NaN and infinity fail that image; JSON is strict -------------------------------

NAN_PLUGIN = '''
import numpy as np

class Seg:
    classes = ["sky", "tree", "road", "car", "person"]

    def __call__(self, image, *, path=None):
        scores = np.zeros((5, 8, 8), np.float32)
        scores[1] = 1.0
        if path.name == "a.png":
            scores[2, 3, 3] = np.nan
        elif path.name == "b.jpg":
            scores[0, 0, 0] = np.inf
        return scores

def make():
    return Seg()
'''


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_nan_or_inf_scores_fail_that_image(tmp_path: Path) -> None:
    from export_run import make_inputs

    data, masks_dir, _labels, _classes = make_inputs(tmp_path)
    plugin = tmp_path / "nanseg.py"
    plugin.write_text(NAN_PLUGIN)
    # The third image's mask file carries a NaN score of its own (a mask source's field).
    masks_json = masks_dir / "sub" / "c.json"
    doc = json.loads(masks_json.read_text())
    doc["annotations"][0]["predicted_iou"] = float("nan")
    masks_json.write_text(json.dumps(doc))
    out = tmp_path / "run"
    result = invoke("run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
                    "--segmentor", f"py:{plugin}:make", "--device", "cpu")
    assert result.exit_code == 1, result.output  # images failed; the run went on
    assert "Traceback" not in result.output, result.output
    failures = {r["path"]: r for r in map(json.loads, (out / "failures.jsonl").read_text()
                                          .splitlines())}
    assert sorted(failures) == ["a.png", "sub/b.jpg", "sub/c.png"]
    assert "1 NaN or infinite scores of 320" in failures["a.png"]["error"]
    assert failures["a.png"]["stage"] == "label"
    assert "1 NaN or infinite scores of 320" in failures["sub/b.jpg"]["error"]
    assert failures["sub/c.png"]["stage"] == "write"
    assert "NaN or infinity" in failures["sub/c.png"]["error"]
    assert not list(out.rglob("*_semantic.json"))  # no file with NaN in it


def test_every_json_writer_is_strict(tmp_path: Path) -> None:
    from ssa import io
    from ssa.export.base import write_json_stream, write_part

    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(SSAError, match="a.json as JSON .*NaN or infinity"):
            io.write_json(tmp_path / "a.json", {"score": bad})
        with pytest.raises(SSAError, match="NaN or infinity"):
            write_part(tmp_path, 0, [{"score": bad}])
        with pytest.raises(SSAError, match="NaN or infinity"):
            write_json_stream(tmp_path / "s.json", {"info": {"x": bad}}, {"a": list})
        with pytest.raises(SSAError, match="NaN or infinity"):
            write_json_stream(tmp_path / "s.json", None, {"a": lambda b=bad: [{"x": b}]})
    assert not (tmp_path / "a.json").exists()


def test_nan_labels_from_a_segmentor_are_refused() -> None:
    import torch

    from ssa.segmentors.base import BranchOutput

    labels = torch.zeros(4, 5)
    labels[1, 1] = float("nan")
    with pytest.raises(SSAError, match="1 NaN or infinite labels of 20"):
        BranchOutput.from_raw(labels, 3, (4, 5))
    scores = torch.zeros(3, 2, 2)
    scores[0, 0, 0] = -float("inf")
    with pytest.raises(SSAError, match="1 NaN or infinite scores of 12"):
        BranchOutput.from_raw(scores, 3, (4, 5))


# --- finding 10: extreme aspect ratios with sam: fail that image in one line -------------------

SEG_PLUGIN = '''
import numpy as np

class Seg:
    classes = ["a", "b"]

    def __call__(self, image):
        return np.zeros((2, 4, 4), np.float32)

def make():
    return Seg()
'''


@pytest.mark.parametrize("impl", ["fast", "stock"])
def test_sam_on_a_1x20000_strip_is_one_line(tmp_path: Path, sam_checkpoint: Path, impl) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(rng.integers(0, 255, (1, 20000, 3), dtype=np.uint8)).save(data / "wide.png")
    Image.fromarray(rng.integers(0, 255, (20000, 1, 3), dtype=np.uint8)).save(data / "tall.png")
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(data / "ok.png")
    plugin = tmp_path / "seg.py"
    plugin.write_text(SEG_PLUGIN)
    out = tmp_path / "out"
    result = invoke("run", "--data-dir", data, "--out-dir", out, "--masks",
                    f"sam:vit_b:{sam_checkpoint}", "--segmentor", f"py:{plugin}:make",
                    "--device", "cpu", "--amg", "points_per_side=4", "--amg-impl", impl)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == ["tall.png", "wide.png"]
    for f in failures:
        assert "too elongated for SAM" in f["error"] and "2048:1" in f["error"], f
    assert (out / "ok_semantic.json").is_file()  # the run went on


def test_sam_shape_check_matches_segment_anything() -> None:
    """The check refuses exactly the sizes whose resize segment-anything cannot do."""
    from segment_anything.utils.transforms import ResizeLongestSide

    from ssa.masks.sam import check_sam_shape

    transform = ResizeLongestSide(1024)
    for size in [(1, 2048), (1, 2049), (1, 20000), (2, 4096), (2, 4097), (5, 3), (700, 1)]:
        try:
            transform.apply_image(np.zeros((*size, 3), dtype=np.uint8))
            works = True
        except ValueError:
            works = False
        if works:
            check_sam_shape(size, 1024)
        else:
            with pytest.raises(SSAError, match="too elongated"):
                check_sam_shape(size, 1024)


# --- finding 13: memory grows with pixels, not masks x pixels ----------------------------------


def test_rle_votes_equal_the_dense_stack() -> None:
    """`vote` on an `io.RleStack` (mask by mask) gives exactly what the `(N, H, W)` stack gives
    (the reference: the stack path, itself tested against brute force), ties in area, untrusted
    masks (`min_vote_share`), labels without votes and >255 classes included."""
    import torch

    from ssa import io, voting

    rng = np.random.default_rng(0)
    for trial in range(40):
        height, width = (int(v) for v in rng.integers(5, 40, 2))
        n = int(rng.integers(0, 12))
        num_classes = 300 if trial % 10 == 0 else int(rng.integers(1, 6))
        masks = rng.random((n, height, width)) < rng.random((n, 1, 1))
        none = io.no_label_value(num_classes)
        raw = rng.integers(0, num_classes + 1, (height, width))
        raw[raw == num_classes] = none
        labels = torch.from_numpy(raw.astype(np.uint8 if num_classes <= 255 else np.int32))
        stack = io.RleStack(io.encode_rle(masks), (height, width))
        areas = torch.from_numpy(masks.reshape(n, height * width).sum(1)) if trial % 3 else (
            torch.from_numpy(rng.integers(0, 3, n)))
        for share in (0.0, 0.6):
            want = voting.vote(torch.from_numpy(masks), labels, num_classes, 3, areas=areas,
                               min_vote_share=share)
            got = voting.vote(stack, labels, num_classes, 3, areas=areas, min_vote_share=share)
            for name in ("classes", "counts", "proposals", "shares", "label_map"):
                a, b = getattr(want, name), getattr(got, name)
                assert a.dtype == b.dtype and torch.equal(a, b), (trial, name)
            if share:
                assert torch.equal(want.trusted, got.trusted)


def test_json_masks_records_as_before(tmp_path: Path) -> None:
    """The RLE, area and bbox of `json:` masks are what decoding and re-encoding gave
    (pycocotools' encoding, `mask_bbox`), also from uncompressed and non-canonical counts."""
    from ssa import io
    from ssa.masks.base import mask_bbox
    from ssa.masks.sa1b import JsonMasks

    rng = np.random.default_rng(1)
    masks = rng.random((6, 9, 7)) < 0.4
    masks[0] = False
    masks[1] = True
    rles = io.encode_rle(masks)
    anns = [{"segmentation": rle, "id": k} for k, rle in enumerate(rles)]
    runs = io.rle_runs(rles[2]["counts"], "x").tolist()
    anns[2]["segmentation"] = {"size": [9, 7], "counts": runs[:2] + [0, 0] + runs[2:]}
    (tmp_path / "im.json").write_text(json.dumps({"annotations": anns}))
    result = JsonMasks(tmp_path).generate(np.zeros((9, 7, 3), np.uint8), path=Path("im.png"))
    for record, mask, rle in zip(result.records, masks, rles):
        assert record["segmentation"] == rle
        assert record["area"] == int(mask.sum()) and record["bbox"] == mask_bbox(mask)
    assert np.array_equal(result.masks.numpy(), masks)
    assert all(np.array_equal(a, b) for a, b in zip(result.masks, masks))


def _traced_run_peak(tmp_path: Path, n: int, height: int, width: int) -> int:
    """Peak bytes numpy (and Python) hold during `ssa run` on one image with `n` `json:` masks,
    `labels:` and every output, after a warm-up run (imports done)."""
    import tracemalloc

    from export_run import blob_masks
    from PIL import Image

    from ssa import io

    rng = np.random.default_rng(2)
    root = tmp_path / f"n{n}"
    data, masks_dir, labels_dir = root / "images", root / "masks", root / "labels"
    for folder in (data, masks_dir, labels_dir):
        folder.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(data / "a.png")
    Image.fromarray(rng.integers(0, 5, (height, width)).astype(np.uint8)).save(labels_dir / "a.png")
    masks = blob_masks(rng, height, width, n)
    (masks_dir / "a.json").write_text(json.dumps(
        {"annotations": [{"segmentation": r} for r in io.encode_rle(masks)]}))
    del masks
    classes = root / "classes.txt"
    classes.write_text("a\nb\nc\nd\ne\n")
    args = ["run", "--data-dir", data, "--out-dir", root / "out", "--masks", masks_dir,
            "--segmentor", f"labels:{labels_dir}", "--classes", classes, "--device", "cpu",
            "--save-branch", "--save-vis", "--overwrite"]
    assert invoke(*args).exit_code == 0
    tracemalloc.start()
    try:
        result = invoke(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exit_code == 0, result.output
    return peak


def test_run_memory_does_not_grow_with_masks_x_pixels(tmp_path: Path) -> None:
    """`ssa run` with `json:` masks and `labels:`, every output written: before, the masks were
    decoded into an (N, H, W) stack (twice: the planes and their stack; 18.2 GB for 192 masks
    of a 30 MP photo), so 120 more masks of 120,000 pixels cost 28.8 MB more. Now the peak
    grows with the masks' records only."""
    height, width = 300, 400
    few, many = (_traced_run_peak(tmp_path, n, height, width) for n in (40, 160))
    extra = (160 - 40) * height * width  # what 120 more masks weigh as a bool stack: 14.4 MB
    assert many - few < extra / 4, (
        f"peak {few / 1e6:.1f} MB with 40 masks, {many / 1e6:.1f} MB with 160"
    )


def _overlay_reference(image, label_map, palette, masks, names, alpha=0.5):
    """write_overlay as it was (whole-image float32 blend, padded copies per mask)."""
    from PIL import Image, ImageDraw

    colours = np.zeros((max(256, len(palette)), 3), dtype=np.uint8)
    colours[: len(palette)] = palette
    valid = label_map != 255
    blend = image.astype(np.float32)
    blend[valid] = (1 - alpha) * blend[valid] + alpha * colours[label_map[valid]]
    out = blend.astype(np.uint8)
    for mask in masks:
        p = np.pad(mask, 1)
        out[mask & ~(p[2:, 1:-1] & p[:-2, 1:-1] & p[1:-1, 2:] & p[1:-1, :-2])] = 255
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    for mask, name in zip(masks, names):
        if name is None or not mask.any():
            continue
        ys, xs = np.nonzero(mask)
        draw.text((float(xs.mean()), float(ys.mean())), name, fill=(255, 255, 255), anchor="mm")
    return np.asarray(pil)


def test_overlay_in_bands_equals_the_whole_image_blend(tmp_path: Path, monkeypatch) -> None:
    from ssa import io

    captured = {}

    def grab(pil, **save):  # the overlay's pixels, before JPEG's losses
        captured["image"] = np.asarray(pil)
        return b""

    monkeypatch.setattr(io, "_pil_bytes", grab)
    monkeypatch.setattr(io, "atomic_write_bytes", lambda path, data: None)
    rng = np.random.default_rng(3)
    for height, width in [(1, 9), (7, 1), (37, 53), (300, 7)]:
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        labels = rng.integers(0, 6, (height, width)).astype(np.uint8)
        labels[labels == 5] = 255
        palette = rng.integers(0, 255, (5, 3), dtype=np.uint8)
        masks = rng.random((4, height, width)) < 0.5
        masks[0] = False
        names = ["a", None, "c", "d"]
        want = _overlay_reference(image, labels, palette, masks, names)
        # Masks decoded one at a time (column-major, as pycocotools gives them) or a stack.
        for given in (io.RleStack(io.encode_rle(masks), (height, width)), masks):
            captured.clear()
            io.write_overlay(tmp_path / "v.jpg", image, labels, palette, given, names)
            assert np.array_equal(captured["image"], want), (height, width, type(given))


def test_an_empty_masks_undefined_stability_is_null(tmp_path: Path) -> None:
    """SAM's stability of a mask without pixels is 0/0 (kept with stability_score_thresh=0):
    written as null, not NaN, and the image is labelled (a NaN elsewhere fails it, above)."""
    from export_run import make_inputs

    data, masks_dir, labels_dir, classes = make_inputs(tmp_path)
    path = masks_dir / "a.json"
    doc = json.loads(path.read_text())
    h, w = doc["annotations"][0]["segmentation"]["size"]
    from ssa import io

    empty = io.encode_rle(np.zeros((1, h, w), dtype=bool))[0]
    doc["annotations"].append({"segmentation": empty, "area": 0, "stability_score": float("nan")})
    path.write_text(json.dumps(doc))
    out = tmp_path / "run"
    result = invoke("run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
                    "--segmentor", f"labels:{labels_dir}", "--classes", classes, "--device", "cpu")
    assert result.exit_code == 0, result.output
    written = _strict((out / "a_semantic.json").read_text())
    assert written["annotations"][-1]["stability_score"] is None
