"""The report folder is ssa's own output: who owns it, where it may go, how files land in it.

Ownership: the first file written into a new report folder is `OWNER_FILE`. A folder that
exists, is not empty and lacks it (or holds it as a symlink) is the user's and is refused. A
rebuild writes every file again and then removes only the files of the report's own layout
(`OWN_FILES`) that this build did not write, so a user's own file dropped into the folder stays.

Files are written under a temporary name and renamed into place (a page is whole or absent),
without fsync: a report is rebuilt from the run in seconds, durability is not worth a sync per
file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ssa import io
from ssa.errors import SSAError

OWNER_FILE = ".ssa-report.json"
OWNER_KEY = "ssa_report"
# The report's layout: folder -> names of files it writes there.
OWN_FILES = {
    ".": re.compile(r"(index|class|review)\.html|gallery-\d+\.html|review\.txt"),
    "assets": re.compile(r"report\.(css|js)"),
    "charts": re.compile(r"(iou|confusion|areas)\.png"),
    "data": re.compile(r"classes\.js|class-\d+-\d+\.js"),
    "images": re.compile(r"\d+\.html"),
    "media": re.compile(r"\d+-(image|voted|branch|gt)\.(jpg|png)"),
    "thumbs": re.compile(r"\d+\.jpg"),
}


def is_report(folder: Path) -> bool:
    """True when `folder` is a report ssa wrote (its `OWNER_FILE` is a plain file)."""
    marker = Path(folder) / OWNER_FILE
    return marker.is_file() and not marker.is_symlink()


def check_out(out: Path, pred_dir: Path, inputs: dict[str, Path | None],
              image_root: Path | None = None) -> Path:
    """Refuse an `--out` that would mix with what the user owns; returns its real path.

    Refused: a file; a non-empty folder ssa did not write; a folder that is or holds an input
    (`inputs`: flag -> path); a folder inside the image folder `image_root` unless it lies
    inside a `--pred-dir` below that folder (`ssa run` lists everything else there as images,
    and would label the report's pictures).
    """
    given = Path(out)
    out = io.real_path(given)
    for flag, path in inputs.items():
        if path is not None and io.overlap(out, path) == "holds":
            raise SSAError(f"--out {given} holds {flag} {path}; pass a new folder for the report "
                           f"(default: <pred-dir>/report)")
    if image_root is not None:
        root, pred = io.real_path(image_root), io.real_path(pred_dir)
        below_pred = pred in out.parents and root in pred.parents
        if root in out.parents and not below_pred:
            raise SSAError(f"--out {given} lies inside the image folder {image_root}, where "
                           f"`ssa run` would take the report's pictures for images; pass an "
                           f"--out outside it (`ssa report --out DIR`)")
    if os.path.lexists(out):
        if not out.is_dir():
            raise SSAError(f"--out {given} is a file; pass a folder for the report")
        if not is_report(out) and any(out.iterdir()):
            raise SSAError(f"--out {given} is a folder that `ssa report` did not write; ssa "
                           f"replaces only its own reports: pass a new or empty folder")
    return out


def claim(out: Path, pred_dir: Path) -> None:
    """Create the folder (if needed) and mark it as a report, before anything else is written."""
    from ssa import __version__

    out.mkdir(parents=True, exist_ok=True)
    if not is_report(out) and any(out.iterdir()):  # checked again: the check may be stale
        raise SSAError(f"--out {out} is a folder that `ssa report` did not write; pass a "
                       f"new or empty folder")
    record = {OWNER_KEY: __version__, "pred_dir": str(io.real_path(pred_dir))}
    write_bytes(out / OWNER_FILE, json.dumps(record).encode())


def write_bytes(path: Path, data: bytes) -> None:
    """`data` at `path` via a temporary name in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f"{io.TMP_PREFIX}{path.name}"
    try:
        temp.write_bytes(data)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise io.write_error(path, exc) from None


class Writer:
    """Writes the files of one build into a claimed report folder and remembers them."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.written: set[str] = {OWNER_FILE}  # `/`-separated paths under `out`
        self.bytes = 0

    def write(self, rel: str, data: bytes | str) -> None:
        """Write `data` at `out/rel` (`rel` a `/`-separated path of the report's layout)."""
        raw = data.encode("utf-8") if isinstance(data, str) else data
        path = self.out / rel
        write_bytes(path, raw)
        self.written.add(rel)
        self.bytes += len(raw)

    def remove_stale(self) -> int:
        """Remove the report files an earlier build wrote that this one did not (only names of
        `OWN_FILES`, and ssa's own temporary files); returns how many."""
        removed = 0
        for sub, pattern in OWN_FILES.items():
            folder = self.out / sub
            if not folder.is_dir() or folder.is_symlink():
                continue
            for path in folder.iterdir():
                name = path.name
                rel = name if sub == "." else f"{sub}/{name}"
                ours = pattern.fullmatch(name) or name.startswith(io.TMP_PREFIX)
                if ours and path.is_file() and not path.is_symlink() and rel not in self.written:
                    path.unlink()
                    removed += 1
        return removed
