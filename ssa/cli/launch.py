"""Running a planned job in this process, or in N workers of `ssa.distributed.launch`; each
worker's share logs its error as one line and returns an exit code (the workers are spawned
and find these functions by name)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import typer

from ssa import io
from ssa.cli.app import console, fail, log_error, setup_logging
from ssa.errors import SSAError

if TYPE_CHECKING:
    from ssa.export.base import ExportConfig


def launch_or_run(plan: Any, world_size: int | None, engine: bool = False) -> None:
    """Start `world_size` workers (`ssa run`/`ssa engine --world-size N`) holding the out-dir's
    lock for them, or run this process's share (one process, or a rank under torchrun); exit 1
    when any image failed. The plan was checked once, before: the workers get it as it is."""
    from ssa import distributed

    info = distributed.rank_info_from_env()
    if info is None and world_size is not None and world_size > 1:
        from ssa.run.runner import out_dir_lock

        what = getattr(plan, "command", "ssa run")
        try:
            with out_dir_lock(plan.outputs.out_dir, what=what) as lock:
                os.environ[io.LOCK_ENV] = str(lock.path)  # its workers are covered by it
                code = distributed.launch(world_size, run_share, (plan, engine), log=log_error)
        except SSAError as exc:
            fail(exc)
        raise typer.Exit(code)
    code = run_share(plan, engine)
    if code:
        raise typer.Exit(1 if code == distributed.REPORTED_EXIT else code)


def run_share(plan: Any, engine: bool = False) -> int:
    """This process's share of the run (the only process, a rank under torchrun, or a worker of
    `distributed.launch`): returns the exit code, 1 when rank 0 saw images fail,
    `distributed.REPORTED_EXIT` after a one-line error."""
    from ssa import distributed
    from ssa.cli.progress import run_with_progress
    from ssa.run.heap import keep_freed_memory

    setup_logging()  # a worker of `distributed.launch` is a fresh process
    keep_freed_memory()  # the command's choice for its process (SSA_KEEP_HEAP=0 turns it off)
    runner = None
    if engine:
        from ssa.engine.runner import run_engine as runner
    try:
        info = distributed.rank_info_from_env()
        summary = run_with_progress(plan, console, info, runner=runner)
    except SSAError as exc:
        log_error(str(exc))
        return distributed.REPORTED_EXIT
    # Rank 0 speaks for the run (its summary covers every rank); the others end cleanly.
    return 1 if summary.failed and (info is None or info.is_main) else 0


def export_share(cfg: ExportConfig) -> int:
    """This process's share of `ssa export` (the only process, a rank under torchrun, or a
    worker of `distributed.launch`): 0, or `distributed.REPORTED_EXIT` after a one-line error."""
    from ssa import distributed
    from ssa.cli.progress import export_with_progress

    try:
        export_with_progress(cfg, console, distributed.rank_info_from_env())
    except SSAError as exc:
        log_error(str(exc))
        return distributed.REPORTED_EXIT
    return 0


def launch_export(cfg: ExportConfig, world_size: int) -> None:
    """`ssa export --world-size N`: N workers, the `--out` lock held for them."""
    from ssa import distributed
    from ssa.export.runner import export_lock

    try:
        with export_lock(cfg) as lock:
            os.environ[io.LOCK_ENV] = str(lock.path)  # its workers are covered by it
            code = distributed.launch(world_size, export_share, (cfg,), log=log_error)
    except SSAError as exc:
        fail(exc)
    raise typer.Exit(code)


def write_report(options: Any) -> None:
    """`--report`: the HTML report of the out-dir (`ssa report`; rank 0 only); prints the
    file:// URL of its index.html."""
    from ssa import distributed
    from ssa.report import build_report

    info = distributed.rank_info_from_env()
    if info is None or info.is_main:
        console.print(f"writing the report of {options.pred_dir}", highlight=False)
        print(build_report(options).index.resolve().as_uri())
