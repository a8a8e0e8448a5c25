"""What an out-dir holds, by ssa's own record `<out-dir>/ssa_run.json`, and who may write there.

The record names the settings that decide what the outputs mean (`SETTING_KEYS`, with every
path resolved to its real absolute path), the image folder (real path) and a fingerprint of the
image listing (relative names and byte sizes). A run whose settings differ, or where an image of
the listing changed size, is refused (its images would keep the old settings or data beside the
new ones), unless the folder holds no output yet; images added or removed are a resume.

`--overwrite` is a state of the record: it starts by recording `overwrite_since` (the time it
began, ns) with the new settings, and an image counts as done under it only when its JSON is
newer than that. A later run with the same settings (with or without `--overwrite`) completes
it; one with other settings is refused. The mark goes once every image of the full listing is
done under it, so a folder never mixes two settings, also after `--overwrite --limit 1` or a kill.

Ownership: ssa writes into an out-dir that is new, empty, or carries its record; a folder that
holds `<stem>_semantic.json` files but no record is someone else's and is refused. An out-dir
that is, holds or lies inside an input (images, ground truth, masks, labels, class files;
compared by real path) is refused too. The lock file (`LOCK_FILE`, `ssa.io.FolderLock`) keeps
one run per out-dir.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ssa import io
from ssa.errors import SSAError
from ssa.run.outputs import JSON_SUFFIX, output_paths

RUN_SETTINGS = "ssa_run.json"
LOCK_FILE = ".ssa-lock"
# The RunConfig fields that change what an image's outputs hold (the rest: where, how fast,
# which images, which extra files).
SETTING_KEYS = (
    "masks", "amg_preset", "amg", "amg_impl", "segmentor", "segmentor_args", "classes",
    "label_map", "prompts", "vote", "min_vote_share", "top_k", "max_pixels",
)
SPEC_KEYS = ("masks", "segmentor")  # spec strings whose target may be a local path


def resolved_spec(spec: str) -> str:
    """A spec string with a local path target made real and absolute (`json:masks` ->
    `json:/data/masks`, `sam:vit_b:ckp/x.pth` -> `sam:vit_b:/abs/ckp/x.pth`); hub ids, module
    names and paths that do not exist stay as written."""
    parts = spec.split(":")
    for i in range(len(parts) - 1, -1, -1):
        candidate = ":".join(parts[i:])
        if i > 0 and candidate and Path(candidate).expanduser().exists():
            return ":".join([*parts[:i], str(io.real_path(candidate))])
    return spec


def settings_of(values: Mapping[str, Any]) -> dict[str, Any]:
    """The `SETTING_KEYS` of `values`, JSON-ready, paths real and absolute."""
    out: dict[str, Any] = {}
    for key in SETTING_KEYS:
        value = values.get(key)
        if isinstance(value, Path):
            value = str(io.real_path(value))
        elif key in SPEC_KEYS and isinstance(value, str):
            value = resolved_spec(value)
        out[key] = value
    return json.loads(json.dumps(out, default=str))


def fingerprint(root: Path, rels: Iterable[Path]) -> dict[str, Any]:
    """The image listing: `{"count", "sha1", "sizes"}`, each relative name with its size in
    bytes (`sizes`) and the sha1 of them all."""
    digest = hashlib.sha1()
    sizes: dict[str, int] = {}
    for rel in rels:
        try:
            size = (Path(root) / rel).stat().st_size
        except OSError:
            size = -1
        sizes[rel.as_posix()] = size
        digest.update(f"{rel.as_posix()}\t{size}\n".encode())
    return {"count": len(sizes), "sha1": digest.hexdigest(), "sizes": sizes}


def changed_images(earlier: Any, now: dict[str, Any]) -> list[str]:
    """The images of both listings whose size changed (images added or removed since are a
    resume, not other data)."""
    if not isinstance(earlier, dict) or not isinstance(earlier.get("sizes"), dict):
        return []
    before, after = earlier["sizes"], now["sizes"]
    return sorted(rel for rel in before.keys() & after.keys() if before[rel] != after[rel])


def read_record(out_dir: Path) -> dict[str, Any] | None:
    """The record, or None when there is none (an unreadable one is refused: it is ssa's file,
    and guessing would risk mixing settings)."""
    path = Path(out_dir) / RUN_SETTINGS
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SSAError(
            f"{path} is unreadable ({exc}); restore it, or pass --overwrite to redo every image"
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise SSAError(f"{path} is not an ssa record; pass another --out-dir")
    return record


def holds_outputs(out_dir: Path) -> bool:
    """Whether any `<stem>_semantic.json` lies under out_dir (stops at the first)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return False
    for folder, dirs, files in os.walk(out_dir):
        if any(name.endswith(JSON_SUFFIX) for name in files):
            return True
        dirs[:] = [d for d in dirs if not Path(folder, d).is_symlink()]
    return False


def check_inputs(out_dir: Path, inputs: Iterable[tuple[str, Path | None]]) -> None:
    """Refuse an out-dir that is, holds or lies inside one of `inputs` (flag, path)."""
    for flag, path in inputs:
        where = None if path is None else io.overlap(out_dir, path)
        if where == "holds":
            raise SSAError(
                f"--out-dir {out_dir} holds {flag} {path}; a run there would mix its outputs "
                f"with your inputs: pass a new folder outside them"
            )
        if where == "inside":
            raise SSAError(
                f"--out-dir {out_dir} is inside {flag} {path}; pass a folder outside your inputs"
            )


def check_record(
    out_dir: Path, settings: dict[str, Any], data_dir: Path, prints: dict[str, Any],
    overwrite: bool,
) -> None:
    """Refuse to write into `out_dir` where its record (or its absence) says the folder would
    mix two settings or is not ssa's (see the module docstring)."""
    record = read_record(out_dir)
    if record is None:
        if holds_outputs(out_dir):
            raise SSAError(
                f"--out-dir {out_dir} holds <stem>{JSON_SUFFIX} files but no {RUN_SETTINGS}: "
                f"ssa did not write them and does not replace them; pass a new --out-dir"
            )
        return
    if overwrite or not holds_outputs(out_dir):
        return
    now = {**settings, "data_dir": str(io.real_path(data_dir))}
    earlier = {**record["settings"], "data_dir": record.get("data_dir")}
    differ = [k for k in now if k in earlier and earlier[k] is not None and earlier[k] != now[k]]
    shown = ", ".join(f"{k} {earlier[k]!r} -> {now[k]!r}" for k in differ)
    # An image that changed matters where its outputs stand (a fixed failed image is new data).
    changed = [rel for rel in changed_images(record.get("images"), prints)
               if output_paths(Path(out_dir), Path(rel))["semantic"].exists()]
    if changed:
        more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
        shown = ", ".join([*([shown] if shown else []),
                           f"images changed since: {', '.join(changed[:3])}{more}"])
    if not shown:
        return
    if record.get("overwrite_since") is not None:
        raise SSAError(
            f"{out_dir} holds an unfinished --overwrite run with other settings ({shown}); "
            f"rerun it with its settings to finish it, or pass --overwrite to redo every image"
        )
    raise SSAError(
        f"{out_dir} holds a run with other settings ({shown}); pass the same settings to "
        f"resume it, --overwrite to redo every image, or another --out-dir"
    )


def overwrite_mark(out_dir: Path, overwrite: bool) -> int | None:
    """The time (ns) from which an image's JSON counts as done: now for `--overwrite`, the
    record's `overwrite_since` while an earlier overwrite is unfinished, else None (any JSON)."""
    if overwrite:
        return time.time_ns()
    record = read_record(out_dir)
    return None if record is None else record.get("overwrite_since")


def write_record(
    out_dir: Path, settings: dict[str, Any], data_dir: Path, prints: dict[str, Any],
    since: int | None, dataset: str = "folder", split: str | None = None,
) -> None:
    """Record what the folder holds (atomically); `since`: an unfinished overwrite's start;
    dataset/split: how the images were listed (the defaults of `ssa eval` and `ssa export`)."""
    from ssa import __version__

    record: dict[str, Any] = {
        "ssa_version": __version__, "settings": settings, "dataset": dataset, "split": split,
        "data_dir": str(io.real_path(data_dir)), "images": prints,
    }
    if since is not None:
        record["overwrite_since"] = since
    io.write_json(Path(out_dir) / RUN_SETTINGS, record)


def finish_overwrite(out_dir: Path, all_done: bool) -> None:
    """Drop the overwrite mark once every image of the full listing is done under it."""
    record = read_record(out_dir)
    if record is None or record.get("overwrite_since") is None or not all_done:
        return
    del record["overwrite_since"]
    io.write_json(Path(out_dir) / RUN_SETTINGS, record)
