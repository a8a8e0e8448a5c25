"""Issue 23's findings 2, 3, 4, 7 and 11 on `ssa run`: one writer per out-dir (an OS lock), a
settings record that means the data (real paths, the image listing), an `--overwrite` that
finishes, out-dirs that keep clear of the inputs and of planted symlinks, and checks that come
before any model. Runs use saved masks and precomputed labels, so no model loads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from export_run import RELS, invoke, make_inputs

from ssa import io
from ssa.run.record import LOCK_FILE, RUN_SETTINGS


@pytest.fixture
def inputs(tmp_path):
    data, masks_dir, labels_dir, classes = make_inputs(tmp_path)
    return tmp_path, data, masks_dir, labels_dir, classes


def run_args(data, out, masks_dir, labels_dir, classes, *extra):
    return ["run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir, "--segmentor",
            f"labels:{labels_dir}", "--classes", classes, "--device", "cpu", *extra]


def one_line(result, code=2):
    """One `Error:` line: code 2 for a refusal while planning, 1 for the lock (at run time)."""
    assert result.exit_code == code, result.output
    text = " ".join(result.output.split())
    assert text.startswith("Error:") and "Traceback" not in text, text
    return text


def mtimes(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns
            for p in out.rglob("*_semantic.json")}


def test_a_second_run_on_a_locked_out_dir_exits_at_once(inputs):
    tmp, data, masks_dir, labels_dir, classes = inputs
    out = tmp / "out"
    with io.FolderLock(out / LOCK_FILE, "ssa run", "--out-dir"):
        start = time.perf_counter()
        text = one_line(invoke(*run_args(data, out, masks_dir, labels_dir, classes)), 1)
        assert time.perf_counter() - start < 5
    assert f"--out-dir {out} is in use by ssa run (pid {os.getpid()}" in text
    assert not list(out.rglob("*_semantic.json"))
    assert invoke(*run_args(data, out, masks_dir, labels_dir, classes)).exit_code == 0
    assert not (out / LOCK_FILE).exists()  # released and removed with the run


def test_a_killed_holder_never_leaves_a_lock_that_blocks(inputs):
    tmp, data, masks_dir, labels_dir, classes = inputs
    out = tmp / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import sys, time\nfrom ssa import io\n"
          f"lock = io.FolderLock({str(out / LOCK_FILE)!r}, 'ssa run', '--out-dir').__enter__()\n"
          "print('held', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert "is in use by ssa run" in one_line(
            invoke(*run_args(data, out, masks_dir, labels_dir, classes)), 1)
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        holder.kill()
    assert invoke(*run_args(data, out, masks_dir, labels_dir, classes)).exit_code == 0
    assert len(list(out.rglob("*_semantic.json"))) == len(RELS)


def test_an_export_holds_its_out_too(inputs):
    tmp, data, masks_dir, labels_dir, classes = inputs
    out = tmp / "out"
    assert invoke(*run_args(data, out, masks_dir, labels_dir, classes)).exit_code == 0
    target = tmp / "i.json"
    with io.FolderLock(tmp / ".ssa-lock-i.json", "ssa export", "--out"):
        text = one_line(invoke("export", "--format", "coco-instances", "--pred-dir", out,
                               "--out", target, "--data-dir", data), 1)
    assert "is in use by ssa export" in text and not target.exists()


def test_the_record_holds_real_paths_and_the_image_listing(inputs, monkeypatch):
    tmp, data, masks_dir, labels_dir, classes = inputs
    out = tmp / "out"
    monkeypatch.chdir(tmp)
    rel_args = run_args(Path("images"), Path("out"), Path("masks"), Path("labels"),
                        Path("classes.txt"))
    assert invoke(*rel_args).exit_code == 0
    record = json.loads((out / RUN_SETTINGS).read_text())
    assert record["data_dir"] == str(data.resolve())
    assert record["settings"]["masks"] == f"json:{masks_dir.resolve()}"
    assert record["settings"]["classes"] == str(classes.resolve())
    assert record["images"]["count"] == len(RELS)
    assert record["images"]["sizes"]["a.png"] == (data / "a.png").stat().st_size
    before = mtimes(out)
    # the same data named absolute: the same run (nothing redone)
    result = invoke(*run_args(data, out, masks_dir, labels_dir, classes))
    assert result.exit_code == 0, result.output
    assert mtimes(out) == before
    # other data behind the same relative path, from another folder: refused
    other = tmp / "elsewhere"
    other.mkdir()
    make_inputs(other, seed=9)
    monkeypatch.chdir(other)
    text = one_line(invoke(*run_args(Path("images"), out, Path("masks"), Path("labels"),
                                     Path("classes.txt"))))
    assert "holds a run with other settings" in text and "data_dir" in text
    # an image whose bytes changed under the same name: refused too
    monkeypatch.chdir(tmp)
    (data / "a.png").write_bytes((data / "sub" / "c.png").read_bytes())
    text = one_line(invoke(*rel_args))
    assert "images changed since: a.png" in text
    assert mtimes(out) == before


def test_unknown_knobs_are_refused_for_saved_masks(inputs):
    tmp, data, masks_dir, labels_dir, classes = inputs
    text = one_line(invoke(*run_args(data, tmp / "out", masks_dir, labels_dir, classes,
                                     "--amg", "points_per_side=8")))
    assert "take no --amg knobs" in text and not (tmp / "out").exists()


def test_an_overwrite_with_a_limit_is_finished_by_the_next_run(inputs):
    tmp, data, masks_dir, labels_dir, classes = inputs
    out = tmp / "out"
    args = run_args(data, out, masks_dir, labels_dir, classes)
    assert invoke(*args).exit_code == 0
    old = mtimes(out)
    result = invoke(*args, "--overwrite", "--limit", "1", "--top-k", "2")
    assert result.exit_code == 0, result.output
    record = json.loads((out / RUN_SETTINGS).read_text())
    assert record["overwrite_since"] and record["settings"]["top_k"] == 2
    # the old settings are refused: the folder holds an unfinished overwrite
    text = one_line(invoke(*args))
    assert "unfinished --overwrite" in text and "top_k 2 -> 3" in text
    # the new settings, without --overwrite: images 2 and 3 are redone, not "nothing to do"
    result = invoke(*args, "--top-k", "2")
    assert result.exit_code == 0, result.output
    new = mtimes(out)
    assert all(new[k] > old[k] for k in old)
    record = json.loads((out / RUN_SETTINGS).read_text())
    assert "overwrite_since" not in record
    for rel in RELS:
        doc = json.loads((out / rel.parent / f"{rel.stem}_semantic.json").read_text())
        assert all(len(a["class_proposals"]) <= 2 for a in doc["annotations"])
    again = mtimes(out)
    assert invoke(*args, "--top-k", "2").exit_code == 0
    assert mtimes(out) == again  # finished: now a plain resume


def test_out_dir_symlink_and_planted_links(inputs):
    tmp, data, masks_dir, labels_dir, classes = inputs
    real_out = tmp / "real_out"
    real_out.mkdir()
    link = tmp / "link_out"
    link.symlink_to(real_out, target_is_directory=True)
    assert invoke(*run_args(data, link, masks_dir, labels_dir, classes)).exit_code == 0
    assert (real_out / "a_semantic.json").is_file() and link.is_symlink()
    # a folder symlink planted inside an out-dir is never written through
    out = tmp / "out"
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "sub").symlink_to(elsewhere, target_is_directory=True)
    result = invoke(*run_args(data, out, masks_dir, labels_dir, classes))
    assert result.exit_code == 1
    assert "is a symlink inside --out-dir" in " ".join(result.output.split())
    assert list(elsewhere.iterdir()) == []
    assert (out / "a_semantic.json").is_file()


def test_out_dirs_that_overlap_the_inputs_are_refused(inputs):
    tmp, data, masks_dir, labels_dir, classes = inputs
    before = sorted(p.as_posix() for p in tmp.rglob("*"))
    for out, phrase in [(data / "out", "is inside --data-dir"), (tmp, "holds --data-dir"),
                        (masks_dir, "holds --masks"), (labels_dir / "o", "inside --segmentor")]:
        text = one_line(invoke(*run_args(data, out, masks_dir, labels_dir, classes)))
        assert phrase in text, text
    assert sorted(p.as_posix() for p in tmp.rglob("*")) == before
    # a folder of someone else's outputs, with no record of ssa's, is not replaced
    foreign = tmp / "foreign"
    foreign.mkdir()
    (foreign / "a_semantic.json").write_text('{"mine": true}')
    text = one_line(invoke(*run_args(data, foreign, masks_dir, labels_dir, classes,
                                     "--overwrite")))
    assert "ssa did not write them" in text
    assert (foreign / "a_semantic.json").read_text() == '{"mine": true}'


def test_bad_values_are_refused_before_any_model_and_once(inputs):
    tmp, data, *_ = inputs
    args = ["run", "--data-dir", data, "--out-dir", tmp / "out", "--segmentor",
            "hf:/nonexistent/model", "--device", "cpu", "--max-pixels", "0"]
    start = time.perf_counter()
    text = one_line(invoke(*args))
    assert "--max-pixels 0" in text and time.perf_counter() - start < 5
    proc = subprocess.run([sys.executable, "-m", "ssa", *map(str, args), "--world-size", "2"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert (proc.stdout + proc.stderr).count("--max-pixels 0") == 1, proc.stdout + proc.stderr
