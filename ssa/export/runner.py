"""The export loop: plan, shard the images across ranks, write per-image parts, and let rank 0
assemble the result and move it into place (see `ssa.export.base` for atomicity)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ssa import io
from ssa.distributed import Group, shard
from ssa.errors import SSAError
from ssa.export.base import (
    ExportConfig,
    Exporter,
    ExportPlan,
    RunItem,
    commit,
    mark_owned,
    plan_export,
    prepare_staging,
    read_run_image,
    staging_dir,
)
from ssa.words import did_you_mean

FORMATS = {
    "coco-instances": ("ssa.export.coco_instances", "CocoInstances"),
    "coco-panoptic": ("ssa.export.coco_panoptic", "CocoPanoptic"),
    "cityscapes": ("ssa.export.cityscapes", "Cityscapes"),
    "label-studio": ("ssa.export.label_studio", "LabelStudio"),
    "hf-dataset": ("ssa.export.hf_dataset", "HfDataset"),
}


@dataclass
class ExportSummary:
    format: str
    out: Path
    num_images: int = 0
    skipped: list[str] = field(default_factory=list)  # failed/missing images (--allow-missing)
    seconds: float = 0.0


_WRITE_ERRORS = {
    errno.ENOSPC: ("the disk is full", "free space"),
    errno.EDQUOT: ("the disk quota is used up", "free space"),
    errno.EROFS: ("the file system is read-only", "pass an --out you can write"),
    errno.EACCES: ("permission denied", "pass an --out you can write"),
    errno.EPERM: ("permission denied", "pass an --out you can write"),
}


def write_failure(out: Path, exc: OSError) -> SSAError:
    """One line for an export that could not be written (a full disk, a read-only folder...):
    nothing is left at `--out` (the result is moved there only when whole)."""
    where = exc.filename or out
    if exc.errno not in _WRITE_ERRORS:  # e.g. an input that went away during the export
        return SSAError(
            f"cannot export to --out {out}: {exc.strerror or exc} ({where}); check that path, "
            f"then rerun the same command (nothing was written to --out)"
        )
    what, fix = _WRITE_ERRORS[exc.errno]
    return SSAError(
        f"cannot write the export to --out {out}: {what} ({where}); {fix}, then rerun the same "
        f"command (nothing was written to --out)"
    )


def get_exporter(name: str) -> Exporter:
    import importlib

    if name not in FORMATS:
        raise SSAError(f"unknown --format {name!r}{did_you_mean(name, FORMATS)}; choose one of: "
                       f"{', '.join(FORMATS)}")
    module, cls = FORMATS[name]
    return getattr(importlib.import_module(module), cls)()


def check_export(cfg: ExportConfig, world_size: int = 1) -> tuple[Exporter, ExportPlan]:
    """Every refusal that needs no pixels (before workers start, so one message, not N)."""
    exporter = get_exporter(cfg.format)
    if world_size > 1 and not exporter.shardable:
        raise SSAError(f"--format {cfg.format} is written by one process; leave out --world-size")
    plan = plan_export(cfg, exporter.needs_images)
    exporter.check(plan)
    return exporter, plan


def export(
    cfg: ExportConfig,
    on_start: Callable[[int, int], None] | None = None,
    on_image: Callable[[RunItem], None] | None = None,
    group: Group | None = None,
) -> ExportSummary:
    """Export the run `cfg.pred_dir` as `cfg.format` to `cfg.out` (see the README "Export").

    With a process group (torchrun or `--world-size`), rank r writes the parts of images r,
    r + N, ... and rank 0 assembles them once every rank is done. on_start(total, mine) once
    this rank knows its share; on_image(item) after each of its images. Returns on every rank;
    the result is in place when rank 0 returns.
    """
    group = group or Group()
    info = group.info
    exporter, plan = check_export(cfg, info.world_size)
    lock = export_lock(cfg) if info.is_main else contextlib.nullcontext()
    with lock:
        return _export(cfg, exporter, plan, group, on_start, on_image)


def export_lock(cfg: ExportConfig) -> io.FolderLock:
    """One export per `--out` at a time (`ssa.io.FolderLock` on `.ssa-lock-<name>` beside it)."""
    out = Path(os.path.realpath(cfg.out))
    return io.FolderLock(out.parent / f".ssa-lock-{out.name}", "ssa export", "--out")


def _export(
    cfg: ExportConfig,
    exporter: Exporter,
    plan: ExportPlan,
    group: Group,
    on_start: Callable[[int, int], None] | None,
    on_image: Callable[[RunItem], None] | None,
) -> ExportSummary:
    info = group.info
    start = time.perf_counter()
    out = Path(cfg.out)  # its real path, set by the plan's check
    staging = staging_dir(out)
    try:
        if info.is_main:
            prepare_staging(out)
        group.barrier()  # the staging folder exists (and is empty) before any rank writes
        if getattr(exporter, "streams_itself", False):
            if on_start:
                on_start(len(plan.items), len(plan.items))
            staged = exporter.write_all(plan, staging, on_image)
        else:
            mine = shard(plan.items, info.rank, info.world_size)
            if on_start:
                on_start(len(plan.items), len(mine))
            for item in mine:
                exporter.write_image(plan, read_run_image(plan, item), staging)
                group.add("exported")
                if on_image:
                    on_image(item)
            group.wait_all("exported")  # every part is in before rank 0 reads them
            staged = exporter.finish(plan, staging) if info.is_main else None
        if info.is_main:
            mark_owned(plan, staged)
            commit(staged, out)
    except BaseException as exc:
        if not info.distributed:
            shutil.rmtree(staging, ignore_errors=True)
        failed = exc if isinstance(exc, OSError) else getattr(exc, "os_error", None)
        if isinstance(failed, OSError):
            raise write_failure(out, failed) from None
        raise
    if info.is_main:
        shutil.rmtree(staging, ignore_errors=True)
    group.wait_all("committed")
    return ExportSummary(cfg.format, out, len(plan.items), plan.skipped,
                         time.perf_counter() - start)
