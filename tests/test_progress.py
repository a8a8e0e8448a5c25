"""What a long run shows: the count after each image (an image counts once its JSON is
written), rate and ETA from the images of this run, and plain log lines off a terminal.

References: hand-worked counts, rates and times on a fake clock; the files on disk at the
moment each count arrives; the lines a real `ssa run` subprocess writes to a pipe.
"""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from rich.console import Console
from test_plugins_run import RELS, hand_made  # noqa: F401 - the fixture

from ssa.cli.progress import Meter, format_duration, format_rate, no_masks_hint, run_with_progress
from ssa.run.outputs import ImageResult, output_paths
from ssa.run.runner import RunSummary

ROOT = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_meter_counts_rate_and_eta_on_a_fake_clock():
    clock = FakeClock()
    meter = Meter(total=4, clock=clock)  # 4 images to do; the skipped ones are not in total
    assert meter.rate() == "- img/s" and meter.eta() is None
    assert meter.line().endswith("ETA -:--:--")
    clock.now += 81.0  # the first image took 81 s
    meter.count = 1
    assert meter.rate() == "81.0 s/img"  # slower than 1 img/s: seconds per image
    assert meter.eta() == pytest.approx(3 * 81.0)
    assert meter.line() == "label 1/4 images, 81.0 s/img, 0:01:21 elapsed, ETA 0:04:03"
    clock.now += 55.0
    meter.count = 2
    assert meter.eta() == pytest.approx(2 * 68.0)  # (81 + 55) / 2 per image
    assert format_rate(10, 4.0) == "2.50 img/s" and format_rate(1, 1.0) == "1.00 img/s"
    assert format_duration(3725.4) == "1:02:05"


def test_count_arrives_when_the_json_is_written_not_one_image_later(tmp_path):
    """The loop labels image k+1 only after image k was counted: with the old one-behind
    count, labelling image 2 would wait for a count that comes after it (timeout)."""
    from conftest import make_image

    from ssa.run.prefetch import process_overlapped
    from ssa.run.runner import dataset_loop

    rels = [Path("a.png"), Path("b.png"), Path("c.png")]
    for rel in rels:
        make_image(tmp_path / "in" / rel, width=16, height=8)
    out = tmp_path / "out"
    counted: list[Path] = []
    seen_at_count: list[bool] = []
    arrived = {rel: threading.Event() for rel in rels}

    class Labeller:
        def label(self, image, rel=None):
            index = rels.index(Path(rel))
            if index:  # the previous image is counted while this one is being labelled
                assert arrived[rels[index - 1]].wait(10), f"{rels[index - 1]} not counted yet"
            return {"records": [1]}

        def write(self, out_, paths, image):
            paths["semantic"].parent.mkdir(parents=True, exist_ok=True)
            paths["semantic"].write_text("{}")
            return 1

    def on_image(result: ImageResult) -> None:
        seen_at_count.append(output_paths(out, result.rel)["semantic"].is_file())
        counted.append(result.rel)
        arrived[result.rel].set()

    def make_worker():
        return lambda mine, on_result: process_overlapped(Labeller(), tmp_path / "in", mine, out,
                                                          on_result)

    summary = dataset_loop(out, rels, make_worker, on_image=on_image)
    assert counted == rels and all(seen_at_count)
    assert summary.done == 3 and not summary.failed


def fake_runner(delays: list[float], skipped: int = 1):
    """A runner with `run`'s signature: `len(delays) + skipped` images, `skipped` done."""
    import time

    def runner(cfg, on_start, on_image, download_progress, group=None):
        total = len(delays) + skipped
        on_start(total, skipped, len(delays))
        for k, delay in enumerate(delays):
            time.sleep(delay)
            status = "failed" if k == 1 else "done"
            on_image(ImageResult(Path(f"img{k}.png"), status, stage="label" if k == 1 else None,
                                 error="boom" if k == 1 else None))
        return RunSummary(total=total, done=len(delays) - 1, skipped=skipped,
                          failed=[ImageResult(Path("img1.png"), "failed", stage="label",
                                              error="boom")],
                          seconds=sum(delays), num_masks=5)

    return runner


class Cfg:
    """What `run_rank` reads of a plan (`ssa.plan.RunPlan`)."""

    class outputs:
        out_dir = Path("out")

    device = "cpu"
    evaluate = False

    def on_device(self, device: str) -> Cfg:
        return self


def test_not_a_terminal_logs_plain_progress_lines(caplog):
    console = Console(file=io.StringIO())  # not a terminal: no bar, log lines
    assert not console.is_terminal
    with caplog.at_level(logging.INFO, logger="ssa"):
        run_with_progress(Cfg(), console, runner=fake_runner([0.0, 0.0, 0.35]), log_every=0.1)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("ssa")]
    assert "1 of 4 images already done; skipping them" in lines
    assert "3 images to label" in lines
    assert "failed img1.png (label): boom" in lines
    periodic = [m for m in lines if re.fullmatch(
        r"label \d/3 images, .+, \d:\d\d:\d\d elapsed, ETA .+", m)]
    assert len(periodic) >= 2, lines  # at least one tick while the last image ran, and the end
    assert periodic[-1].startswith("label 3/3 images")
    summary = next(m for m in lines if m.startswith("done:"))
    assert "2 labelled, 1 skipped (already done), 1 failed of 4 images; 5 masks" in summary
    assert console.file.getvalue() == ""  # nothing bypassed logging


def test_log_lines_of_a_real_run_through_a_pipe(hand_made, tmp_path):  # noqa: F811
    """`ssa run` with stderr a pipe: plain lines with time, level and rank, one per record,
    unwrapped; a rerun says nothing to do and imports no model library."""
    data, masks_dir, labels_dir, classes, _ = hand_made
    out = tmp_path / "out"
    args = ["run", "--data-dir", str(data), "--out-dir", str(out), "--masks", str(masks_dir),
            "--segmentor", f"labels:{labels_dir}", "--classes", str(classes), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SSA_LOG_EVERY": "0.05", "COLUMNS": "40"}
    proc = subprocess.run([sys.executable, "-m", "ssa", *args], check=False,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO \[rank 0\] "
    lines = proc.stderr.splitlines()
    assert any(re.fullmatch(stamp + rf"label {len(RELS)}/{len(RELS)} images, .+ ETA 0:00:00", line)
               for line in lines), proc.stderr
    done = [line for line in lines if re.match(stamp + "done: ", line)]
    assert len(done) == 1 and str(out) in done[0], proc.stderr  # one line, though COLUMNS=40

    code = ("import sys\nfrom ssa.cli import app\ntry:\n    app(sys.argv[1:])\n"
            "except SystemExit as e:\n    code = e.code\n"
            "heavy = [m for m in ('torch', 'transformers', 'segment_anything')\n"
            "         if m in sys.modules]\n"
            "print('EXIT', code, 'HEAVY', heavy)\n")
    again = subprocess.run([sys.executable, "-c", code, *args], check=False,
                           capture_output=True, text=True, env=env, timeout=60)
    assert f"nothing to do: {len(RELS)} of {len(RELS)} images already done" in again.stderr
    assert "EXIT 0 HEAVY []" in again.stdout, again.stdout + again.stderr


def test_no_masks_hint_names_the_filter():
    hint = no_masks_hint({"candidates": 192, "pred_iou_thresh": 150, "stability_score_thresh": 40,
                          "crop edge": 0, "box_nms_thresh": 2})
    assert hint == ("no image got a mask: of 192 candidates, pred_iou_thresh removed 150, "
                    "stability_score_thresh 40, box_nms_thresh 2; for random or untrained "
                    "weights, --amg-preset keep-all keeps every candidate (pred_iou_thresh=0.0, "
                    "stability_score_thresh=0.0, box_nms_thresh=1.0)")
    assert "check the mask source" in no_masks_hint({})


def test_off_a_terminal_transformers_loading_bars_stay_out_of_the_log(segformer_5):
    """The same load writes tqdm's "Loading weights" bar to stderr before the set-up, and
    none after it (stderr here is a pipe, as in a SLURM job)."""
    code = (
        "import sys\n"
        "from rich.console import Console\n"
        "from transformers import AutoModelForSemanticSegmentation as M\n"
        "from ssa.cli.progress import configure_logging\n"
        "M.from_pretrained(sys.argv[1])\n"
        "print('=== configured', file=sys.stderr, flush=True)\n"
        "configure_logging(Console(stderr=True))\n"
        "M.from_pretrained(sys.argv[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    proc = subprocess.run([sys.executable, "-c", code, str(segformer_5)], check=False,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before, after = proc.stderr.split("=== configured")
    assert "Loading weights" in before  # the library's bar, so the check can fail
    assert "Loading weights" not in after, after
