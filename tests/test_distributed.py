"""Sharding, resume and failure isolation; `--world-size 2` and torchrun against one process.

The end-to-end tests run `python -m ssa run` in subprocesses on CPU (gloo) with a tiny random
SAM (256 px input) and Segformer, on tiny images: their time is mostly Python start-up.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import KEEP_ALL, make_image

from ssa import io
from ssa.distributed import RankInfo, rank_info_from_env, shard, shard_indices
from ssa.errors import SSAError
from ssa.run.labeller import process_image
from ssa.run.outputs import (
    FAILURES_FILE,
    ImageResult,
    output_paths,
    read_failures,
    write_failures,
)

REPO = Path(__file__).resolve().parents[1]
NAMES = ["im0.png", "sub/im1.png", "im2.png", "sub/deeper/im3.png", "im4.png", "im5.png"]


# --- sharding and rank info --------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_items", "world_size", "expected"),
    [
        (10, 3, [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]),
        (7, 2, [[0, 2, 4, 6], [1, 3, 5]]),
        (2, 4, [[0], [1], [], []]),
        (0, 2, [[], []]),
        (5, 1, [[0, 1, 2, 3, 4]]),
        (8, 4, [[0, 4], [1, 5], [2, 6], [3, 7]]),
    ],
)
def test_shard_exact_ranges(num_items: int, world_size: int, expected: list[list[int]]) -> None:
    shares = [list(shard_indices(num_items, r, world_size)) for r in range(world_size)]
    assert shares == expected
    flat = sorted(i for share in shares for i in share)
    assert flat == list(range(num_items))  # disjoint, complete, no padding
    items = [f"img{i}" for i in range(num_items)]
    assert [shard(items, r, world_size) for r in range(world_size)] == [
        [items[i] for i in share] for share in expected
    ]


@pytest.mark.parametrize(("rank", "world_size"), [(2, 2), (-1, 2), (0, 0)])
def test_shard_refuses_bad_ranks(rank: int, world_size: int) -> None:
    with pytest.raises(SSAError):
        shard_indices(5, rank, world_size)


def test_rank_info_from_env() -> None:
    assert rank_info_from_env({}) is None
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert rank_info_from_env(env) == RankInfo(rank=3, world_size=4, local_rank=1)
    assert rank_info_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == RankInfo(1, 2, 1)
    for bad in ({"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}):
        with pytest.raises(SSAError):
            rank_info_from_env(bad)


# --- failure isolation and failures.jsonl, in process --------------------------------------


class _FakeLabeller:
    """Writes a fixed output; raises the given exception on the images named in `fail`."""

    def __init__(self, fail: dict[str, BaseException]) -> None:
        self.fail = fail

    def label(self, image: np.ndarray, rel: Path | None = None) -> dict:
        key = f"{image.shape[1]}x{image.shape[0]}"
        if key in self.fail:
            raise self.fail[key]
        return {"records": [], "shape": image.shape}

    def write(self, out: dict, paths: dict, image: np.ndarray) -> int:
        io.write_label_png(paths["label"], np.zeros(image.shape[:2], np.uint8), 5)
        io.write_json(paths["semantic"], {"annotations": []})
        return 0


def test_cuda_oom_and_errors_fail_one_image_only(tmp_path: Path) -> None:
    root, out = tmp_path / "in", tmp_path / "out"
    for i, width in enumerate((40, 50, 60)):
        make_image(root / f"im{i}.png", width=width, height=30, seed=i)
    labeller = _FakeLabeller(
        {"40x30": torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20 GiB"),
         "50x30": KeyError("a bug one image triggers")}
    )
    results = [process_image(labeller, root, Path(f"im{i}.png"), out) for i in range(3)]
    assert [r.status for r in results] == ["failed", "failed", "done"]
    assert results[0].stage == "label" and "CUDA out of memory" in results[0].error
    assert results[1].error.startswith("KeyError")
    assert (out / "im2_semantic.json").is_file() and not (out / "im0_semantic.json").exists()


def test_write_failures_replaces_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / FAILURES_FILE).write_text('{"path": "old.png", "stage": "read", "error": "x"}\n{"pa')
    assert read_failures(out) == [{"path": "old.png", "stage": "read", "error": "x"}]
    failed = [ImageResult(Path(p), "failed", stage="read", error=p) for p in ("b.png", "a/c.png")]
    write_failures(out, failed)
    assert read_failures(out) == [
        {"path": "a/c.png", "stage": "read", "error": "a/c.png"},
        {"path": "b.png", "stage": "read", "error": "b.png"},
    ]
    write_failures(out, [])
    assert not (out / FAILURES_FILE).exists()  # nothing failed: no stale report


def test_remove_temp_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/.ssa-tmp-x.png", "a/b/.ssa-tmp-y.json", "a/keep.png", "a/b/keep.json"):
        (tmp_path / name).write_text("x")
    assert io.remove_temp_files(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["keep.json", "keep.png"]


# --- end to end, in subprocesses -----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> Path:
    """A SAM far smaller than conftest's: 256 px input, so an image takes a fraction of a second."""
    from ssa.masks import EncoderConfig, build_sam_from_config

    torch.manual_seed(0)
    model = build_sam_from_config(
        EncoderConfig(16, 1, 1, (0,), window_size=4, image_size=256, out_chans=32)
    )
    path = tmp_path_factory.mktemp("sam") / "sam256.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    for i, name in enumerate(NAMES):
        make_image(root / name, width=48 + 8 * i, height=40 + 4 * (i % 3), seed=i)
    return root


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory, images: Path) -> Path:
    """Random class-index PNGs (5 classes, some 255 = ignore) for `--eval --gt-dir`."""
    from PIL import Image

    root = tmp_path_factory.mktemp("gt")
    rng = np.random.default_rng(7)
    for name in NAMES:
        with Image.open(images / name) as img:
            width, height = img.size
        labels = rng.integers(0, 5, (height, width)).astype(np.uint8)
        labels[rng.random((height, width)) < 0.1] = 255
        path = (root / name).with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(labels).save(path)
    return root


def assert_eval_counts_every_image_once(out: Path, gt_root: Path) -> None:
    """eval.json (voted and branch maps) against confusion counts made here with numpy."""
    report = json.loads((out / "eval.json").read_text())
    for kind, scores in (("label", report), ("branch", report["branch"])):
        assert scores["num_images"] == len(NAMES)
        inter, pred_area, gt_area = np.zeros(5), np.zeros(5), np.zeros(5)
        correct = labelled = 0
        for name in NAMES:
            gt = io.read_label_png((gt_root / name).with_suffix(".png"))
            pred = io.read_label_png(output_paths(out, Path(name))[kind])
            valid = gt != 255
            for c in range(5):
                inter[c] += np.sum((pred == c) & (gt == c))
                pred_area[c] += np.sum((pred == c) & valid)
                gt_area[c] += np.sum(gt == c)
            correct += int(np.sum((pred == gt) & valid))
            labelled += int(valid.sum())
        union = pred_area + gt_area - inter
        iou = [100 * i / u for i, u in zip(inter, union) if u > 0]
        assert scores["miou"] == pytest.approx(np.mean(iou)), kind
        assert scores["aacc"] == pytest.approx(100 * correct / labelled), kind


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    # One thread per process everywhere, so one process and N workers compute the same bits.
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return env


def _run_args(data: Path, out: Path, sam: Path, segformer: Path) -> list[str]:
    args = ["run", "--data-dir", str(data), "--out-dir", str(out), "--device", "cpu",
            "--segmentor", f"hf:{segformer}", "--sam-model", "vit_b", "--sam-checkpoint", str(sam),
            "--amg", "points_per_side=2", "--save-branch"]
    for key, value in KEEP_ALL.items():
        args += ["--amg", f"{key}={value}"]
    return args


GATED = """
import time
from pathlib import Path

from ssa.specs.segmentors import load_segmentor


class Gated:
    \"\"\"The hf: segmentor; every image but im0.png waits until the gate file exists, so a
    run is caught in the middle however fast or slow the machine is.\"\"\"

    def __init__(self, inner, gate):
        self.inner, self.gate = inner, Path(gate)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, image, *, path=None):
        while Path(path).name != "im0.png" and not self.gate.exists():
            time.sleep(0.02)
        return self.inner(image)


def make(device="cpu", model="", gate=""):
    return Gated(load_segmentor("hf:" + model, device=device), gate)
"""


def _gated_args(
    tmp_path: Path, data: Path, out: Path, sam: Path, segformer: Path
) -> tuple[list[str], Path]:
    """`--world-size 2` run arguments whose segmentor holds every image but im0 until the
    returned gate file is created: when im0's JSON exists, the run is exactly one image in."""
    plugin = tmp_path / "gated.py"
    plugin.write_text(GATED)
    gate = tmp_path / "gate"
    args = _run_args(data, out, sam, segformer)
    at = args.index("--segmentor")
    args[at + 1: at + 2] = [f"py:{plugin}:make", "--segmentor-arg", f"model={segformer}",
                            "--segmentor-arg", f"gate={gate}"]
    return [*args, "--world-size", "2"], gate


def _ssa(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(launcher or []), "-m", "ssa", *args]
    return subprocess.run(
        cmd, env=_env(), capture_output=True, text=True, timeout=600, check=False
    )


def _files(out: Path) -> dict[str, Path]:
    """The run's outputs (its settings record apart: the gated runs use another segmentor)."""
    from ssa.run.record import RUN_SETTINGS

    return {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != RUN_SETTINGS}


def assert_same_outputs(out: Path, reference: Path, written_only: bool = False) -> None:
    """Same file names (or, `written_only`, those written so far); JSON contents equal; PNG
    pixels equal."""
    got, want = _files(out), _files(reference)
    if written_only:
        want = {name: want[name] for name in got}
    assert sorted(got) == sorted(want)
    for name, path in want.items():
        if name.endswith(".json"):
            assert json.loads(got[name].read_text()) == json.loads(path.read_text()), name
        elif name.endswith(".png"):
            np.testing.assert_array_equal(io.read_label_png(got[name]), io.read_label_png(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images: Path, tiny_sam: Path, segformer_5: Path) -> Path:
    """One process, the whole folder."""
    out = tmp_path_factory.mktemp("reference")
    proc = _ssa(_run_args(images, out, tiny_sam, segformer_5))
    assert proc.returncode == 0, proc.stderr
    assert len(list(out.rglob("*_semantic.json"))) == len(NAMES)
    return out


def test_world_size_2_matches_one_process(
    tmp_path: Path, images: Path, tiny_sam: Path, segformer_5: Path, reference: Path,
    ground_truth: Path,
) -> None:
    out = tmp_path / "out"
    evaluate = ["--eval", "--gt-dir", str(ground_truth)]
    proc = _ssa([*_run_args(images, out, tiny_sam, segformer_5), "--world-size", "2", *evaluate])
    assert proc.returncode == 0, proc.stderr
    assert_eval_counts_every_image_once(out, ground_truth)
    (out / "eval.json").unlink()
    assert_same_outputs(out, reference)
    assert "[rank 1/2] 3 images to label" in proc.stderr  # exact disjoint shares: 3 + 3
    assert "6 labelled" in proc.stderr
    # A rerun skips every image and says so.
    again = _ssa([*_run_args(images, out, tiny_sam, segformer_5), "--world-size", "2"])
    assert again.returncode == 0, again.stderr
    assert "6 of 6 images already done" in again.stderr
    assert_same_outputs(out, reference)


def test_torchrun_matches_one_process(
    tmp_path: Path, images: Path, tiny_sam: Path, segformer_5: Path, reference: Path,
    ground_truth: Path,
) -> None:
    out = tmp_path / "out"
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    evaluate = ["--eval", "--gt-dir", str(ground_truth)]
    proc = _ssa([*_run_args(images, out, tiny_sam, segformer_5), *evaluate], launcher=torchrun)
    assert proc.returncode == 0, proc.stderr
    assert_eval_counts_every_image_once(out, ground_truth)
    (out / "eval.json").unlink()
    assert_same_outputs(out, reference)
    assert "[rank 1/2] 3 images to label" in proc.stderr


LAUNCHER = """from ssa.cli.commands import app

if __name__ == "__main__":
    app(prog_name="ssa")
"""


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _workers(launcher: int) -> list[int]:
    """The launcher's spawned workers (torch's elastic agent starts them with multiprocessing's
    spawn, so their command line names spawn_main; the resource tracker's does not)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if fields is not None and int(fields[1]) == launcher and b"spawn_main" in cmdline:
            out.append(int(entry.name))
    return out


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    """The pids still alive (not gone, not zombies) after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in pids if (_stat(p) or ["Z"])[0] not in ("Z", "X")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _start_from_cwd_with_ssa_folder(tmp_path: Path, args: list[str]) -> subprocess.Popen:
    """`ssa` started as an installed command would be, from a working directory that holds an
    unrelated folder named `ssa` (as where the repo was cloned)."""
    cwd = tmp_path / "cwd"
    (cwd / "ssa").mkdir(parents=True)
    (cwd / "ssa" / "__init__.py").write_text("raise ImportError('the cwd ssa/ was imported')\n")
    script = tmp_path / "bin" / "ssa_launcher.py"
    script.parent.mkdir()
    script.write_text(LAUNCHER)
    return subprocess.Popen(
        [sys.executable, str(script), *args], env=_env(), cwd=cwd, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _wait_first_image(proc: subprocess.Popen, out: Path) -> None:
    deadline = time.monotonic() + 300
    while not list(out.rglob("*_semantic.json")):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no image finished: {proc.communicate()[1]}")
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_launcher_sigkilled_alone_from_a_cwd_with_ssa_then_resume(
    tmp_path: Path, images: Path, tiny_sam: Path, segformer_5: Path, reference: Path
) -> None:
    out = tmp_path / "out"
    args, gate = _gated_args(tmp_path, images, out, tiny_sam, segformer_5)
    proc = _start_from_cwd_with_ssa_folder(tmp_path, args)
    try:
        _wait_first_image(proc, out)  # the workers imported the right ssa: they wrote images
        workers = _workers(proc.pid)
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone; nobody is left to stop them
        proc.wait()
        assert _wait_gone(workers, 1.0) == [], "workers outlived their launcher by over 1 s"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    done_at_kill = len(list(out.rglob("*_semantic.json")))
    assert done_at_kill == 1  # im0 only: the gate held every other image
    gate.touch()
    # What a kill in the middle of a write leaves behind (the kill above may or may not have).
    (out / "sub").mkdir(exist_ok=True)
    (out / "sub" / ".ssa-tmp-k1ll3d.png").write_bytes(b"\x89PNG partial")

    resumed = _ssa(args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_at_kill} of {len(NAMES)} images already done" in resumed.stderr
    assert "temporary file" in resumed.stderr  # one or more
    assert not [p for p in out.rglob("*") if p.name.startswith(io.TMP_PREFIX)]
    assert_same_outputs(out, reference)


def test_bad_files_are_isolated_and_reported(
    tmp_path: Path, images: Path, tiny_sam: Path, segformer_5: Path
) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    make_image(data / "good_a.png", seed=1)
    make_image(data / "nested" / "good_b.png", width=64, height=48, seed=2)
    png = (data / "good_a.png").read_bytes()
    (data / "truncated.png").write_bytes(png[: len(png) // 3])
    (data / "empty.jpg").write_bytes(b"")
    (data / "nested" / "notes.png").write_text("not an image at all\n")
    bad = {"empty.jpg", "nested/notes.png", "truncated.png"}
    args = [*_run_args(data, out, tiny_sam, segformer_5), "--world-size", "2"]

    proc = _ssa(args)
    assert proc.returncode != 0
    assert (out / "good_a_semantic.json").is_file()
    assert (out / "nested" / "good_b_semantic.json").is_file()
    assert (out / "nested" / "good_b_semantic.png").is_file()
    records = read_failures(out)
    assert sorted(r["path"] for r in records) == sorted(bad)  # once each, from both ranks
    assert {r["stage"] for r in records} == {"read"}
    summary = proc.stderr[proc.stderr.index("3 failed:"):]
    for name in bad:
        assert name in summary
    for name in bad:  # nothing but whole outputs
        assert not output_paths(out, Path(name))["semantic"].exists()

    # The bad files are fixed (one) or removed (two): the rerun labels the fixed one, and the
    # old failures are not reported again.
    make_image(data / "truncated.png", seed=3)
    (data / "empty.jpg").unlink()
    (data / "nested" / "notes.png").unlink()
    rerun = _ssa(args[:-2])  # one process this time
    assert rerun.returncode == 0, rerun.stderr
    assert "2 of 3 images already done" in rerun.stderr
    assert (out / "truncated_semantic.json").is_file()
    assert not (out / FAILURES_FILE).exists()


def _start_gated(
    tmp_path: Path, images: Path, out: Path, sam: Path, segformer: Path
) -> subprocess.Popen:
    """`ssa run --world-size 2` behind the gate, returned once im0 is written (see
    `_gated_args`): both workers are alive and hold their next image."""
    args, _ = _gated_args(tmp_path, images, out, sam, segformer)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ssa", *args], env=_env(), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    _wait_first_image(proc, out)
    return proc


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_dead_worker_loses_only_its_image(
    tmp_path: Path, images: Path, tiny_sam: Path, segformer_5: Path, reference: Path
) -> None:
    out = tmp_path / "out"
    proc = _start_gated(tmp_path, images, out, tiny_sam, segformer_5)
    try:
        workers = _workers(proc.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
        assert _wait_gone(workers, 5.0) == []  # torch's agent stopped the other one
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1
    stderr = " ".join(stderr.split())
    assert re.search(r"rank [01] killed by SIGKILL", stderr) and "rerun" in stderr, stderr
    assert "Traceback" not in stderr
    # What was written stands, whole (resuming is checked after the launcher's SIGKILL above).
    assert [p.name for p in out.rglob("*_semantic.json")] == ["im0_semantic.json"]
    assert_same_outputs(out, reference, written_only=True)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_sigterm_to_the_launcher_stops_every_worker(
    tmp_path: Path, images: Path, tiny_sam: Path, segformer_5: Path
) -> None:
    out = tmp_path / "out"
    proc = _start_gated(tmp_path, images, out, tiny_sam, segformer_5)
    try:
        workers = _workers(proc.pid)
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGTERM)
        assert _wait_gone(workers, 1.0) == []
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "stopped by SIGTERM" in stderr


def test_world_size_is_capped_by_the_cores(tmp_path: Path) -> None:
    from ssa.distributed import check_world_size, max_workers

    cores = max_workers("cpu")
    check_world_size("cpu", cores)
    with pytest.raises(SSAError, match=f"--world-size {cores + 1} needs one core per worker"):
        check_world_size("cpu", cores + 1)
    with pytest.raises(SSAError, match="at least 1"):
        check_world_size("cpu", 0)
    if not torch.cuda.is_available():
        with pytest.raises(SSAError, match="0 GPUs"):
            check_world_size("cuda", 1)


def test_world_size_beyond_the_cores_is_refused_before_any_worker(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ssa.cli.commands import app

    make_image(tmp_path / "data" / "a.png")
    result = CliRunner().invoke(app, ["run", "--data-dir", str(tmp_path / "data"), "--out-dir",
                                      str(tmp_path / "out"), "--device", "cpu", "--world-size",
                                      "1000"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--world-size 1000 needs one core per worker" in text and "Traceback" not in text


def _rank_code() -> int:
    """A worker for `launch`: rank 0 returns 5, rank 1 raises a bug."""
    if os.environ["RANK"] == "1":
        raise KeyError("a bug in rank 1")
    time.sleep(60)  # stopped by the agent long before this ends
    return 5


def _rank_zero_speaks() -> int:
    return 5 if os.environ["RANK"] == "0" else 0


def test_launch_returns_rank_0s_code_and_keeps_a_bugs_traceback(capfd) -> None:
    from ssa.distributed import launch

    assert launch(2, _rank_zero_speaks) == 5
    lines: list[str] = []
    start = time.monotonic()
    assert launch(2, _rank_code, log=lines.append) == 1
    assert time.monotonic() - start < 50  # rank 0 was stopped, not waited for
    assert len(lines) == 1 and "rank 1 exit code 1, KeyError: 'a bug in rank 1'" in lines[0]
    err = capfd.readouterr().err
    assert "Traceback" in err and "raise KeyError" in err  # a bug keeps its traceback


# Issue 23, finding 12: the launcher's temporary folder and its workers, on every kind of end.

SLEEPER = """
import os
import sys
import time


def work(ready):
    with open(f"{ready}.{os.getpid()}", "w") as f:
        f.write("up")
    while True:
        time.sleep(0.02)


if __name__ == "__main__":
    from ssa import distributed

    sys.exit(distributed.launch(2, work, (sys.argv[1],)))
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL],
                         ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_launcher_leaves_no_temp_folder_and_no_worker(tmp_path: Path, sig) -> None:
    """Before: SIGKILL left `ssa-elastic-*` in the temp folder, and workers outlived the
    launcher by up to about 3 s (SIGINT, SIGKILL). Now the folder goes on every end and the
    workers within 1 s."""
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**_env(), "TMPDIR": str(temp),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "sleeper.py"), str(ready)], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready.*"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "workers did not start"
            time.sleep(0.02)
        workers = _workers(proc.pid)
        assert len(workers) == 2
        assert [p.name[:12] for p in temp.iterdir()] == ["ssa-elastic-"]  # in use
        os.kill(proc.pid, sig)
        assert _wait_gone(workers, 1.0) == [], "workers outlived their launcher by over 1 s"
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 2
    while list(temp.iterdir()) and time.monotonic() < deadline:  # the janitor: SIGKILL only
        time.sleep(0.02)
    assert list(temp.iterdir()) == []


def test_stale_launcher_folders_are_swept(tmp_path: Path) -> None:
    """A folder of a launcher that is gone (its janitor killed too) goes at the next launch;
    a live launcher's folder and anything else stay."""
    from ssa.distributed import remove_stale_logs

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"ssa-elastic-{dead.pid}-abc" / "run" / "attempt_0").mkdir(parents=True)
    (tmp_path / f"ssa-elastic-{os.getpid()}-def").mkdir()
    (tmp_path / "ssa-elastic-notapid").mkdir()
    (tmp_path / "other").mkdir()
    assert remove_stale_logs(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "other", f"ssa-elastic-{os.getpid()}-def", "ssa-elastic-notapid"]
