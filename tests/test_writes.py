"""Files that exist are whole: every writer on a full disk, short writes, a read-only out-dir."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from ssa import io
from ssa.errors import FatalError, SSAError


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def full_disk(monkeypatch):
    """os.write takes the first 100 bytes of a file, then the disk is full (ENOSPC)."""
    real = os.write

    def write(fd: int, data) -> int:
        if os.fstat(fd).st_size >= 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, bytes(data)[: 100 - os.fstat(fd).st_size])

    monkeypatch.setattr(os, "write", write)


def _every_writer(out: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, (40, 50)).astype(np.uint8)
    palette = rng.integers(0, 255, (5, 3), dtype=np.uint8)
    writers = {
        "a.json": lambda p: io.write_json(p, {"annotations": list(range(500))}),
        "a.txt": lambda p: io.write_text(p, "x" * 1000),
        "a.png": lambda p: io.write_label_png(p, labels, 5),
        "a_vis.jpg": lambda p: io.write_overlay(p, image, labels, palette, [labels == 1], ["x"]),
    }
    for name, write in writers.items():
        with pytest.raises(FatalError) as info:
            write(out / "sub" / name)
        msg = str(info.value)
        assert "disk is full" in msg and name in msg and "\n" not in msg


def test_full_disk_leaves_no_file_and_stops_in_one_line(tmp_path: Path, full_disk) -> None:
    _every_writer(tmp_path)
    assert _files(tmp_path) == []  # neither a truncated output nor a temporary file


def test_short_writes_still_give_whole_files(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data)[:7]))  # 7 at a time
    labels = np.arange(600, dtype=np.uint16).reshape(20, 30)
    io.write_label_png(tmp_path / "l.png", labels, 600)
    io.write_json(tmp_path / "d.json", {"k": list(range(100))})
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "l.png")), labels)
    assert io.json.loads((tmp_path / "d.json").read_text()) == {"k": list(range(100))}


def test_size_is_checked_before_the_rename(tmp_path: Path, monkeypatch) -> None:
    real = os.write
    # A file system that says it took the bytes but kept fewer (what a short JPEG write is).
    monkeypatch.setattr(os, "write", lambda fd, data: real(fd, bytes(data)[:-3]) + 3)
    with pytest.raises(SSAError, match="bytes on disk"):
        io.write_json(tmp_path / "a.json", {"x": 1})
    assert _files(tmp_path) == []


def test_writes_fsync_the_file_then_the_folder(tmp_path: Path, monkeypatch) -> None:
    synced: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(
        "dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (synced.append("rename"), real_replace(a, b)))
    io.write_json(tmp_path / "a.json", {})
    assert synced == ["file", "rename", "dir"]


def test_read_only_out_dir_is_one_line_before_models_load(tmp_path: Path, monkeypatch) -> None:
    from conftest import make_image
    from typer.testing import CliRunner

    from ssa.cli.commands import app

    make_image(tmp_path / "data" / "x.png")
    (tmp_path / "ro").mkdir()  # the folder exists; writing into it fails
    real = os.open

    def open_(path, flags, *args, **kwargs):  # a read-only file system under ro/
        if flags & os.O_CREAT and Path(path).is_relative_to(tmp_path / "ro"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    # The segmentor folder does not exist: a model load would fail with another message.
    for command in (["run", "--segmentor", f"hf:{tmp_path / 'none'}"], ["engine"]):
        result = CliRunner().invoke(app, [*command, "--data-dir", str(tmp_path / "data"),
                                          "--out-dir", str(tmp_path / "ro"), "--device", "cpu"])
        assert result.exit_code == 1
        lines = [line for line in result.output.splitlines() if line.strip()]
        text = " ".join(result.output.split())
        assert len(lines) <= 2 and "Traceback" not in result.output, result.output
        assert "--out-dir" in text and "is not writable" in text and "read-only" in text, text


def test_out_dir_that_cannot_be_created(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SSAError, match="file/out cannot be created .*file is not a folder"):
        io.check_writable(tmp_path / "file" / "out")
    with pytest.raises(SSAError, match="cannot be created \\(it is a file\\)"):
        io.check_writable(tmp_path / "file")
    io.check_writable(tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()  # nothing is created before the run's checks pass
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != tmp_path and real(p, mode))
    with pytest.raises(SSAError, match=f"new/out cannot be created \\({tmp_path} is not writ"):
        io.check_writable(tmp_path / "new" / "out")


def test_failures_report_on_a_full_disk(tmp_path: Path, full_disk) -> None:
    from ssa.run.outputs import ImageResult, record_failure, write_failures

    failed = [ImageResult(Path(f"im{i}.png"), "failed", stage="read", error="x" * 80)
              for i in range(3)]
    with pytest.raises(FatalError, match="failures.jsonl: the disk is full") as info:
        write_failures(tmp_path, failed)  # the end-of-run rewrite
    assert "\n" not in str(info.value)
    assert _files(tmp_path) == []
    (tmp_path / "failures.jsonl").write_bytes(b"y" * 100)  # the disk fills at 100 bytes
    with pytest.raises(FatalError, match="failures.jsonl: the disk is full"):
        record_failure(tmp_path, failed[0])
