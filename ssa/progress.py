"""Rich progress and summaries for the command line (the library reports through callbacks)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ssa.distributed import Group, RankInfo
from ssa.outputs import FAILURES_FILE, ImageResult
from ssa.runner import RunSummary, run_rank

LOG_EVERY_S = 30.0  # how often ranks other than 0 log their count


class _Rate(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        return super().render(task) if speed is None else f"{speed:.2f} img/s"


def run_with_progress(
    cfg: Any,
    console: Console,
    info: RankInfo | None = None,
    runner: Callable[..., RunSummary] | None = None,
) -> RunSummary:
    """`ssa.runner.run_rank` (the run, or another `runner` with its signature and a config with
    `out_dir` and `resolved_device()`, e.g. `ssa.engine.runner.run_engine`) with the progress
    this rank shows.

    Rank 0 shows a download bar, an image bar of every rank's images (done/total, images/s,
    ETA), the summary of all ranks and the `--eval` report; the other ranks log plain lines to
    stderr (start, failures, every LOG_EVERY_S seconds, end), so one terminal shared by the
    ranks holds one bar.
    """
    info = info or RankInfo()

    def drive(group: Group, call: Callable[..., RunSummary]) -> RunSummary:
        if not group.info.is_main:
            return call(*_rank_logger(group.info))
        summary = _run_with_bar(console, group, call)
        _print_summary(cfg, console, summary)
        return summary

    def evaluate(cfg: Any, group: Group, summary: RunSummary) -> None:
        from ssa.evaluate import evaluate_run
        from ssa.report import evaluate_with_progress, print_report

        main = group.info.is_main
        if summary.failed:  # every rank holds the summary of all ranks, so all of them skip
            if main:
                console.print(
                    f"[yellow]not scored:[/] {len(summary.failed)} images failed; rerun them, "
                    f"or score the rest with `ssa eval --allow-missing`",
                    highlight=False,
                )
            return
        evaluate_run(
            cfg, group, summary,
            single=lambda plan, out_json: evaluate_with_progress(plan, console, out_json),
            on_report=lambda report, plan: print_report(report, plan, console),
        )

    return run_rank(cfg, info, runner, drive, evaluate)


def _run_with_bar(console: Console, group: Group, call: Callable[..., RunSummary]) -> RunSummary:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _Rate(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        state: dict[str, int] = {}
        stop = threading.Event()
        ranks = group.info.world_size

        def on_download(done: int, total: int | None) -> None:
            if "download" not in state:
                state["download"] = progress.add_task("download SAM checkpoint", total=total)
            progress.update(state["download"], completed=done)

        def poll() -> None:  # every rank's count, from the group's store (no collective)
            while not stop.wait(0.5):
                progress.update(state["images"], completed=group.count("processed"))

        def on_start(total: int, skipped: int, mine: int = 0) -> None:
            if skipped:
                console.print(f"{skipped} of {total} images already done; skipping them")
            label = "label" if ranks == 1 else f"label ({ranks} workers)"
            state["images"] = progress.add_task(label, total=total - skipped)
            if ranks > 1:
                threading.Thread(target=poll, daemon=True).start()

        def on_image(result: ImageResult) -> None:
            if result.status == "failed":
                progress.console.print(
                    f"[yellow]failed[/] {result.rel} ({result.stage}): {result.error}",
                    highlight=False,
                )
            if ranks == 1:
                progress.advance(state["images"])

        try:
            summary = call(on_start, on_image, on_download)
        finally:
            stop.set()
        if "images" in state:
            progress.update(state["images"], completed=summary.done + len(summary.failed))
    return summary


def _rank_logger(info: RankInfo) -> tuple[Callable[..., None], Callable[[ImageResult], None]]:
    """on_start and on_image callbacks that log plain `[rank r]` lines to stderr."""
    state = {"mine": 0, "seen": 0, "failed": 0, "last": time.monotonic(), "start": 0.0}

    def log(message: str) -> None:
        print(f"[rank {info.rank}/{info.world_size}] {message}", file=sys.stderr, flush=True)

    def on_start(total: int, skipped: int, mine: int = 0) -> None:
        state["mine"], state["start"] = mine, time.monotonic()
        log(f"{mine} images to label (of {total}; {skipped} already done)")

    def on_image(result: ImageResult) -> None:
        state["seen"] += 1
        if result.status == "failed":
            state["failed"] += 1
            log(f"failed {result.rel} ({result.stage}): {result.error}")
        now = time.monotonic()
        if state["seen"] == state["mine"]:
            log(f"finished {state['seen']} images, {state['failed']} failed, "
                f"{now - state['start']:.1f} s")
        elif now - state["last"] >= LOG_EVERY_S:
            state["last"] = now
            log(f"{state['seen']}/{state['mine']} images, {state['failed']} failed")

    return on_start, on_image


def _print_summary(cfg: Any, console: Console, summary: RunSummary) -> None:
    if summary.removed_temps:
        console.print(
            f"removed {summary.removed_temps} temporary files an interrupted run had left",
            highlight=False,
        )
    rate = summary.done / summary.seconds if summary.seconds else 0.0
    console.print(
        f"[bold green]done[/] {summary.done} labelled, {summary.skipped} skipped (already done), "
        f"{len(summary.failed)} failed of {summary.total} images; {summary.num_masks} masks; "
        f"{summary.seconds:.1f} s ({rate:.2f} img/s) -> {cfg.out_dir}",
        highlight=False,
    )
    if summary.failed:
        names = ", ".join(str(f.rel) for f in summary.failed[:10])
        more = f" and {len(summary.failed) - 10} more" if len(summary.failed) > 10 else ""
        console.print(
            f"[bold red]{len(summary.failed)} failed:[/] {names}{more} "
            f"(see {Path(cfg.out_dir or '.') / FAILURES_FILE}; a rerun retries them)",
            highlight=False,
        )


def export_with_progress(cfg: Any, console: Console, info: RankInfo | None = None) -> Any:
    """`ssa.export.runner.export` for one rank (or the only process): rank 0 shows a bar of
    every rank's images (done/total, images/s, ETA) and the summary; other ranks are quiet."""
    from ssa.export.runner import export

    info = info or RankInfo()
    with Group(info, "cpu") as group:
        if not info.is_main:
            return export(cfg, group=group)
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=console, transient=False,
        ) as progress:
            state: dict[str, int] = {}
            stop = threading.Event()
            ranks = info.world_size

            def poll() -> None:  # every rank's count, from the group's store
                while not stop.wait(0.5):
                    progress.update(state["task"], completed=group.count("exported"))

            def on_start(total: int, mine: int) -> None:
                label = f"export {cfg.format}" + (f" ({ranks} workers)" if ranks > 1 else "")
                state["task"], state["total"] = progress.add_task(label, total=total), total
                if ranks > 1:
                    threading.Thread(target=poll, daemon=True).start()

            def on_image(item: Any) -> None:
                if ranks == 1:
                    progress.advance(state["task"])

            try:
                summary = export(cfg, on_start, on_image, group=group)
            finally:
                stop.set()
            progress.update(state["task"], completed=state["total"])
    skipped = f", {len(summary.skipped)} left out (--allow-missing)" if summary.skipped else ""
    console.print(
        f"[bold green]exported[/] {summary.num_images} images as {summary.format}{skipped} in "
        f"{summary.seconds:.1f} s -> {summary.out}",
        highlight=False,
    )
    return summary
