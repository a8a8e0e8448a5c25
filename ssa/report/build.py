"""Build the report: one pass over the run's images (each image's pictures and page written,
a few numbers kept), then the pages that need every image (gallery, class filter, review
queue, index with the class table and charts).

Memory stays flat with the number of images: per image only its row (`ImageRow`: a name, three
numbers, the classes present) is kept; pixel counts, the confusion matrices and the mask-area
histogram are summed as they come.

Scores (with ground truth) come from ssa's own evaluation code: `plan_eval` pairs the images
with their ground truth, `score` gives each image's confusion matrices, and `build_report`
turns their sum into the same JSON `ssa eval --json` writes. Failed images count as all wrong
(as `ssa eval --allow-missing` counts them).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssa import io
from ssa.errors import SSAError
from ssa.report import charts, pages
from ssa.report import thumbnails as th
from ssa.report.folder import Writer, check_out, claim
from ssa.report.run_files import (
    RunEntry,
    list_entries,
    read_document,
    read_eval_json,
    read_settings,
)

if TYPE_CHECKING:
    from ssa.config import RunConfig

DEFAULT_REVIEW = 50
DEFAULT_PAGE_SIZE = 60
MAX_FAILURES_SHOWN = 200


@dataclass
class ReportOptions:
    """What `ssa report` needs. pred_dir: the run's out-dir; out: the report folder (default
    `<pred_dir>/report`); dataset/data_dir/split/gt_dir/classes: as in `ssa eval` (data_dir
    also finds the images; scores need ground truth: `gt_dir` for `folder`, else a dataset
    with its own labels); limit: the first N images only (as the run's `--limit`); scores:
    False leaves the ground truth out; review: how many images the review queue lists;
    page_size: thumbnails per gallery page."""

    pred_dir: Path
    out: Path | None = None
    dataset: str | None = None
    data_dir: Path | None = None
    split: str | None = None
    gt_dir: Path | None = None
    classes: Path | None = None
    limit: int | None = None
    scores: bool = True
    review: int = DEFAULT_REVIEW
    page_size: int = DEFAULT_PAGE_SIZE

    @classmethod
    def for_run(cls, cfg: RunConfig) -> ReportOptions:
        """`ssa run --report`: the run's out-dir, its images (`--limit` included), scored
        when the run is (`--eval`), with its ground truth."""
        return cls(pred_dir=Path(cfg.out_dir), dataset=cfg.dataset, data_dir=cfg.data_dir,
                   split=cfg.split, gt_dir=cfg.gt_dir, limit=cfg.limit,
                   scores=bool(cfg.evaluate))


@dataclass
class ImageRow:
    """What the pages that list images keep of one labelled image (`index`: its page number)."""

    index: int
    name: str
    masks: int
    miou: float | None  # percent, with ground truth
    disagree: float | None  # percent of labelled pixels where voted != branch, with a branch map
    low_confidence: float | None  # percent: 100 * (1 - area-weighted mean predicted_iou)
    classes: bytes  # the class ids present (voted or ground truth), int32 bytes


@dataclass
class Totals:
    """Sums over the images: voted pixels per class, masks and predicted_iou per class, the
    mask-area histogram, and the outputs' write times."""

    num_classes: int
    pixels: np.ndarray = field(init=False)
    masks: np.ndarray = field(init=False)
    score_sum: np.ndarray = field(init=False)
    unclassed_masks: int = 0
    areas: np.ndarray = field(default_factory=lambda: np.zeros(len(charts.AREA_BINS) - 1,
                                                               dtype=np.int64))
    first_write: float = math.inf
    last_write: float = -math.inf

    def __post_init__(self) -> None:
        self.pixels = np.zeros(self.num_classes, dtype=np.int64)
        self.masks = np.zeros(self.num_classes, dtype=np.int64)
        self.score_sum = np.zeros(self.num_classes, dtype=np.float64)


@dataclass
class ReportResult:
    """Where the report is and what it holds."""

    out: Path
    index: Path
    num_images: int
    num_failed: int
    bytes_written: int
    scored: bool


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * value


def _pick_dataset(options: ReportOptions, names: list[str]) -> str:
    """--dataset, else the dataset whose classes are the run's (for its palette), else folder."""
    from ssa.datasets import DATASETS

    if options.dataset is not None:
        return options.dataset
    for name, spec in DATASETS.items():
        if spec.classes is not None and list(spec.classes) == names:
            return name
    return "folder"


def _wants_scores(options: ReportOptions, dataset: str) -> bool:
    if not options.scores:
        return False
    if options.gt_dir is not None:
        return True
    return options.dataset not in (None, "folder") and options.data_dir is not None


def _first_names(pred_dir: Path, entries: list[RunEntry]) -> list[str]:
    for entry in entries:
        if entry.status == "done":
            names = read_document(entry.paths(pred_dir)["semantic"]).get("class_names")
            if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
                return list(names)
            raise SSAError(
                f"{entry.paths(pred_dir)['semantic']} has no 'class_names'; `ssa report` reads "
                f"`ssa run` outputs (an `ssa engine` run has no label maps)"
            )
    return []


def build_report(
    options: ReportOptions,
    on_start: Callable[[int], None] | None = None,
    on_image: Callable[[], None] | None = None,
) -> ReportResult:
    """Write the report folder (see docs/report.md) and return where its index.html is.

    on_start(n) is called with the number of labelled images, on_image() after each.
    Raises SSAError (one line) for a bad option, a folder ssa did not write, unreadable outputs.
    """
    from ssa.datasets import get_dataset

    pred_dir = Path(options.pred_dir)
    out = Path(options.out) if options.out is not None else pred_dir / "report"
    if options.review < 0:
        raise SSAError(f"--review {options.review} must be 0 or more")
    if options.page_size < 1:
        raise SSAError(f"--page-size {options.page_size} must be at least 1")
    get_dataset(options.dataset or "folder")  # an unknown name: one line, before any reading
    root, entries, failures = list_entries(pred_dir, options.data_dir, options.dataset or
                                           "folder", options.split, options.limit, skip=out)
    out = check_out(out, pred_dir, {"--pred-dir": pred_dir, "--data-dir": options.data_dir,
                                    "--gt-dir": options.gt_dir}, root)
    run_names = _first_names(pred_dir, entries)
    dataset = _pick_dataset(options, run_names)
    plan = None
    if _wants_scores(options, dataset):
        plan = _plan_scores(options, pred_dir, entries)
    names = plan.class_names if plan is not None else run_names
    if plan is not None and run_names and len(run_names) != len(names):
        raise SSAError(f"the run has {len(run_names)} classes but --dataset {dataset} has "
                       f"{len(names)}; pass the --dataset the run used")
    if not names:
        names = ["(none)"]  # every image failed: the pages still open
    claim(out, pred_dir)
    writer = Writer(out)
    ctx = _Context(options, pred_dir, dataset, names, plan, writer)
    done = [e for e in entries if e.status == "done"]
    if on_start is not None:
        on_start(len(done))
    rows = []
    for index, entry in enumerate(done):
        rows.append(ctx.image(index, entry, len(done)))
        if on_image is not None:
            on_image()
    failed_items = [it for it in (plan.items if plan else []) if it.pred is None]
    if plan is not None and failed_items:
        from ssa.evaluation.evaluate import score

        ctx.add_counts(score(plan, items=failed_items, workers=1))
    ctx.finish(rows, entries, failures)
    writer.remove_stale()
    return ReportResult(out, out / "index.html", len(done),
                        sum(e.status == "failed" for e in entries), writer.bytes,
                        plan is not None)


def _plan_scores(options: ReportOptions, pred_dir: Path, entries: list[RunEntry]) -> Any:
    """The evaluation plan over the images the run labelled or failed (see the module doc)."""
    from ssa.evaluation.evaluate import plan_eval

    attempted = [e for e in entries if e.status in ("done", "failed")]
    if not attempted:
        return None
    if options.data_dir is not None:
        rels = [e.rel for e in attempted]
    else:  # stems only: any suffix keeps the stem (`plan_eval` names files after rel.stem)
        rels = [e.stem_rel.with_name(e.stem_rel.name + ".png") for e in attempted]
    return plan_eval(options.dataset or "folder", options.data_dir or pred_dir, pred_dir,
                     options.split, options.gt_dir, options.classes, rels,
                     allow_missing=True, partial_branch=True)


class _Context:
    """The state of one build: options, colours, the templates and the running sums."""

    def __init__(self, options: ReportOptions, pred_dir: Path, dataset: str,
                 names: list[str], plan: Any, writer: Writer) -> None:
        from ssa.datasets import get_dataset

        self.options = options
        self.pred_dir = pred_dir
        self.dataset = dataset
        self.names = names
        self.plan = plan
        self.writer = writer
        self.no_label = io.no_label_value(len(names))
        self.palette = get_dataset(dataset).palette_array(len(names))
        self.table = th.colour_table(self.palette, self.no_label)
        self.hex = ["#" + bytes(int(v) for v in c).hex() for c in self.palette]
        self.index_of = {n: i for i, n in enumerate(names)}
        self.items = {it.rel.with_suffix("").as_posix(): it for it in plan.items} if plan else {}
        self.totals = Totals(len(names))
        self.counts: Any = None
        self.env = pages.environment()
        self.any_branch = False
        self.all_branch = True

    def add_counts(self, counts: Any) -> None:
        self.counts = counts if self.counts is None else self.counts.merge(counts)

    def image(self, index: int, entry: RunEntry, total: int) -> ImageRow:
        """Everything about one labelled image: its pictures, its page, its row."""
        paths = entry.paths(self.pred_dir)
        doc = read_document(paths["semantic"])
        stat = paths["semantic"].stat()
        self.totals.first_write = min(self.totals.first_write, stat.st_mtime)
        self.totals.last_write = max(self.totals.last_write, stat.st_mtime)
        anns = doc["annotations"]
        voted = io.read_label_map(paths["label"]) if paths["label"].is_file() else None
        branch = io.read_label_map(paths["branch"]) if paths["branch"].is_file() else None
        self.any_branch |= branch is not None
        self.all_branch &= branch is not None
        size = doc.get("image") or {}
        if voted is not None:
            height, width = voted.shape
        else:
            height, width = int(size.get("height", 1)), int(size.get("width", 1))
        area = max(1, height * width)
        masks = self._masks(anns, area)

        item = self.items.get(entry.stem_rel.as_posix()) if self.plan else None
        gt = miou = None
        if item is not None:
            from ssa.evaluation.evaluate import score

            counts = score(self.plan, items=[item], workers=1)
            miou = _percent(counts.voted.compute()["miou"])
            self.add_counts(counts)
            gt = self.plan.read_gt(item.gt)

        present = np.zeros(self.no_label + 1, dtype=np.int64)
        if voted is not None:
            present = np.bincount(voted.reshape(-1), minlength=self.no_label + 1)
            self.totals.pixels += present[: len(self.names)]
        classes = set(np.flatnonzero(present[: len(self.names)]).tolist())
        gt_classes = set()
        if gt is not None:
            gt_counts = np.bincount(gt.reshape(-1).astype(np.int64),
                                    minlength=self.no_label + 1)[: len(self.names)]
            gt_classes = set(np.flatnonzero(gt_counts).tolist())
        branch_classes = set()
        disagree = None
        if branch is not None and voted is not None and branch.shape == voted.shape:
            labelled = (voted < self.no_label) | (branch < self.no_label)
            num = int(labelled.sum())
            disagree = 100.0 * int((labelled & (voted != branch)).sum()) / num if num else 0.0
            branch_classes = set(np.flatnonzero(np.bincount(
                branch.reshape(-1), minlength=self.no_label + 1)[: len(self.names)]).tolist())
        weight = sum(m["area"] for m in masks if m["score"] is not None)
        low = None
        if weight:
            mean = sum(m["area"] * m["score"] for m in masks if m["score"] is not None) / weight
            low = 100.0 * (1.0 - mean)

        pictures = self._pictures(index, entry, paths, voted, branch, gt, (height, width))
        labelled_pixels = int(present[: len(self.names)].sum())
        legend = [
            {"id": c, "name": self.names[c], "colour": self.hex[c],
             "share": 100.0 * int(present[c]) / labelled_pixels if labelled_pixels else 0.0,
             "in_gt": c in gt_classes, "in_voted": c in classes, "in_branch": c in branch_classes}
            for c in sorted(classes | gt_classes | branch_classes)
        ]
        name = entry.rel.as_posix()
        html = self.env.get_template("image.html.j2").render(
            root="../", title=name, name=name, index=index, total=total,
            prev=f"{index - 1:06d}.html" if index > 0 else None,
            next=f"{index + 1:06d}.html" if index + 1 < total else None,
            pictures=pictures, legend=legend, masks=sorted(masks, key=lambda m: -m["area"]),
            miou=miou, disagree=disagree, low_confidence=low, size=(width, height),
            original=(size.get("original_width"), size.get("original_height")),
        )
        self.writer.write(f"images/{index:06d}.html", html)
        shown = np.asarray(sorted(classes | gt_classes), dtype=np.int32)
        return ImageRow(index, name, len(masks), miou, disagree, low, shown.tobytes())

    def _masks(self, anns: list[dict[str, Any]], area: int) -> list[dict[str, Any]]:
        out = []
        totals = self.totals
        shares = []
        for number, ann in enumerate(anns):
            cls = ann.get("class_name")
            cid = self.index_of.get(cls) if isinstance(cls, str) else None
            raw = ann.get("predicted_iou")
            value = float(raw) if isinstance(raw, (int, float)) else None
            pixels = int(ann.get("area", 0) or 0)
            if cid is not None:
                totals.masks[cid] += 1
                totals.score_sum[cid] += value or 0.0
            else:
                totals.unclassed_masks += 1
            stability = ann.get("stability_score")
            shares.append(pixels / area)
            out.append({
                "number": number, "class_name": cls if isinstance(cls, str) else None,
                "colour": self.hex[cid] if cid is not None else None, "score": value,
                "stability": float(stability) if isinstance(stability, (int, float)) else None,
                "area": pixels, "share": 100.0 * pixels / area,
                "proposals": [p for p in ann.get("class_proposals") or [] if isinstance(p, str)],
            })  # fmt: skip
        if shares:
            totals.areas += np.histogram(np.clip(shares, charts.AREA_BINS[0], 1.0),
                                         charts.AREA_BINS)[0]
        return out

    def _pictures(self, index: int, entry: RunEntry, paths: dict[str, Path],
                  voted: np.ndarray | None, branch: np.ndarray | None, gt: np.ndarray | None,
                  shape: tuple[int, int]) -> list[dict[str, str]]:
        """The image page's pictures (and the gallery thumbnail), written; returns
        `[{"kind", "title", "src"}]` in display order."""
        size = th.fit(*shape, th.DISPLAY_SIDE)
        rgb = None
        if entry.image is not None:
            rgb = th.read_display_image(entry.image)
        if rgb is None and paths["vis"].is_file():
            rgb = th.read_display_image(paths["vis"])
        stem = f"{index:06d}"
        out = []
        if rgb is not None:
            rgb = th.resize_rgb(rgb, size)
            self.writer.write(f"media/{stem}-image.jpg", th.jpeg(rgb, 85))
            out.append({"kind": "image", "title": "image", "src": f"../media/{stem}-image.jpg"})
        for kind, title, labels in (("branch", "branch", branch), ("voted", "voted", voted),
                                    ("gt", "ground truth", gt)):
            if labels is None:
                continue
            small = th.shrink_labels(labels, size)
            self.writer.write(f"media/{stem}-{kind}.png",
                              th.labels_png(small, self.table, self.no_label))
            out.append({"kind": kind, "title": title, "src": f"../media/{stem}-{kind}.png"})
        thumb_size = th.fit(*shape, th.THUMB_SIDE)
        if voted is not None:
            small = th.shrink_labels(voted, thumb_size)
            thumb = th.overlay(None if rgb is None else th.resize_rgb(rgb, thumb_size), small,
                               self.table, self.no_label)
        elif rgb is not None:
            thumb = th.resize_rgb(rgb, thumb_size)
        else:
            thumb = np.full((*thumb_size, 3), th.NO_CLASS_RGB, dtype=np.uint8)
        self.writer.write(f"thumbs/{stem}.jpg", th.jpeg(thumb, 80))
        return out

    # The pages that need every image.

    def finish(self, rows: list[ImageRow], entries: list[RunEntry],
               failures: list[dict[str, Any]]) -> None:
        measure, ordered = self._order(rows)
        page_size = self.options.page_size
        num_pages = max(1, -(-len(ordered) // page_size))
        class_counts = self._class_pages(ordered, measure, page_size)
        filters = [{"id": c, "name": self.names[c], "count": n,
                    "pages": -(-n // page_size)} for c, n in enumerate(class_counts) if n]
        for page in range(num_pages):
            chunk = ordered[page * page_size:(page + 1) * page_size]
            html = self.env.get_template("gallery.html.j2").render(
                root="", title=f"gallery {page + 1} of {num_pages}", page=page + 1,
                pages=num_pages, cards=[_card(r, measure) for r in chunk], filters=filters,
                measure=measure, total=len(ordered),
            )
            self.writer.write(f"gallery-{page + 1}.html", html)
        self.writer.write("class.html", self.env.get_template("class.html.j2").render(
            root="", title="gallery by class", filters=filters, measure=measure))
        self._review(ordered, measure)
        self._index(rows, entries, failures, measure, class_counts)
        for name in ("report.css", "report.js"):
            data = resources.files("ssa.report").joinpath("static", name).read_bytes()
            self.writer.write(f"assets/{name}", data)

    def _order(self, rows: list[ImageRow]) -> tuple[dict[str, str], list[ImageRow]]:
        """The worst-first order and what it is measured by (see docs/report.md)."""
        if self.plan is not None:
            key = "miou"
            measure = {"key": key, "label": "mIoU", "unit": "%",
                       "about": "per-image mIoU against the ground truth, lowest first"}
            ordered = sorted(rows, key=lambda r: (r.miou is None, r.miou or 0.0, r.index))
        elif self.any_branch and self.all_branch:
            measure = {"key": "disagree", "label": "vote changed", "unit": "%",
                       "about": "share of labelled pixels whose voted class differs from the "
                                "branch's, highest first (where voting overruled the "
                                "segmentor most)"}
            ordered = sorted(rows, key=lambda r: (-(r.disagree or 0.0), r.index))
        else:
            measure = {"key": "low_confidence", "label": "low confidence", "unit": "%",
                       "about": "100 x (1 - the area-weighted mean predicted_iou of the "
                                "image's masks), highest first (no branch maps: run with "
                                "--save-branch to sort by where voting changed the labels)"}
            ordered = sorted(rows, key=lambda r: (-(r.low_confidence or 0.0), r.index))
        return measure, ordered

    def _class_pages(self, ordered: list[ImageRow], measure: dict[str, str],
                     page_size: int) -> list[int]:
        """`data/class-<id>-<page>.js` for the class filter; returns images per class."""
        per_class: list[list[int]] = [[] for _ in self.names]
        for position, row in enumerate(ordered):
            for c in np.frombuffer(row.classes, dtype=np.int32).tolist():
                per_class[c].append(position)
        for c, positions in enumerate(per_class):
            pages_n = -(-len(positions) // page_size)
            for page in range(pages_n):
                chunk = positions[page * page_size:(page + 1) * page_size]
                cards = [_card(ordered[p], measure) for p in chunk]
                payload = {"class": c, "page": page + 1, "pages": pages_n,
                           "total": len(positions), "cards": cards}
                self.writer.write(f"data/class-{c}-{page + 1}.js", pages.js_call("SSA.show",
                                                                                 payload))
        return [len(p) for p in per_class]

    def _review(self, ordered: list[ImageRow], measure: dict[str, str]) -> None:
        worst = ordered[: self.options.review]
        listing = "".join(r.name + "\n" for r in worst)
        self.writer.write("review.txt", listing)
        command = self._export_command()
        self.writer.write("review.html", self.env.get_template("review.html.j2").render(
            root="", title="review queue", cards=[_card(r, measure) for r in worst],
            measure=measure, command=command, total=len(ordered)))

    def _export_command(self) -> str:
        """`ssa export --format label-studio` of exactly the review queue's images."""
        o = self.options
        pred = self.pred_dir.resolve()
        parts = ["ssa", "export", "--format", "label-studio", "--pred-dir", str(pred)]
        if o.data_dir is not None:
            if o.dataset not in (None, "folder"):  # the listing's dataset, not the palette's
                parts += ["--dataset", o.dataset]
            parts += ["--data-dir", str(Path(o.data_dir).resolve())]
            if o.split:
                parts += ["--split", o.split]
        else:
            parts += ["--data-dir", "DATA_DIR"]
        parts += ["--images", str(self.writer.out / "review.txt"),
                  "--out", str(pred.parent / f"{pred.name}-review-label-studio")]
        return " ".join("DATA_DIR" if p == "DATA_DIR" else shlex.quote(p) for p in parts)

    def _index(self, rows: list[ImageRow], entries: list[RunEntry],
               failures: list[dict[str, Any]], measure: dict[str, str],
               class_counts: list[int]) -> None:
        from ssa.evaluation.evaluate import build_report as eval_report
        from ssa.evaluation.evaluate import delta

        scores = None
        source = None
        if self.counts is not None:
            scores = eval_report(self.counts, self.names)
            source = "scored now against the ground truth (as `ssa eval --json` writes it)"
        elif (saved := read_eval_json(self.pred_dir)) is not None and \
                list(saved["per_class"]) == self.names:
            scores = saved
            source = "from the run's eval.json (`ssa eval` / `ssa run --eval`)"
        t = self.totals
        labelled = int(t.pixels.sum())
        branch = (scores or {}).get("branch")
        table = []
        for c, name in enumerate(self.names):
            s = (scores or {}).get("per_class", {}).get(name, {})
            b = (branch or {}).get("per_class", {}).get(name, {}) if branch else {}
            row = {
                "id": c, "name": name, "colour": self.hex[c],
                "share": 100.0 * int(t.pixels[c]) / labelled if labelled else 0.0,
                "pixels": int(t.pixels[c]), "masks": int(t.masks[c]), "images": class_counts[c],
                "score": float(t.score_sum[c] / t.masks[c]) if t.masks[c] else None,
                "iou": s.get("iou"), "acc": s.get("acc"), "branch_iou": b.get("iou"),
                "delta": delta(s.get("iou"), b.get("iou")) if branch else None,
            }  # fmt: skip
            seen = row["pixels"] or row["masks"] or row["iou"] is not None
            if seen:
                table.append(row)
        charts_shown = []
        self.writer.write("charts/areas.png", charts.area_histogram(t.areas))
        charts_shown.append({"src": "charts/areas.png", "title": "mask areas",
                             "about": "masks per size bin: mask area / image area, log scale"})
        if scores is not None:
            ious = [scores["per_class"][n]["iou"] for n in self.names]
            branch_ious = [branch["per_class"][n]["iou"] for n in self.names] if branch else None
            self.writer.write("charts/iou.png", charts.iou_bars(self.names, ious, branch_ious))
            charts_shown.insert(0, {"src": "charts/iou.png", "title": "IoU per class",
                                    "about": "voted IoU (bars), the branch's (ticks), worst "
                                             "class first"})
        if self.counts is not None:
            self.writer.write("charts/confusion.png",
                              charts.confusion(self.names, self.counts.voted.mat.numpy()))
            charts_shown.insert(1, {"src": "charts/confusion.png", "title": "confusion matrix",
                                    "about": "rows: ground truth, columns: voted class; each "
                                             "row divided by its pixels"})
        settings = read_settings(self.pred_dir)
        statuses = {s: sum(e.status == s for e in entries) for s in ("done", "failed", "missing")}
        span = None
        if rows and math.isfinite(t.first_write):
            span = {"first": _when(t.first_write), "last": _when(t.last_write),
                    "seconds": t.last_write - t.first_write}
        html = self.env.get_template("index.html.j2").render(
            root="", title="ssa report", pred_dir=str(self.pred_dir), dataset=self.dataset,
            settings=settings.get("settings") or {}, version=settings.get("ssa_version"),
            started=_when(settings["mtime"]) if settings.get("mtime") else None, span=span,
            statuses=statuses, failures=failures[:MAX_FAILURES_SHOWN],
            more_failures=max(0, len(failures) - MAX_FAILURES_SHOWN), table=table,
            hidden=len(self.names) - len(table), scores=scores, source=source,
            branch=branch is not None, charts=charts_shown, measure=measure,
            num_masks=int(t.masks.sum()) + t.unclassed_masks, unclassed=t.unclassed_masks,
            partial_branch=bool(self.plan is not None and self.plan.partial_branch),
            scored_failed=bool(self.plan is not None and self.plan.missing),
        )
        self.writer.write("index.html", html)


def _card(row: ImageRow, measure: dict[str, str]) -> dict[str, Any]:
    value = getattr(row, measure["key"])
    return {"index": row.index, "name": row.name, "masks": row.masks,
            "value": None if value is None else round(value, 2)}


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
