"""What every export format shares: the run folder read one image at a time, the class list,
the refusals, per-image parts in a staging folder, and the atomic commit of the result.

A finished `ssa run` / `ssa engine` output folder holds, per image `<rel.parent>/<rel.stem>`,
`<stem>_semantic.json` (`annotations`: COCO RLE `segmentation`, `area`, `bbox`, `predicted_iou`,
`class_name`...; `ssa run` adds `semantic_mask` and `class_names`) and, for `ssa run`,
`<stem>_semantic.png` (class index 0..C-1, 255 = no label; uint16 with 65535 when C > 255).

Category ids (every format): class `i` of the class list is category id `i + 1` (COCO keeps 0
for "no category"; in panoptic PNGs segment id 0 is void). The class list is `--classes FILE`
when given, else the run's `class_names` (the `ssa run` order, so category `i + 1` is label-map
value `i`), else, for an `ssa engine` run, the sorted set of every mask's `class_name`.

Atomicity: everything is written under `<out.parent>/.ssa-tmp-<out.name>` (per-image parts,
then the assembled result) and renamed onto `--out` only when complete, so an interrupted
export leaves a temporary folder (removed by the next export to the same `--out`) and never a
half file under the final name.

Ownership: `--overwrite` replaces only an export that ssa wrote. A folder result carries
`.ssa-export.json` (its format and the run it came from); a coco-instances file names itself
in `info.ssa_export`; a parquet file in its schema metadata (`ssa_export`). Anything else at
`--out` is the user's and is refused, as is an `--out` that is, holds or lies inside an input
of the export (the run folder, the images, the class files), compared by real path.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssa import io
from ssa.errors import SSAError
from ssa.export.validate import CheckedDocument, read_document
from ssa.run.outputs import JSON_SUFFIX, PNG_SUFFIX
from ssa.words import plural

PARTS = "parts"
MAX_NAMED = 5
OWNER_FILE = ".ssa-export.json"  # inside every folder an export wrote
OWNER_KEY = "ssa_export"  # coco-instances `info` key / parquet schema metadata key


@dataclass
class ExportConfig:
    """Everything `ssa export` needs (paths as `Path`; see the README "Export" section).

    format: one of `ssa.export.FORMATS`; pred_dir: the run's `--out-dir`; out: the file or
    folder to write; dataset/data_dir/split: the images the run read (as in `ssa run`), needed
    by formats that name or embed the images; classes: a class-names file (engine runs);
    things: a file of thing class names (coco-panoptic, other than ADE20K / Cityscapes);
    image_root_url: the URL prefix of the images (label-studio); images: a text file of the
    images to export, one relative path per line (e.g. `ssa report`'s `review.txt`).
    """

    format: str
    pred_dir: Path
    out: Path
    dataset: str = "folder"
    data_dir: Path | None = None
    split: str | None = None
    classes: Path | None = None
    things: Path | None = None
    image_root_url: str | None = None
    limit: int | None = None
    allow_missing: bool = False
    overwrite: bool = False
    images: Path | None = None


@dataclass(frozen=True)
class RunItem:
    """One image of the export. index: 0-based position (COCO image id = index + 1); rel: the
    image's path relative to the image folder (without its extension when no --data-dir was
    given); image: the image file, when --data-dir was given."""

    index: int
    rel: Path
    json: Path
    png: Path
    image: Path | None

    @property
    def stem_rel(self) -> Path:
        """`<rel.parent>/<rel.stem>`: the path the run's outputs are named after."""
        return self.rel.parent / (self.rel.stem if self.image is not None else self.rel.name)


@dataclass
class ExportPlan:
    """The images to export, in order, and the class list; identical on every rank."""

    cfg: ExportConfig
    items: list[RunItem]
    class_names: list[str]
    image_root: Path | None = None
    skipped: list[str] = field(default_factory=list)  # failed/missing images left out

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class RunImage:
    """One image of the run, read from its JSON (and PNG on demand).

    annotations: the JSON's records; class_ids: `(N,) int64`, the class index of each
    annotation's `class_name` (-1 for none).
    """

    item: RunItem
    height: int
    width: int
    annotations: list[dict[str, Any]]
    class_ids: np.ndarray
    num_classes: int

    def masks(self) -> np.ndarray:
        """`(N, H, W) bool`, the annotations' RLEs decoded (pycocotools)."""
        if not self.annotations:
            return np.zeros((0, self.height, self.width), dtype=bool)
        return np.stack([io.decode_rle(a["segmentation"]) for a in self.annotations])

    def areas(self) -> np.ndarray:
        """`(N,) int64`: each annotation's `area`, or its RLE's pixel count where it has none
        (the order masks are painted in, largest first)."""
        from pycocotools import mask as mask_utils

        out = []
        for a in self.annotations:
            if a.get("area") is not None:
                out.append(int(a["area"]))
            else:
                rle = dict(a["segmentation"])
                if isinstance(rle["counts"], list):
                    rle = mask_utils.frPyObjects(rle, *rle["size"])
                else:
                    rle["counts"] = rle["counts"].encode("ascii")
                out.append(int(mask_utils.area(rle)))
        return np.asarray(out, dtype=np.int64)

    def label_map(self) -> np.ndarray:
        """`(H, W) int64` class indices, `io.no_label_value(C)` = no label: the run's
        `<stem>_semantic.png`, else (engine runs) the masks painted largest first with their
        class (smaller masks win, as `ssa.voting.paint` paints)."""
        if self.item.png.is_file():
            out = io.read_label_png(self.item.png)
            if out.shape != (self.height, self.width):
                raise SSAError(
                    f"{self.item.png} is {out.shape[1]}x{out.shape[0]} but its JSON says "
                    f"{self.width}x{self.height}; rerun `ssa run --overwrite` on that image"
                )
            return out
        import torch

        from ssa.voting import paint

        base = torch.full((self.height, self.width), io.no_label_value(self.num_classes))
        if not self.annotations:
            return base.numpy().astype(np.int64)
        areas = torch.from_numpy(self.areas())
        return paint(torch.from_numpy(self.masks()), torch.from_numpy(self.class_ids), base,
                     areas=areas).numpy().astype(np.int64)


def _name_some(names: list[str]) -> str:
    out = ", ".join(names[:MAX_NAMED])
    return out + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def _discover(pred_dir: Path) -> list[Path]:
    """`<rel.parent>/<rel.stem>` of every `<stem>_semantic.json` under pred_dir, sorted."""
    found = []
    for path in pred_dir.rglob(f"*{JSON_SUFFIX}"):
        if path.name.startswith(io.TMP_PREFIX) or not path.is_file():
            continue
        rel = path.relative_to(pred_dir)
        found.append(rel.parent / rel.name[: -len(JSON_SUFFIX)])
    return sorted(found)


def _item(index: int, pred_dir: Path, rel: Path, root: Path | None) -> RunItem:
    stem = rel.stem if root is not None else rel.name
    base = pred_dir / rel.parent
    return RunItem(index, rel, base / f"{stem}{JSON_SUFFIX}", base / f"{stem}{PNG_SUFFIX}",
                   None if root is None else root / rel)


def read_json(path: Path) -> CheckedDocument:
    """One of the run's JSONs, every field checked before any of it is used
    (`ssa.export.validate.read_document`: one SSAError line naming the file, the annotation
    and the fix)."""
    return read_document(path)


def resolve_classes(cfg: ExportConfig, items: list[RunItem]) -> list[str]:
    """The class list (see the module docstring), checked against the dataset's own."""
    from ssa.datasets import get_dataset
    from ssa.evaluation.evaluate import load_class_names

    spec = get_dataset(cfg.dataset)
    if cfg.classes is not None:
        names = load_class_names(Path(cfg.classes))
    else:
        first = read_json(items[0].json).class_names
        if isinstance(first, list) and first and all(isinstance(n, str) for n in first):
            names = list(first)
        else:  # an engine run: free-form names, one pass over the JSONs (names only kept)
            seen: set[str] = set()
            for item in items:
                seen.update(a["class_name"] for a in read_json(item.json).annotations
                            if isinstance(a.get("class_name"), str))
            names = sorted(seen)
    if not names:
        raise SSAError(
            f"the run under {cfg.pred_dir} names no classes; pass --classes FILE (one per line)"
        )
    if len(set(names)) != len(names):
        raise SSAError("class names must be unique to be categories; fix --classes")
    if spec.classes is not None and list(spec.classes) != names:
        raise SSAError(
            f"the run's {len(names)} classes ({_name_some(names)}) are not --dataset "
            f"{spec.name}'s {len(spec.classes)}; pass the --dataset the run used"
        )
    return names


def plan_export(cfg: ExportConfig, needs_images: bool = False) -> ExportPlan:
    """Pair the run's JSONs with the images and refuse what cannot be exported.

    With --data-dir the images are listed as `ssa run` lists them (`--dataset`, `--split`,
    `--limit`); else every `<stem>_semantic.json` under pred_dir is taken (sorted). Refuses:
    a folder with no `_semantic.json`, images the run failed (failures.jsonl) or has not done,
    unless allow_missing, and an `--out` that exists, unless overwrite.
    """
    from ssa.datasets import select_images
    from ssa.run.outputs import FAILURES_FILE, read_failures

    pred_dir = Path(cfg.pred_dir)
    if not pred_dir.is_dir():
        raise SSAError(f"--pred-dir {pred_dir} is not a folder; pass the --out-dir of `ssa run`")
    check_out(cfg)
    if needs_images and cfg.data_dir is None:
        raise SSAError(
            f"--format {cfg.format} needs --data-dir (it names or embeds the images); pass the "
            f"dataset folder the run read, with --dataset/--split as in `ssa run`"
        )
    found = _discover(pred_dir)
    if not found:
        raise SSAError(
            f"--pred-dir {pred_dir} holds no <stem>{JSON_SUFFIX}; it is not a finished run: pass "
            f"the --out-dir of `ssa run` or `ssa engine`"
        )
    if cfg.data_dir is not None:
        root, rels = select_images(cfg.dataset, Path(cfg.data_dir), cfg.split, cfg.limit)
    else:
        root, rels = None, found
        if cfg.limit is not None:
            if cfg.limit < 1:
                raise SSAError(f"--limit {cfg.limit} must be at least 1")
            rels = rels[: cfg.limit]
    candidates = [_item(0, pred_dir, rel, root) for rel in rels]
    if cfg.images is not None:
        candidates = select_listed(candidates, Path(cfg.images))
    listed = {c.rel.as_posix() for c in candidates}
    stems = {c.stem_rel.as_posix() for c in candidates}
    failed = [
        r["path"] for r in read_failures(pred_dir)
        if r["path"] in listed or Path(r["path"]).with_suffix("").as_posix() in stems
    ]
    present = [c for c in candidates if c.json.is_file()]
    missing = [c.rel.as_posix() for c in candidates
               if not c.json.is_file() and c.rel.as_posix() not in failed]
    if failed and not cfg.allow_missing:
        raise SSAError(
            f"{plural(len(failed), 'image')} of the run failed (see {pred_dir / FAILURES_FILE}): "
            f"{_name_some(failed)}; rerun `ssa run` on them, or pass --allow-missing to export "
            f"the rest"
        )
    if missing and not cfg.allow_missing:
        raise SSAError(
            f"no {JSON_SUFFIX} under {pred_dir} for {len(missing)} of {len(candidates)} images: "
            f"{_name_some(missing)}; finish the run (a rerun resumes), or pass --allow-missing "
            f"to export the rest"
        )
    failed_set = set(failed)
    present = [c for c in present if c.rel.as_posix() not in failed_set]
    if not present:
        raise SSAError(f"no image of --pred-dir {pred_dir} is left to export; finish the run")
    items = [_item(i, pred_dir, c.rel, root) for i, c in enumerate(present)]
    return ExportPlan(cfg, items, resolve_classes(cfg, items), root, sorted(failed) + missing)


def read_image_list(path: Path) -> list[str]:
    """The relative image paths of an `--images` file: one per line, `/`-separated, blank lines
    and lines starting with `#` skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SSAError(f"cannot read --images {path} ({exc}); pass a text file, one relative "
                       f"image path per line") from None
    names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not names:
        raise SSAError(f"--images {path} lists no image; one relative image path per line")
    return names


def select_listed(candidates: list[RunItem], path: Path) -> list[RunItem]:
    """The candidates an `--images` file names (by relative path, with or without the image's
    extension), in the run's order; a name that is not an image of the run is refused."""
    wanted = read_image_list(path)
    names = set(wanted)
    kept = [c for c in candidates if c.rel.as_posix() in names or c.stem_rel.as_posix() in names]
    known = {c.rel.as_posix() for c in kept} | {c.stem_rel.as_posix() for c in kept}
    unknown = [name for name in dict.fromkeys(wanted) if name not in known]
    if unknown:
        raise SSAError(
            f"--images {path} names {plural(len(unknown), 'image')} that the run does not "
            f"hold: {_name_some(unknown)}; list paths relative to the image folder"
        )
    return kept


def _inputs(cfg: ExportConfig) -> list[tuple[str, Path]]:
    named = [("--pred-dir", cfg.pred_dir), ("--data-dir", cfg.data_dir),
             ("--classes", cfg.classes), ("--things", cfg.things), ("--images", cfg.images)]
    return [(flag, Path(path)) for flag, path in named if path is not None]


def check_out(cfg: ExportConfig) -> None:
    """Refuse an `--out` that would destroy or mix with what the user owns (see the module
    docstring); `cfg.out` becomes its real path, so a symlinked `--out` is resolved once and
    every later step (staging, commit) works on the real folder."""
    given = Path(cfg.out)
    out = io.real_path(given)
    for flag, path in _inputs(cfg):
        where = io.overlap(out, path)
        if where == "holds":
            raise SSAError(
                f"--out {given} holds {flag} {path}; an export there would replace it: write "
                f"the export to a new path outside the run and the dataset"
            )
        if where == "inside":
            raise SSAError(
                f"--out {given} is inside {flag} {path}; write the export to a path outside "
                f"the run and the dataset"
            )
    # A read-only folder or a full disk is one line before any file is read.
    io.check_writable(out.parent, "--out")
    if os.path.lexists(out):
        if not cfg.overwrite:
            raise SSAError(
                f"--out {given} exists; pass --overwrite to replace it, or another path"
            )
        if not written_by_export(out):
            raise SSAError(
                f"--out {given} exists and was not written by `ssa export`; ssa replaces only "
                f"its own exports: pass a new path"
            )
    cfg.out = out


def written_by_export(path: Path) -> bool:
    """True when `path` is a result `ssa export` wrote (see the module docstring)."""
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_dir():
        record = path / OWNER_FILE
        return record.is_file() and not record.is_symlink()
    if not path.is_file():
        return False
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            metadata = pq.read_schema(path).metadata or {}
        except (OSError, ValueError, ImportError):  # not parquet (ArrowInvalid is a ValueError)
            return False
        return OWNER_KEY.encode() in metadata
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError:
        return False
    # write_json_stream writes `info` first, so ssa's key sits in the first bytes.
    return head.startswith(b'{"info": {') and f'"{OWNER_KEY}": '.encode() in head


def owner_record(plan: ExportPlan) -> dict[str, Any]:
    """What a folder export records about itself (`OWNER_FILE`)."""
    return {OWNER_KEY: plan.cfg.format, "pred_dir": str(io.real_path(plan.cfg.pred_dir)),
            "images": len(plan.items)}


def mark_owned(plan: ExportPlan, staged: Path) -> None:
    """Record in a staged folder result that ssa wrote it (files carry their own mark)."""
    if Path(staged).is_dir():
        io.write_json(Path(staged) / OWNER_FILE, owner_record(plan))


def read_run_image(plan: ExportPlan, item: RunItem) -> RunImage:
    """One image's JSON, its class names mapped to class indices (a name outside the class
    list is refused, naming the file)."""
    doc = read_json(item.json)
    if doc.class_names is not None and plan.cfg.classes is None and doc.class_names != \
            plan.class_names:
        raise SSAError(
            f"{item.json} has other class_names than the run's first image; export one run "
            f"at a time"
        )
    index = {name: i for i, name in enumerate(plan.class_names)}
    ids = []
    for k, ann in enumerate(doc.annotations):
        name = ann.get("class_name")
        if name is not None and name not in index:
            raise SSAError(
                f"{item.json}: annotation {k}: class {name!r} is not in the class list; add it "
                f"to --classes"
            )
        ids.append(-1 if name is None else index[name])
    return RunImage(item, doc.height, doc.width, doc.annotations,
                    np.asarray(ids, dtype=np.int64), plan.num_classes)


# Staging, parts and the commit.


def staging_dir(out: Path) -> Path:
    """The temporary folder beside `out` where an export is built (one per `--out`)."""
    out = Path(out)
    return out.parent / f"{io.TMP_PREFIX}{out.name}"


def part_path(staging: Path, index: int) -> Path:
    return Path(staging) / PARTS / f"{index:09d}.jsonl"


def write_part(staging: Path, index: int, records: list[Any]) -> None:
    """One image's part: one JSON document per line, written atomically."""
    path = part_path(staging, index)
    io.write_text(path, "".join(io.json_text(r, path) + "\n" for r in records))


def read_part(staging: Path, index: int) -> Iterator[Any]:
    with open(part_path(staging, index)) as f:
        for line in f:
            yield json.loads(line)


def _write_items(f: Any, items: Any) -> None:
    """The items of a JSON array, one per line, one in memory at a time (no brackets)."""
    name = getattr(f, "name", "the export")
    f.writelines((",\n" if n else "\n") + io.json_text(item, name) for n, item in enumerate(items))


def write_json_stream(
    path: Path, head: dict[str, Any] | None, arrays: dict[str, Callable[[], Any]]
) -> None:
    """A JSON document written incrementally and fsync'd: an object of `head`'s keys, then each
    array of `arrays` (name -> a function returning an iterable of JSON-able items); with
    `head` None and one array, that array alone (a top-level list). One item in memory at a
    time."""
    with open(path, "w") as f:
        if head is None:
            (items,) = arrays.values()
            f.write("[")
            _write_items(f, items())
            f.write("\n]\n")
        else:
            f.write("{")
            first = True
            for key, value in head.items():
                f.write(("" if first else ", ") + json.dumps(key) + ": " + io.json_text(value, path))
                first = False
            for key, items in arrays.items():
                f.write(("" if first else ", ") + json.dumps(key) + ": [")
                first = False
                _write_items(f, items())
                f.write("]")
            f.write("}\n")
        f.flush()
        os.fsync(f.fileno())


def prepare_staging(out: Path) -> Path:
    """An empty staging folder (a killed export's leftovers removed) with its parts folder."""
    staging = staging_dir(out)
    shutil.rmtree(staging, ignore_errors=True)
    (staging / PARTS).mkdir(parents=True)
    return staging


def commit(staged: Path, out: Path) -> None:
    """Move the finished file or folder `staged` onto `out`; an old `out` is replaced only
    when `ssa export` wrote it (checked again here, as the plan's check may be stale)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(out):
        os.replace(staged, out)
        return
    if not written_by_export(out):
        raise SSAError(
            f"--out {out} exists and was not written by `ssa export`; ssa replaces only its "
            f"own exports: pass a new path"
        )
    old = out.parent / f"{io.TMP_PREFIX}old-{out.name}"
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)
    os.replace(out, old)
    os.replace(staged, out)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)


class Exporter:
    """One format. `write_image` runs once per image (on the rank that owns it) and writes that
    image's part and files into the staging folder; `finish` runs once on rank 0 after every
    part is in, and returns the staged file or folder to move onto `--out`."""

    name = ""
    needs_images = False  # True: --data-dir is required
    shardable = True  # False: --world-size is refused

    def check(self, plan: ExportPlan) -> None:
        """Refuse a class list or option the format cannot use (before any image is read)."""

    def write_image(self, plan: ExportPlan, image: RunImage, staging: Path) -> None:
        raise NotImplementedError

    def finish(self, plan: ExportPlan, staging: Path) -> Path:
        raise NotImplementedError


def category_colors(plan: ExportPlan) -> np.ndarray:
    """`(C, 3) uint8`: the dataset's palette (Cityscapes) or the default one."""
    from ssa.datasets import get_dataset

    return get_dataset(plan.cfg.dataset).palette_array(plan.num_classes)
