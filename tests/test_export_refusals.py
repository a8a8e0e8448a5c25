"""`ssa export`'s refusals (one line each, by message), atomic writing, `--world-size` parts
assembled by rank 0, and an `ssa engine`-style run (free-form names, no label PNGs)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from export_run import RELS, invoke, make_inputs, make_run, things_file

EXPORT = ["export", "--format"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_refusals")
    data, out = make_run(tmp)
    return tmp, data, out


def refused(result, *phrases):
    """A refusal while planning the export: one line, exit code 2 (usage)."""
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Error:" in text, text
    for phrase in phrases:
        assert phrase in text, text
    return text


def test_not_a_finished_run(tmp_path):
    (tmp_path / "empty").mkdir()
    refused(invoke(*EXPORT, "cityscapes", "--pred-dir", tmp_path / "empty", "--out",
                   tmp_path / "x"), "holds no <stem>_semantic.json", "not a finished run")


def test_failed_images_named_then_allow_missing(tmp_path):
    data, masks_dir, labels_dir, classes = make_inputs(tmp_path)
    (masks_dir / "sub" / "c.json").unlink()  # this image fails in the run
    out = tmp_path / "run"
    result = invoke("run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
                    "--segmentor", f"labels:{labels_dir}", "--classes", classes,
                    "--device", "cpu")  # fmt: skip
    assert result.exit_code == 1 and (out / "failures.jsonl").is_file()
    target = tmp_path / "i.json"
    args = [*EXPORT, "coco-instances", "--pred-dir", out, "--out", target, "--data-dir", data]
    refused(invoke(*args), "1 image of the run failed", "sub/c.png", "--allow-missing")
    assert not target.exists()
    result = invoke(*args, "--allow-missing")
    assert result.exit_code == 0, result.output
    doc = json.loads(target.read_text())
    assert [img["file_name"] for img in doc["images"]] == ["a.png", "sub/b.jpg"]


def test_images_not_done_named(run, tmp_path):
    _tmp, data, out = run
    (data / "new.png").write_bytes((data / "a.png").read_bytes())
    try:
        refused(invoke(*EXPORT, "coco-instances", "--pred-dir", out, "--out", tmp_path / "i.json",
                       "--data-dir", data), "no _semantic.json", "new.png", "--allow-missing")
    finally:
        (data / "new.png").unlink()


def test_cityscapes_for_other_classes(run, tmp_path):
    _tmp, _data, out = run
    refused(invoke(*EXPORT, "cityscapes", "--pred-dir", out, "--out", tmp_path / "c"),
            "needs a run with the 19 Cityscapes classes", "has 5")


def test_dataset_classes_must_match(run, tmp_path):
    _tmp, _data, out = run
    refused(invoke(*EXPORT, "cityscapes", "--pred-dir", out, "--out", tmp_path / "c",
                   "--dataset", "cityscapes"), "are not --dataset cityscapes's 19")


def test_panoptic_needs_things(run, tmp_path):
    _tmp, data, out = run
    refused(invoke(*EXPORT, "coco-panoptic", "--pred-dir", out, "--out", tmp_path / "p",
                   "--data-dir", data), "pass --things FILE")


def test_needs_data_dir_and_unknown_format(run, tmp_path):
    import shutil

    _tmp, _data, out = run
    # the run's record names its images: no --data-dir needed
    assert invoke(*EXPORT, "label-studio", "--pred-dir", out, "--out", tmp_path / "l").exit_code == 0
    bare = tmp_path / "bare_run"  # outputs without ssa's record: --data-dir is needed
    shutil.copytree(out, bare)
    (bare / "ssa_run.json").unlink()
    refused(invoke(*EXPORT, "label-studio", "--pred-dir", bare, "--out", tmp_path / "l2"),
            "--format label-studio needs --data-dir")
    refused(invoke(*EXPORT, "yolo", "--pred-dir", out, "--out", tmp_path / "l"),
            "unknown --format 'yolo'", "coco-instances")


def test_hf_dataset_refuses_world_size(run, tmp_path):
    _tmp, data, out = run
    refused(invoke(*EXPORT, "hf-dataset", "--pred-dir", out, "--out", tmp_path / "h",
                   "--data-dir", data, "--world-size", "2"), "written by one process")


def test_out_exists_then_overwrite(run, tmp_path):
    _tmp, data, out = run
    target = tmp_path / "i.json"
    args = [*EXPORT, "coco-instances", "--pred-dir", out, "--out", target, "--data-dir", data]
    assert invoke(*args).exit_code == 0
    first = target.read_bytes()
    refused(invoke(*args), f"--out {target} exists", "--overwrite")
    assert target.read_bytes() == first
    target.write_bytes(first.replace(b'"a.png"', b'"stale.png"'))
    assert invoke(*args, "--overwrite").exit_code == 0  # its own export: replaced
    assert target.read_bytes() == first
    assert len(json.loads(target.read_text())["images"]) == len(RELS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.json"]  # nothing temporary left


def snapshot(folder):
    """Every file under folder with its bytes (the user's data, to check nothing was lost)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["label-studio", "hf-dataset", "coco-instances"])
def test_overwrite_never_deletes_the_run_or_the_images(tmp_path, fmt):
    """Finding 1 of issue 23: an --out that holds the run and the images, with --overwrite,
    deleted them all (label-studio, hf-dataset) or replaced the folder by a file."""
    if fmt == "hf-dataset":
        pytest.importorskip(
            "datasets", reason="--format hf-dataset needs the optional datasets package")
    data, out = make_run(tmp_path)
    before = snapshot(tmp_path)
    result = invoke(*EXPORT, fmt, "--pred-dir", out, "--out", tmp_path, "--data-dir", data,
                    "--overwrite")
    refused(result, f"--out {tmp_path} holds --pred-dir", "new path")
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_what_ssa_did_not_write(run, tmp_path):
    _tmp, data, out = run
    user_file = tmp_path / "i.json"
    user_file.write_text('{"info": {"description": "mine"}}')
    user_dir = tmp_path / "ls"
    (user_dir / "notes").mkdir(parents=True)
    (user_dir / "notes" / "todo.txt").write_text("keep")
    for fmt, target in [("coco-instances", user_file), ("label-studio", user_dir)]:
        before = snapshot(tmp_path)
        refused(invoke(*EXPORT, fmt, "--pred-dir", out, "--out", target, "--data-dir", data,
                       "--overwrite"), "was not written by `ssa export`", "new path")
        assert snapshot(tmp_path) == before
    # a folder ssa exported is replaced, and marked as ssa's
    target = tmp_path / "ls2"
    args = [*EXPORT, "label-studio", "--pred-dir", out, "--out", target, "--data-dir", data]
    assert invoke(*args).exit_code == 0
    (target / "extra.txt").write_text("x")
    assert invoke(*args, "--overwrite").exit_code == 0
    assert (target / ".ssa-export.json").is_file() and not (target / "extra.txt").exists()


def test_export_inside_an_input_is_refused(run, tmp_path):
    _tmp, data, out = run
    refused(invoke(*EXPORT, "coco-instances", "--pred-dir", out, "--out", data / "i.json",
                   "--data-dir", data), "is inside --data-dir")
    refused(invoke(*EXPORT, "coco-instances", "--pred-dir", out, "--out", out / "i.json",
                   "--data-dir", data), "is inside --pred-dir")
    assert not (data / "i.json").exists() and not (out / "i.json").exists()


def test_out_through_a_symlink_is_the_real_folder(run, tmp_path):
    _tmp, data, out = run
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real_dir, target_is_directory=True)
    args = [*EXPORT, "label-studio", "--pred-dir", out, "--out", link, "--data-dir", data]
    refused(invoke(*args, "--overwrite"), "was not written by `ssa export`")  # empty user dir
    real_dir.rmdir()
    link.unlink()
    link.symlink_to(real_dir, target_is_directory=True)  # dangling: the export creates it
    assert invoke(*args).exit_code == 0, "first"
    assert link.is_symlink() and (real_dir / ".ssa-export.json").is_file()
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (real_dir / ".ssa-export.json").is_file()


def test_interrupted_export_leaves_no_result(run, tmp_path, monkeypatch):
    from ssa.export import coco_panoptic
    from ssa.export.base import staging_dir

    tmp, data, out = run
    target = tmp_path / "pan"
    staging_dir(target).mkdir()  # what a killed export leaves: removed by the next one
    (staging_dir(target) / "stale").write_text("x")
    calls = []

    def die(self, plan, image, staging):
        calls.append(image.item.rel)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, plan, image, staging)

    original = coco_panoptic.CocoPanoptic.write_image
    monkeypatch.setattr(coco_panoptic.CocoPanoptic, "write_image", die)
    from ssa.export import export

    things = things_file(tmp)
    with pytest.raises(KeyboardInterrupt):
        export("coco-panoptic", out, target, data_dir=data, things=things)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(coco_panoptic.CocoPanoptic, "write_image", original)
    staging_dir(target).mkdir()
    export("coco-panoptic", out, target, data_dir=data, things=things)
    assert (target / "annotations" / "panoptic_default.json").is_file()
    assert not staging_dir(target).exists()


def test_world_size_two_equals_one_process(run, tmp_path):
    """Two workers (gloo, CPU) write the parts of alternate images; rank 0 assembles them into
    the same file one process writes."""
    _tmp, data, out = run
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    base = [*EXPORT, "coco-instances", "--pred-dir", out, "--data-dir", data]
    assert invoke(*base, "--out", one).exit_code == 0
    result = invoke(*base, "--out", two, "--world-size", "2")
    assert result.exit_code == 0, result.output
    assert json.loads(two.read_text()) == json.loads(one.read_text())


def write_engine_run(tmp_path):
    """An `ssa engine` output folder written by EngineRun.write (no class_names, no label PNG),
    with the names ["red bus", "cat", "old tree"] dealt to the masks in turn; returns the image
    folder, the output folder, the names and each image's annotations."""
    from types import SimpleNamespace

    from ssa.engine.runner import EngineRun
    from ssa.io import decode_rle
    from ssa.run.outputs import output_paths

    data, masks_dir, _, _ = make_inputs(tmp_path)
    out = tmp_path / "engine"
    writer = EngineRun.__new__(EngineRun)  # the real writer, without loading its five models
    writer.plan = SimpleNamespace(outputs=SimpleNamespace(save_vis=False, out_dir=out), top_k=3)
    writer.model_ids = {"clip": "tiny"}
    names = ["red bus", "cat", "old tree"]
    expected = {}
    for rel in RELS:
        anns = json.loads((masks_dir / rel.parent / f"{rel.stem}.json").read_text())["annotations"]
        for k, ann in enumerate(anns):
            ann.update(class_name=names[k % 3], class_proposals=[names[k % 3]], caption="x")
        masks = np.stack([decode_rle(a["segmentation"]) for a in anns])
        image = np.zeros((*masks.shape[1:], 3), dtype=np.uint8)
        writer.write({"annotations": anns, "masks": masks}, output_paths(out, rel), image)
        expected[rel] = anns
    return data, out, names, expected


def test_engine_run_free_form_names(tmp_path):
    """An `ssa engine` output (written by EngineRun.write: no class_names, no label PNG): the
    class list is the sorted set of names (read back by pycocotools)."""
    from pycocotools.coco import COCO

    from ssa.export import export

    data, out, names, expected = write_engine_run(tmp_path)
    export("coco-instances", out, tmp_path / "i.json", data_dir=data)
    coco = COCO(str(tmp_path / "i.json"))
    assert [c["name"] for c in coco.dataset["categories"]] == sorted(names)
    assert len(coco.getAnnIds()) == sum(len(a) for a in expected.values())


def test_engine_run_free_form_names_hf_dataset(tmp_path):
    """The same engine output as an hf-dataset: the label map is the masks painted largest
    first (smaller masks win), classes the sorted set of names."""
    datasets = pytest.importorskip(
        "datasets", reason="--format hf-dataset needs the optional datasets package")
    from ssa.export import export
    from ssa.io import decode_rle

    data, out, names, expected = write_engine_run(tmp_path)
    export("hf-dataset", out, tmp_path / "hf", data_dir=data)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert ds.features["classes"].feature.names == sorted(names)
    anns = expected[RELS[0]]
    label = np.asarray(ds[0]["label"])
    order = sorted(range(len(anns)), key=lambda k: -anns[k]["area"])  # largest first
    ref = np.full(label.shape, 255)
    for k in order:
        ref[decode_rle(anns[k]["segmentation"])] = sorted(names).index(anns[k]["class_name"])
    np.testing.assert_array_equal(label, ref)


def test_limit_and_classes_file_order(run, tmp_path):
    """--limit takes the first images; --classes FILE sets the category order (id = line + 1)
    and every mask keeps its class by name."""
    from export_run import CLASSES, run_json

    _tmp, data, out = run
    order = tmp_path / "order.txt"
    order.write_text("\n".join(reversed(CLASSES)) + "\n")
    target = tmp_path / "i.json"
    result = invoke(*EXPORT, "coco-instances", "--pred-dir", out, "--out", target,
                    "--data-dir", data, "--limit", "2", "--classes", order)  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(target.read_text())
    assert [img["file_name"] for img in doc["images"]] == ["a.png", "sub/b.jpg"]
    assert [c["name"] for c in doc["categories"]] == list(reversed(CLASSES))
    names = {c["id"]: c["name"] for c in doc["categories"]}
    expected = [a["class_name"] for rel in RELS[:2] for a in run_json(out, rel)["annotations"]
                if a["class_name"] is not None]  # fmt: skip
    assert [names[a["category_id"]] for a in doc["annotations"]] == expected
