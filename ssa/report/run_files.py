"""What a report reads from a finished `ssa run` out-dir: the settings record, the failures, the
list of images and their files.

An out-dir holds, per image `<rel.parent>/<rel.stem>`, `<stem>_semantic.json`, `_semantic.png`,
optionally `_branch.png` and `_vis.jpg`; beside them `ssa_run.json` (`{"ssa_version",
"settings"}`, written when the models load), `failures.jsonl` (one line per failed image:
path, stage, error) and, after `ssa eval --json` / `ssa run --eval`, `eval.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssa import io
from ssa.errors import SSAError
from ssa.run.outputs import FAILURES_FILE, JSON_SUFFIX, output_paths, read_failures
from ssa.run.record import RUN_SETTINGS


@dataclass(frozen=True)
class RunEntry:
    """One image of the run. rel: its path relative to the image folder (with its extension
    when the images were listed from --data-dir, else the output stem); image: the image file,
    when known; status: "done" | "failed" | "missing" (listed, no outputs, no failure)."""

    rel: Path
    stem_rel: Path
    image: Path | None
    status: str

    def paths(self, pred_dir: Path) -> dict[str, Path]:
        """The run's files for this image (`ssa.run.outputs.output_paths`)."""
        return output_paths(pred_dir, self.stem_rel.with_name(self.stem_rel.name + ".x"))


def read_settings(pred_dir: Path) -> dict[str, Any]:
    """`ssa_run.json` as `{"ssa_version", "settings", "mtime"}` (empty when absent or unreadable)."""
    path = Path(pred_dir) / RUN_SETTINGS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        mtime = path.stat().st_mtime
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    settings = data.get("settings") if isinstance(data.get("settings"), dict) else {}
    return {"ssa_version": data.get("ssa_version"), "settings": settings, "mtime": mtime}


def read_eval_json(pred_dir: Path) -> dict[str, Any] | None:
    """`<pred_dir>/eval.json` (`ssa.evaluation.evaluate.build_report`'s shape), or None."""
    from ssa.evaluation.evaluate import EVAL_JSON

    try:
        data = json.loads((Path(pred_dir) / EVAL_JSON).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("per_class"), dict) else None


def discover(pred_dir: Path, skip: Path | None = None) -> list[Path]:
    """`<rel.parent>/<rel.stem>` of every `<stem>_semantic.json` under pred_dir, sorted; the
    folder `skip` (the report itself) is not walked."""
    pred_dir = Path(pred_dir)
    skip_real = os.path.realpath(skip) if skip is not None else None
    found = []
    for folder, subs, files in os.walk(pred_dir):
        if skip_real is not None:
            subs[:] = [s for s in subs if os.path.realpath(os.path.join(folder, s)) != skip_real]
        rel_folder = Path(folder).relative_to(pred_dir)
        for name in files:
            if name.endswith(JSON_SUFFIX) and not name.startswith(io.TMP_PREFIX):
                found.append(rel_folder / name[: -len(JSON_SUFFIX)])
    return sorted(found)


def list_entries(
    pred_dir: Path,
    data_dir: Path | None,
    dataset: str,
    split: str | None,
    limit: int | None,
    skip: Path | None = None,
) -> tuple[Path | None, list[RunEntry], list[dict[str, Any]]]:
    """The image folder (None without --data-dir), every image of the run in order, and the
    failure records.

    With `data_dir` the images are listed as `ssa run` lists them; else the run's JSONs are
    found under pred_dir, and failed images (failures.jsonl) added by their stem.
    """
    from ssa.datasets import select_images

    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise SSAError(f"--pred-dir {pred_dir} is not a folder; pass the --out-dir of `ssa run`")
    failures = read_failures(pred_dir)
    failed = {r["path"] for r in failures}
    failed_stems = {_stem(Path(r["path"])).as_posix() for r in failures}
    if data_dir is not None:
        root, rels = select_images(dataset, Path(data_dir), split, limit, pred_dir)
        entries = []
        for rel in rels:
            stem_rel = _stem(rel)
            if rel.as_posix() in failed:
                status = "failed"
            elif RunEntry(rel, stem_rel, None, "").paths(pred_dir)["semantic"].is_file():
                status = "done"
            else:
                status = "missing"
            entries.append(RunEntry(rel, stem_rel, root / rel, status))
        return root, entries, failures
    stems = discover(pred_dir, skip)
    seen = {s.as_posix() for s in stems}
    done = [RunEntry(s, s, None, "failed" if s.as_posix() in failed_stems else "done")
            for s in stems]
    extra = sorted(s for s in failed_stems if s not in seen)
    entries = done + [RunEntry(Path(s), Path(s), None, "failed") for s in extra]
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise SSAError(f"--pred-dir {pred_dir} holds no <stem>{JSON_SUFFIX} and no "
                       f"{FAILURES_FILE}; pass the --out-dir of a finished `ssa run`")
    return None, sorted(entries, key=lambda e: e.stem_rel.as_posix()), failures


def _stem(rel: Path) -> Path:
    return rel.parent / rel.stem


def read_document(path: Path) -> dict[str, Any]:
    """One `<stem>_semantic.json` (`annotations`, `image`, `class_names`); SSAError naming the
    file when it is not an `ssa run` output."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SSAError(f"cannot read {path} ({exc}); rerun `ssa run` on that image") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SSAError(f"{path} has no 'annotations' list; it is not an `ssa run` output")
    return data
