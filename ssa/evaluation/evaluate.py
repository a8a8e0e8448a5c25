"""Score a folder of `ssa run` predictions against a dataset's ground truth.

Three steps, so ranks can each score a share and sum their counts:
`plan_eval` (cheap: pairs every image with its ground truth and prediction files, stats only) ->
`score` (reads the PNGs of any subset of the plan's items in a thread pool, returns confusion
matrices) -> `build_report` (percent figures, JSON-ready). `evaluate` does all three in one
process; `write_json` / `write_csv` save a report.

Predictions are `<pred_dir>/<rel.parent>/<rel.stem>_semantic.png` (and, when `ssa run
--save-branch` wrote them, `<rel.stem>_branch.png`), class indices 0..C-1 with 255 (65535 when
C > 255) = no label. Ground truth follows the dataset (see `ssa.datasets`); for `folder` it is
`<gt_dir>/<rel.parent>/<rel.stem>.png` of class indices with the same "no label" value, ignored.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ssa.datasets import DatasetSpec, get_dataset
from ssa.errors import SSAError
from ssa.io import read_label_map

if TYPE_CHECKING:
    from ssa.config import RunConfig

MAX_NAMED = 5  # how many missing files an error message names


@dataclass(frozen=True)
class EvalItem:
    """One image to score: its relative path and the files that hold its labels.

    `pred` / `branch` are None when the file is absent (allowed only with `allow_missing`; the
    image then counts as all wrong).
    """

    rel: Path
    gt: Path
    pred: Path | None
    branch: Path | None


@dataclass
class EvalPlan:
    """Everything `score` needs; identical on every rank (built from stats, no pixels read)."""

    dataset: str
    class_names: list[str]
    ignore_index: int
    items: list[EvalItem]
    has_branch: bool
    read_gt: Callable[[Path], np.ndarray] = field(repr=False)
    missing: list[Path] = field(default_factory=list)  # rels with no `_semantic.png`
    missing_branch: list[Path] = field(default_factory=list)  # rels with no `_branch.png`
    # Branch maps scored only where they exist (`ssa run --eval` over images done partly
    # without --save-branch): the missing ones add nothing to the branch column.
    partial_branch: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def prediction_paths(pred_dir: Path, rel: Path) -> tuple[Path, Path]:
    """The voted and the branch label maps of image `rel` (the paths `ssa run` writes)."""
    base = Path(pred_dir) / rel.parent
    return base / f"{rel.stem}_semantic.png", base / f"{rel.stem}_branch.png"


def load_class_names(path: Path) -> list[str]:
    """Class names from a file: a `.json` list or object with `class_names` (such as a
    `<stem>_semantic.json` of `ssa run`), else text with one name per line (blank lines skipped).
    """
    path = Path(path)
    if not path.is_file():
        raise SSAError(f"--classes {path} does not exist; pass a file with one class name per line")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as exc:
            raise SSAError(f"--classes {path} is not valid JSON ({exc}); fix the file") from None
        names = data.get("class_names") if isinstance(data, dict) else data
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SSAError(
                f"--classes {path} must hold a list of names or an object with 'class_names'"
            )
    else:
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise SSAError(f"--classes {path} holds no class names; one name per line")
    return names


def _names_from_predictions(pred_dir: Path, rels: Sequence[Path]) -> list[str] | None:
    # `ssa run` stores the run's class names in every `<stem>_semantic.json`.
    for rel in rels:
        path = Path(pred_dir) / rel.parent / f"{rel.stem}_semantic.json"
        if path.is_file():
            try:
                names = json.loads(path.read_text()).get("class_names")
            except (ValueError, AttributeError):
                continue
            if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
                return names
    return None


def _name_some(paths: Sequence[Path]) -> str:
    names = ", ".join(str(p) for p in paths[:MAX_NAMED])
    return names + (f" and {len(paths) - MAX_NAMED} more" if len(paths) > MAX_NAMED else "")


def plan_eval(
    dataset: str,
    data_dir: Path,
    pred_dir: Path,
    split: str | None = None,
    gt_dir: Path | None = None,
    classes: Sequence[str] | Path | None = None,
    rels: Sequence[Path] | None = None,
    allow_missing: bool = False,
    partial_branch: bool = False,
) -> EvalPlan:
    """Pair every image of the dataset (or the given relative paths) with its files.

    Class names: the dataset's own; for `folder`, `classes` (names or a file, see
    `load_class_names`), else the `class_names` of the first `<stem>_semantic.json` under
    pred_dir. Branch maps are scored when any `<stem>_branch.png` exists.
    Raises SSAError for missing ground truth, and for missing predictions unless allow_missing.
    """
    from ssa.io import no_label_value

    spec: DatasetSpec = get_dataset(dataset)
    pred_dir = Path(pred_dir)
    if not pred_dir.is_dir():
        raise SSAError(f"--pred-dir {pred_dir} is not a folder; pass the --out-dir of `ssa run`")
    if rels is None:
        _, rels = spec.list_images(Path(data_dir), split, pred_dir)
    rels = [Path(r) for r in rels]
    if not rels:
        raise SSAError(f"no images to score under --data-dir {data_dir}; check it and --dataset")

    if spec.classes is None:
        if gt_dir is None:
            raise SSAError("--dataset folder needs --gt-dir, a folder of <stem>.png class indices")
        gt_dir = Path(gt_dir)
        if not gt_dir.is_dir():
            raise SSAError(f"--gt-dir {gt_dir} is not a folder; pass the ground-truth folder")
        if isinstance(classes, (str, Path)):
            names = load_class_names(Path(classes))
        elif classes is not None:
            names = list(classes)
        else:
            found = _names_from_predictions(pred_dir, rels)
            if found is None:
                raise SSAError(
                    f"no class names: no <stem>_semantic.json with 'class_names' under {pred_dir}; "
                    f"pass --classes FILE (one name per line)"
                )
            names = found
        read_gt: Callable[[Path], np.ndarray] = read_label_map
    else:
        if gt_dir is not None:
            raise SSAError(
                f"--gt-dir is for --dataset folder; {spec.name} ground truth is found under "
                f"--data-dir"
            )
        if classes is not None:
            raise SSAError(f"--classes is for --dataset folder; {spec.name} has its own classes")
        names = list(spec.classes)
        read_gt = spec.read_gt

    items: list[EvalItem] = []
    no_gt: list[Path] = []
    missing: list[Path] = []
    missing_branch: list[Path] = []
    any_branch = False
    for rel in rels:
        if spec.classes is None:
            gt: Path | None = gt_dir / rel.parent / f"{rel.stem}.png"  # type: ignore[operator]
            gt = gt if gt.is_file() else None  # type: ignore[union-attr]
        else:
            gt = spec.gt_path(Path(data_dir), split, rel)
        if gt is None:
            no_gt.append(rel)
            continue
        pred, branch = prediction_paths(pred_dir, rel)
        has_pred, has_branch = pred.is_file(), branch.is_file()
        any_branch |= has_branch
        if not has_pred:
            missing.append(rel)
        items.append(EvalItem(rel, gt, pred if has_pred else None, branch if has_branch else None))
    if no_gt:
        where = "--gt-dir" if spec.classes is None else "--data-dir / --split"
        raise SSAError(
            f"no ground truth for {len(no_gt)} of {len(rels)} images: {_name_some(no_gt)}; "
            f"check {where}"
        )
    if any_branch:
        missing_branch = [item.rel for item in items if item.branch is None]
    if not allow_missing and (missing or (missing_branch and not partial_branch)):
        kind, which = ("_semantic.png", missing) if missing else ("_branch.png", missing_branch)
        raise SSAError(
            f"no {kind} prediction under {pred_dir} for {len(which)} of {len(items)} images: "
            f"{_name_some(which)}; run `ssa run` on them, or pass --allow-missing to count them "
            f"as all wrong"
        )
    return EvalPlan(
        dataset=spec.name,
        class_names=names,
        ignore_index=no_label_value(len(names)),
        items=items,
        has_branch=any_branch,
        read_gt=read_gt,
        missing=missing,
        missing_branch=missing_branch,
        partial_branch=partial_branch and bool(missing_branch),
    )


@dataclass
class EvalCounts:
    """Summable scores of a set of images: confusion matrices and the image count."""

    voted: Any  # ssa.evaluation.metrics.ConfusionMatrix
    branch: Any | None
    num_images: int = 0

    def merge(self, other: EvalCounts) -> EvalCounts:
        self.voted.merge(other.voted)
        if self.branch is not None and other.branch is not None:
            self.branch.merge(other.branch)
        self.num_images += other.num_images
        return self

    def all_reduce(self, group: Any = None) -> EvalCounts:
        """Sum over every rank (no-op unless torch.distributed is initialised); all ranks call it
        with the same plan, so the branch matrix exists everywhere or nowhere."""
        import torch

        from ssa.distributed import sum_over_ranks

        self.voted.all_reduce(group)
        if self.branch is not None:
            self.branch.all_reduce(group)
        count = torch.tensor([self.num_images], dtype=torch.int64)
        self.num_images = int(sum_over_ranks(count, group).item())
        return self


def _score_item(plan: EvalPlan, item: EvalItem) -> tuple[Any, Any | None]:
    """The (voted, branch) confusion matrices of one image; branch None unless plan.has_branch."""
    from ssa.evaluation.metrics import missing_confmat, update_confmat

    gt = plan.read_gt(item.gt)
    paths = [item.pred, item.branch] if plan.has_branch else [item.pred]
    out = []
    for path in paths:
        if path is None:  # absent file, allowed by allow_missing
            wrong = missing_confmat(gt, plan.num_classes, plan.ignore_index)
            # A branch map that --save-branch did not write for this image: not counted.
            out.append(wrong * 0 if out and plan.partial_branch else wrong)
            continue
        pred = read_label_map(path)
        if pred.shape != gt.shape:
            raise SSAError(
                f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} but its ground truth "
                f"{item.gt} is {gt.shape[1]}x{gt.shape[0]} (WxH); predictions must keep the "
                f"image's size"
            )
        try:
            out.append(update_confmat(pred, gt, plan.num_classes, plan.ignore_index))
        except SSAError as exc:
            raise SSAError(f"{item.gt}: {exc}") from None
    return out[0], (out[1] if plan.has_branch else None)


def default_workers() -> int:
    """Threads for reading: PNG decoding and bincount release the GIL for most of their work."""
    return max(2, min(16, 2 * (os.cpu_count() or 1)))


def score(
    plan: EvalPlan,
    items: Iterable[EvalItem] | None = None,
    workers: int | None = None,
    on_image: Callable[[EvalItem], None] | None = None,
) -> EvalCounts:
    """Confusion matrices of the plan's items (or a share of them), read in a thread pool.

    Returns counts to `merge` or `all_reduce` with other shares. on_image(item) follows each
    image. Raises SSAError naming the file on a size mismatch or an unreadable map.
    """
    from ssa.evaluation.metrics import ConfusionMatrix

    todo = list(plan.items if items is None else items)
    counts = EvalCounts(
        ConfusionMatrix(plan.num_classes, plan.ignore_index),
        ConfusionMatrix(plan.num_classes, plan.ignore_index) if plan.has_branch else None,
    )
    workers = workers or default_workers()
    window = 4 * workers  # bounded look-ahead keeps memory flat on large datasets
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ssa-eval") as pool:
        pending: list[tuple[EvalItem, Future]] = []
        position = 0
        while position < len(todo) or pending:
            while position < len(todo) and len(pending) < window:
                item = todo[position]
                pending.append((item, pool.submit(_score_item, plan, item)))
                position += 1
            item, future = pending.pop(0)
            try:
                voted, branch = future.result()
            except BaseException:
                for _, other in pending:
                    other.cancel()
                raise
            counts.voted.mat += voted
            if counts.branch is not None:
                counts.branch.mat += branch
            counts.num_images += 1
            if on_image:
                on_image(item)
    return counts


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else 100.0 * value


def _scores(confmat: Any, class_names: Sequence[str], num_images: int) -> dict[str, Any]:
    metrics = confmat.compute()
    iou, acc = metrics["iou"].tolist(), metrics["acc"].tolist()
    return {
        "miou": _percent(metrics["miou"]),
        "aacc": _percent(metrics["aacc"]),
        "macc": _percent(metrics["macc"]),
        "num_images": num_images,
        "per_class": {
            name: {"iou": _percent(i), "acc": _percent(a)}
            for name, i, a in zip(class_names, iou, acc)
        },
    }


def build_report(counts: EvalCounts, class_names: Sequence[str]) -> dict[str, Any]:
    """`{"miou", "aacc", "macc", "num_images", "per_class": {name: {"iou", "acc"}}}` in percent,
    classes in index order, None for NaN; plus `"branch": {...same keys...}` when branch maps
    were scored. Class names must be unique (they are the keys)."""
    if len(set(class_names)) != len(class_names):
        raise SSAError("class names must be unique to key the report; fix --classes")
    report = _scores(counts.voted, class_names, counts.num_images)
    if counts.branch is not None:
        report["branch"] = _scores(counts.branch, class_names, counts.num_images)
    return report


def evaluate(
    dataset: str,
    data_dir: Path,
    pred_dir: Path,
    split: str | None = None,
    gt_dir: Path | None = None,
    classes: Sequence[str] | Path | None = None,
    rels: Sequence[Path] | None = None,
    allow_missing: bool = False,
    workers: int | None = None,
    on_image: Callable[[EvalItem], None] | None = None,
) -> tuple[EvalPlan, EvalCounts, dict[str, Any]]:
    """Plan, score and report in one process (see `plan_eval`, `score`, `build_report`)."""
    plan = plan_eval(dataset, data_dir, pred_dir, split, gt_dir, classes, rels, allow_missing)
    counts = score(plan, workers=workers, on_image=on_image)
    return plan, counts, build_report(counts, plan.class_names)


def delta(voted: float | None, branch: float | None) -> float | None:
    """voted - branch in percentage points, None when either is undefined."""
    return None if voted is None or branch is None else voted - branch


def write_json(path: Path, report: dict[str, Any]) -> None:
    from ssa import io

    io.write_json(Path(path), report)


def write_csv(path: Path, report: dict[str, Any]) -> None:
    """One row per class in index order: `class_id, class, iou, acc` (percent, empty for NaN), plus
    `branch_iou, branch_acc, delta_iou, delta_acc` when the report has a branch."""
    branch = report.get("branch")
    header = ["class_id", "class", "iou", "acc"]
    if branch:
        header += ["branch_iou", "branch_acc", "delta_iou", "delta_acc"]

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    from io import StringIO

    from ssa.io import write_text

    buffer = StringIO(newline="")  # the whole table, then one atomic write (whole or absent)
    writer = csv.writer(buffer)
    writer.writerow(header)
    for index, (name, scores) in enumerate(report["per_class"].items()):
        row = [str(index), name, cell(scores["iou"]), cell(scores["acc"])]
        if branch:
            b = branch["per_class"][name]
            row += [cell(b["iou"]), cell(b["acc"]), cell(delta(scores["iou"], b["iou"])),
                    cell(delta(scores["acc"], b["acc"]))]
        writer.writerow(row)
    write_text(Path(path), buffer.getvalue())


def check_run_eval(cfg: RunConfig) -> None:
    """Fail before a long `ssa run --eval` when scoring could not happen afterwards."""
    if not cfg.evaluate:
        return
    spec = get_dataset(cfg.dataset)
    if spec.classes is None and cfg.gt_dir is None:
        raise SSAError("--eval on --dataset folder needs --gt-dir, a folder of <stem>.png labels")
    if spec.classes is not None and cfg.gt_dir is not None:
        raise SSAError(f"--gt-dir is for --dataset folder; {spec.name} ground truth is under "
                       f"--data-dir")


def plan_run_eval(plan: Any, allow_missing: bool = False) -> EvalPlan:
    """The plan that scores a finished `ssa run` (a `ssa.plan.RunPlan`): the same images
    (`--limit` included), its out_dir as the predictions, class names from its JSON for
    `folder`."""
    images = plan.images
    return plan_eval(images.dataset, images.data_dir, plan.outputs.out_dir, images.split,
                     plan.gt_dir, None, list(images.rels), allow_missing, partial_branch=True)


EVAL_JSON = "eval.json"  # written into the out_dir by `ssa run --eval`


def evaluate_run(
    run: Any,
    group: Any,
    summary: Any,
    single: Callable[[EvalPlan, Path], dict[str, Any]] | None = None,
    on_report: Callable[[dict[str, Any], EvalPlan], None] | None = None,
) -> dict[str, Any] | None:
    """`--eval` after a run (`ssa.run.runner.run_rank`): each rank scores a strided share of the
    images, the confusion matrices are summed with one all-reduce, and rank 0 writes
    `<out_dir>/eval.json` and returns the report (None on the other ranks, and on every rank when
    an image failed: the summary covers all ranks, so all of them skip).

    single(plan, json_path): scores one process's run instead (e.g. with a progress bar);
    on_report(report, plan): called on rank 0 with the report (e.g. to print it).
    """
    import torch

    from ssa.distributed import shard

    if summary.failed:
        return None
    out_json = Path(run.outputs.out_dir) / EVAL_JSON
    main = group.info.is_main
    if not group.info.distributed and single is not None:
        return single(plan_run_eval(run), out_json)
    group.barrier()  # every rank's outputs are in place before any rank reads them
    plan = plan_run_eval(run)  # the same on every rank: built from the sorted image list
    counts = score(plan, items=shard(plan.items, group.info.rank, group.info.world_size))
    parts = [counts.voted.mat, torch.tensor([counts.num_images], dtype=torch.int64)]
    if counts.branch is not None:
        parts.append(counts.branch.mat)
    summed = group.all_reduce_sum_many(parts)
    counts.voted.mat, counts.num_images = summed[0], int(summed[1].item())
    if counts.branch is not None:
        counts.branch.mat = summed[2]
    if not main:
        return None
    report = build_report(counts, plan.class_names)
    if on_report is not None:
        on_report(report, plan)
    write_json(out_json, report)
    return report
