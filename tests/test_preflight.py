"""Errors before anything heavy, hints that work, stale files, the recorded settings, an
unreachable hub, and why a run found no masks.

References: `sys.modules` of a fresh interpreter (no model library imported), the files on
disk, pycocotools-free hand-made datasets (`test_plugins_run.hand_made`), segment-anything's
own generator for the filter counts, a local HTTP server for a reachable hub.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_plugins_run import RELS, hand_made, invoke  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI once per argument list in one interpreter: exit code, seconds, first line.
PROBE = """
import json, sys, time, io, contextlib
from ssa.cli.commands import app
out = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stderr(err):
        try:
            app(args)
            code = 0
        except SystemExit as e:
            code = e.code
    out.append([code, time.perf_counter() - start, err.getvalue().strip()])
heavy = [m for m in ("torch", "transformers", "segment_anything") if m in sys.modules]
print(json.dumps({"runs": out, "heavy": heavy}))
"""


def labels_run(data, masks_dir, labels_dir, classes, out, *extra):
    return ["run", "--data-dir", str(data), "--out-dir", str(out), "--masks", str(masks_dir),
            "--segmentor", f"labels:{labels_dir}", "--classes", str(classes), "--device", "cpu",
            *map(str, extra)]


def test_usage_errors_come_before_any_model_library(hand_made, tmp_path):  # noqa: F811
    data, masks_dir, labels_dir, classes, _ = hand_made
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("no_such_key: 1\n")
    out = tmp_path / "out"
    (out).mkdir()
    (out / "ssa_run.json").write_text(json.dumps({"settings": {"top_k": 5, "vote": "hard"}}))
    (out / "x_semantic.json").write_text("{}")  # it holds outputs: settings may not mix
    cases = [
        (["run", "--dataset", "ade20k", "--out-dir", str(out)], "--data-dir is required"),
        (labels_run(data, masks_dir, labels_dir, classes, a_file), "(it is a file)"),
        (["run", "--data-dir", str(tmp_path / "nowhere"), "--out-dir", str(out)],
         "is not a folder"),
        (["run", "--config", str(bad_yaml)], "unknown key 'no_such_key'"),
        (["run", "--data-dir", str(data), "--out-dir", str(tmp_path / "o2"), "--masks",
          f"sam:vit_b:{tmp_path / 'missing.pth'}"], "missing.pth does not exist"),
        (labels_run(data, masks_dir, labels_dir, classes, out), "(top_k 5 -> 3)"),
        (["run", "--data-dir", str(data), "--out-dir", str(tmp_path / "o3"), "--vote", "x"],
         "unknown --vote 'x'"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps([args for args, _ in cases])],
        check=False, capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["heavy"] == []  # torch, transformers, segment-anything: none imported
    for (code, seconds, message), (_, expected) in zip(got["runs"], cases):
        assert code == 2 and expected in message, message
        assert len(message.splitlines()) == 1, message
        assert seconds < 2.0, (seconds, message)  # well under a second on a quiet machine


def test_overwrite_removes_stale_branch_and_overlay(hand_made, tmp_path):  # noqa: F811
    data, masks_dir, labels_dir, classes, _ = hand_made
    out = tmp_path / "out"
    first = invoke(*labels_run(data, masks_dir, labels_dir, classes, out, "--save-branch",
                               "--save-vis"))
    assert first.exit_code == 0, first.output
    stale = [out / r.parent / f"{r.stem}{s}" for r in RELS for s in ("_branch.png", "_vis.jpg")]
    assert all(p.is_file() for p in stale)
    again = invoke(*labels_run(data, masks_dir, labels_dir, classes, out, "--overwrite"))
    assert again.exit_code == 0, again.output
    assert not [p for p in stale if p.exists()]
    assert all((out / r.parent / f"{r.stem}_semantic.json").is_file() for r in RELS)


def test_other_settings_refused_unless_overwrite(hand_made, tmp_path):  # noqa: F811
    data, masks_dir, labels_dir, classes, _ = hand_made
    out = tmp_path / "out"
    base = labels_run(data, masks_dir, labels_dir, classes, out, "--limit", "1")
    assert invoke(*base).exit_code == 0
    recorded = json.loads((out / "ssa_run.json").read_text())["settings"]
    assert recorded["vote"] == "hard" and recorded["top_k"] == 3
    assert recorded["masks"] == f"json:{masks_dir}"
    other = invoke(*labels_run(data, masks_dir, labels_dir, classes, out, "--top-k", "2",
                               "--min-vote-share", "0.5"))
    assert other.exit_code == 2
    line = other.output.strip()
    assert "top_k 3 -> 2" in line and "min_vote_share 0.0 -> 0.5" in line and "--overwrite" in line
    assert len(line.splitlines()) == 1
    later = sorted(RELS, key=lambda r: r.as_posix())[1]  # --limit 1 did the first only
    assert not (out / later.parent / f"{later.stem}_semantic.json").exists()
    redo = invoke(*labels_run(data, masks_dir, labels_dir, classes, out, "--top-k", "2",
                              "--overwrite"))
    assert redo.exit_code == 0, redo.output
    assert json.loads((out / "ssa_run.json").read_text())["settings"]["top_k"] == 2
    # Same settings again: a resume, not a refusal (image 2 was done by the redo).
    assert invoke(*labels_run(data, masks_dir, labels_dir, classes, out, "--top-k", "2"))\
        .exit_code == 0


def test_nothing_to_do_loads_no_model(hand_made, tmp_path, monkeypatch):  # noqa: F811
    data, masks_dir, labels_dir, classes, _ = hand_made
    out = tmp_path / "out"
    args = labels_run(data, masks_dir, labels_dir, classes, out)
    assert invoke(*args).exit_code == 0
    import ssa.run.labeller

    def refuse(*a, **k):
        raise AssertionError("models loaded although every image is done")

    monkeypatch.setattr(ssa.run.labeller, "build_labeller", refuse)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert f"nothing to do: {len(RELS)} of {len(RELS)} images already done" in again.output
    # The library path says so too (ranks under torchrun skip the CLI's shortcut).
    from ssa.config import build_config
    from ssa.plan import plan_run
    from ssa.run.runner import label_dataset

    cfg = build_config({}, {"data_dir": data, "out_dir": out, "masks": str(masks_dir),
                            "segmentor": f"labels:{labels_dir}", "classes": classes,
                            "device": "cpu"})
    summary = label_dataset(plan_run(cfg))
    assert summary.skipped == len(RELS) and summary.done == 0


def test_run_eval_scores_the_branch_where_it_exists(hand_made, tmp_path):  # noqa: F811
    """Image 1 done without --save-branch, image 2 with it: `ssa run --save-branch --eval`
    scores the branch over image 2 only, says so, and the branch mIoU is that of image 2's
    label PNG against its ground truth (computed here by hand)."""
    data, masks_dir, labels_dir, classes, truth = hand_made
    gt_dir = tmp_path / "gt"
    rng = np.random.default_rng(1)
    gts = {}
    for rel in RELS:
        labels = truth[rel][1]
        gt = np.where(rng.random(labels.shape) < 0.3, rng.integers(0, 4, labels.shape), labels)
        gt = np.where(labels == 255, 255, gt).astype(np.uint8)
        (gt_dir / rel.parent).mkdir(parents=True, exist_ok=True)
        Image.fromarray(gt).save(gt_dir / rel.parent / f"{rel.stem}.png")
        gts[rel] = gt
    out = tmp_path / "out"
    first = min(RELS, key=lambda r: r.as_posix())  # what --limit 1 labels
    assert invoke(*labels_run(data, masks_dir, labels_dir, classes, out, "--limit", "1"))\
        .exit_code == 0
    result = invoke(*labels_run(data, masks_dir, labels_dir, classes, out, "--save-branch",
                                "--eval", "--gt-dir", gt_dir))
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the report is wrapped to the console's width
    assert "1 of 2 images were labelled without --save-branch" in said
    assert "over the 1 of 2 images with a branch map" in said
    report = json.loads((out / "eval.json").read_text())
    (second,) = [r for r in RELS if r != first]
    pred = np.asarray(Image.open(labels_dir / second.parent / f"{second.stem}.png"))
    gt = gts[second]
    ious = []
    for c in range(4):
        valid = gt != 255
        inter = np.sum((pred == c) & (gt == c) & valid)
        union = np.sum(((pred == c) | (gt == c)) & valid)
        if union:
            ious.append(inter / union)
    assert report["branch"]["miou"] == pytest.approx(100 * np.mean(ious), abs=1e-6)


class _Head:
    def __enter__(self):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self):
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        self.server.shutdown()


def test_unreachable_hub_goes_offline_once(monkeypatch, caplog, tmp_path):
    import socket

    from huggingface_hub import constants

    from ssa import hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # recorded, so the test's own setting is undone
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_hub_checked", [])
    with socket.socket() as sock:  # a port nobody listens on: refused at once
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    assert hub.go_offline_if_hub_unreachable(str(tmp_path)) is False  # a folder: no request
    assert hub.go_offline_if_hub_unreachable(str(tmp_path / "missing")) is False  # a path too
    assert "HF_HUB_OFFLINE" not in os.environ
    with _Head() as endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        assert hub.go_offline_if_hub_unreachable("org/model") is False  # it answers
    assert "HF_HUB_OFFLINE" not in os.environ
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    start = time.perf_counter()
    with caplog.at_level("WARNING"):
        assert hub.go_offline_if_hub_unreachable("org/model") is True
        assert hub.offline_kwargs("org/other") == {"local_files_only": True}
    assert time.perf_counter() - start < hub.HUB_TIMEOUT_S + 1
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
    lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(lines) == 1 and closed in lines[0]  # once per process, one line


def test_filter_drop_counts_match_the_stock_generator(sam_checkpoint):
    """What the fast generator says `pred_iou_thresh` dropped = the candidates minus what
    segment-anything's own generator keeps with only that filter on; every candidate is kept
    or dropped by exactly one filter."""
    from segment_anything import SamAutomaticMaskGenerator

    from ssa.masks.fast_amg import FastMaskGenerator
    from ssa.masks.sam import load_sam

    sam = load_sam("vit_b", sam_checkpoint)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    only_iou = {"pred_iou_thresh": 0.3, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0,
                "points_per_side": 4}
    fast = FastMaskGenerator(sam, **dict(only_iou, stability_score_thresh=0.6), sdpa=True)
    records = fast.generate(image)
    stats = fast.stats
    assert stats.candidates == 4 * 4 * 3  # three masks per point
    assert stats.candidates - sum(stats.dropped.values()) == len(records)
    assert set(stats.dropped) >= {"pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"}
    stock = SamAutomaticMaskGenerator(sam, **only_iou).generate(image)
    assert stats.dropped["pred_iou_thresh"] == stats.candidates - len(stock)


def test_a_run_without_masks_says_which_filter_removed_them(hand_made, sam_checkpoint,  # noqa: F811
                                                           tmp_path):
    """Random SAM weights and the library's thresholds: no mask survives, and the summary
    counts the 4 x 4 x 3 candidates, names the filters that removed them and the preset that
    keeps them."""
    data, _, labels_dir, classes, _ = hand_made
    result = invoke("run", "--data-dir", data, "--out-dir", tmp_path / "out", "--masks",
                    f"sam:vit_b:{sam_checkpoint}", "--segmentor", f"labels:{labels_dir}",
                    "--classes", classes, "--device", "cpu", "--limit", "1",
                    "--amg", "points_per_side=4", "--amg-preset", "default")
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "0 masks" in said
    assert "no image got a mask: of 48 candidates, pred_iou_thresh removed" in said
    assert "--amg-preset keep-all keeps every candidate" in said
