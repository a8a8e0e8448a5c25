"""The rank loop: list the images, clean up after a killed run, skip done images, shard the rest
across the ranks, label this rank's share, gather every rank's summary; and the process group's
life around it (`run_rank`: rank device, group, `--eval` after the run).

Progress is reported through callbacks (`on_start`, `on_image`, `download_progress`), so this
module works from Python under torchrun without rich:

    from ssa.config import RunConfig
    from ssa.plan import plan_run
    from ssa.run.runner import run_rank
    summary = run_rank(plan_run(RunConfig(dataset="ade20k", data_dir=..., out_dir=...)))
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssa import io
from ssa.distributed import Group, RankInfo, rank_device, shard, shard_indices
from ssa.errors import SSAError
from ssa.run.outputs import FAILURES_FILE, ImageResult, is_done, record_failure, write_failures
from ssa.words import plural

if TYPE_CHECKING:
    from ssa.plan import RunPlan

log = logging.getLogger(__name__)

# A worker: this rank's relative paths, and a callback for each result the moment it is final
# (its JSON written, or failed); it yields the results too (`ssa.run.prefetch.process_overlapped`).
Worker = Callable[[list[Path], Callable[[ImageResult], None]], Iterable[ImageResult]]


@dataclass
class RunSummary:
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0
    num_masks: int = 0
    removed_temps: int = 0  # temporary files a killed run had left
    # The mask generator's candidates and what each filter dropped, summed over the images
    # whose source counts them (the fast generator): says why a run found no masks.
    filters: dict[str, int] = field(default_factory=dict)

    def add_filters(self, counts: dict[str, int] | None) -> None:
        for key, value in (counts or {}).items():
            self.filters[key] = self.filters.get(key, 0) + value


def _check_same_images(rels: list[Path], group: Group) -> None:
    """Every rank lists the images itself; shares are only disjoint when the lists agree."""
    import hashlib

    digest = hashlib.sha1("\n".join(r.as_posix() for r in rels).encode()).hexdigest()
    seen = group.all_gather_object((len(rels), digest))
    if len(set(seen)) > 1:
        counts = ", ".join(f"rank {r}: {n}" for r, (n, _) in enumerate(seen))
        raise SSAError(
            f"the ranks see different image lists ({counts} images); put --data-dir on a "
            f"filesystem every machine sees at the same path"
        )


def _done_flags(
    out_dir: Path, rels: list[Path], group: Group, since: int | bool | None
) -> list[bool]:
    """Which images are done (see `dataset_loop`'s `since`): each rank checks a strided share,
    one all-reduce combines them."""
    import torch

    flags = torch.zeros(len(rels), dtype=torch.uint8)
    if since is not True:
        mark = None if since in (None, False) else int(since)
        for i in shard_indices(len(rels), group.info.rank, group.info.world_size):
            flags[i] = is_done(out_dir, rels[i], mark)
    return group.all_reduce_sum(flags).bool().tolist()


def _merge(parts: list[RunSummary]) -> RunSummary:
    out = RunSummary(total=parts[0].total, skipped=parts[0].skipped,
                     removed_temps=sum(p.removed_temps for p in parts))
    for part in parts:
        out.done += part.done
        out.num_masks += part.num_masks
        out.add_filters(part.filters)
        out.failed += part.failed
        out.seconds = max(out.seconds, part.seconds)
    out.failed.sort(key=lambda r: r.rel.as_posix())
    return out


def label_dataset(
    plan: RunPlan,
    on_start: Callable[[int, int, int], None] | None = None,
    on_image: Callable[[ImageResult], None] | None = None,
    download_progress: Callable[[int, int | None], None] | None = None,
    group: Group | None = None,
) -> RunSummary:
    """Label every image of the plan that is not done yet (all of them with `overwrite`; an
    unfinished `--overwrite` is completed, `ssa.run.record`).

    With a process group, the sorted list of images to do is sharded across the ranks (rank r
    takes items r, r + N, ...; see `distributed.shard`) and the summary returned on every rank
    covers all ranks. on_start(total, skipped, mine) is called once this rank knows its share;
    on_image after each of its images.
    """
    from ssa.run import record
    from ssa.run.labeller import build_labeller
    from ssa.run.prefetch import process_overlapped
    from ssa.specs.masks import prepare_mask_source

    out_dir = plan.outputs.out_dir
    root, rels = plan.images.root, list(plan.images.rels)
    main = group is None or group.info.is_main
    since = record.overwrite_mark(out_dir, plan.outputs.overwrite)
    if group is not None and group.info.distributed:
        since = group.all_gather_object(since)[0]  # rank 0's clock marks the overwrite

    def begin() -> None:  # rank 0, once the models loaded, before any rank writes
        if main:
            record.write_record(out_dir, dict(plan.settings), plan.images.data_dir,
                                dict(plan.listing), since)

    def make_worker() -> Worker:
        labeller = build_labeller(plan, download_progress)
        # process_image for each image, with reads and writes in background threads.
        return lambda mine, on_result: process_overlapped(labeller, root, mine, out_dir, on_result)

    summary = dataset_loop(
        out_dir, rels, make_worker, since,
        lambda: prepare_mask_source(plan.masks.spec, download_progress), on_start, on_image,
        group, begin=begin,
    )
    if main and since is not None:
        record.finish_overwrite(
            out_dir, all(is_done(out_dir, Path(r), since) for r in plan.listing["sizes"]))
    return summary


def dataset_loop(
    out_dir: Path,
    rels: list[Path],
    make_worker: Callable[[], Worker],
    since: int | bool | None = None,
    prepare: Callable[[], None] | None = None,
    on_start: Callable[[int, int, int], None] | None = None,
    on_image: Callable[[ImageResult], None] | None = None,
    group: Group | None = None,
    begin: Callable[[], None] | None = None,
) -> RunSummary:
    """The dataset loop that `ssa run` and `ssa engine` share: clean up, skip done images, shard
    the rest, process this rank's share, and gather every rank's summary.

    since: an image counts as done only when its JSON was written since then (ns; an
    `--overwrite`, `ssa.run.record.overwrite_mark`); True redoes every image; None: any JSON.
    begin() runs on every rank once its models are loaded, before any rank writes (the run
    records its settings there).
    make_worker() loads the models (only on a rank with work) and returns a `Worker`;
    prepare() fetches what the mask source needs on
    disk (`ssa.specs.masks.prepare_mask_source`), run by one rank per machine before its ranks
    load it.
    """
    group = group or Group()
    info = group.info
    removed = io.remove_temp_files(out_dir) if info.local_rank == 0 else 0
    if info.is_main:  # every image not done is tried again: the earlier report is superseded
        (out_dir / FAILURES_FILE).unlink(missing_ok=True)
    # Collectives after every machine's clean-up and before any rank writes.
    _check_same_images(rels, group)
    done = _done_flags(out_dir, rels, group, since)
    todo = [rel for rel, flag in zip(rels, done) if not flag]
    mine = shard(todo, info.rank, info.world_size)
    summary = RunSummary(total=len(rels), skipped=len(rels) - len(todo), removed_temps=removed)
    if not todo and info.is_main:
        log.info("nothing to do: %s of %s already done", len(rels), plural(len(rels), "image"))
    if info.distributed:
        if info.local_rank == 0 and todo and prepare is not None:
            prepare()  # one download per machine, before its other ranks load the file
        group.wait_all("checkpoint")
    worker = make_worker() if mine else None
    if begin is not None:  # the models loaded: record before any rank writes
        begin()
        group.wait_all("begun")
    if on_start:
        on_start(len(rels), summary.skipped, len(mine))
    start = time.perf_counter()
    lock = threading.Lock()

    def handle(result: ImageResult) -> None:  # from the loop's or the writer's thread
        with lock:
            if result.status == "failed":
                summary.failed.append(result)
                record_failure(out_dir, result)
            else:
                summary.done += 1
                summary.num_masks += result.num_masks
                summary.add_filters(result.filters)
            group.add("processed")
            if on_image:
                on_image(result)

    for _ in worker(mine, handle) if worker else ():
        pass  # each result went to handle() when it was final
    summary.seconds = time.perf_counter() - start
    group.wait_all("finished")  # ranks end hours apart at worst: no collective timeout here
    summary = _merge(group.all_gather_object(summary))
    if info.is_main:
        write_failures(out_dir, summary.failed)
    return summary


def run_rank(
    plan: Any,
    info: RankInfo | None = None,
    runner: Callable[..., RunSummary] | None = None,
    drive: Callable[[Group, Callable[..., RunSummary]], RunSummary] | None = None,
    evaluate: Callable[[Any, Group, RunSummary], Any] | None = None,
) -> RunSummary:
    """This process's part of a run (one process, or one rank under torchrun / `--world-size`):
    the rank's device, the out-dir's lock (rank 0), the process group's life, the run, then
    `--eval` when the plan asks for it.

    plan: a `ssa.plan.RunPlan` (`ssa.plan.plan_run`), or another command's plan with `device`,
    `outputs.out_dir`, `on_device` and `evaluate` (`ssa.engine.runner.EnginePlan`);
    runner: `label_dataset` (default) or another with its signature
    (`ssa.engine.runner.run_engine`); drive(group, call): calls
    `call(on_start, on_image, download_progress)` with this rank's progress callbacks and
    returns the summary (default: no callbacks); evaluate(plan, group, summary): the `--eval`
    step (default `ssa.evaluation.evaluate.evaluate_run`, no output but eval.json).
    """
    info = info or RankInfo()
    runner = runner or label_dataset
    plan = plan.on_device(rank_device(plan.device, info))
    what = getattr(plan, "command", "ssa run")
    with out_dir_lock(plan.outputs.out_dir, info, what), Group(info, plan.device) as group:

        def call(*callbacks: Any) -> RunSummary:
            return runner(plan, *callbacks, group=group)

        summary = drive(group, call) if drive is not None else call()
        if plan.evaluate:
            if evaluate is None:
                from ssa.evaluation.evaluate import evaluate_run as evaluate
            evaluate(plan, group, summary)
    return summary


def out_dir_lock(out_dir: Path, info: RankInfo | None = None, what: str = "ssa run") -> Any:
    """The out-dir's one-writer lock (`ssa.io.FolderLock`) for rank 0 (or the only process);
    other ranks are covered by it, and workers of `ssa.distributed.launch` by their launcher's.
    """
    import contextlib

    from ssa.run.record import LOCK_FILE

    if info is not None and info.rank != 0:
        return contextlib.nullcontext()
    return io.FolderLock(Path(out_dir) / LOCK_FILE, what, "--out-dir")
