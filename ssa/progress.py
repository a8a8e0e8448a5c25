"""Rich progress and summaries for the command line (the library reports through callbacks)."""

from __future__ import annotations

from collections.abc import Callable
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

from ssa.config import RunConfig
from ssa.pipeline import FAILURES_FILE, ImageResult, RunSummary, run


class _Rate(TextColumn):
    def __init__(self) -> None:
        super().__init__("")

    def render(self, task):  # type: ignore[override]
        speed = task.finished_speed or task.speed
        return super().render(task) if speed is None else f"{speed:.2f} img/s"


def run_with_progress(
    cfg: RunConfig | Any, console: Console, runner: Callable[..., RunSummary] | None = None
) -> RunSummary:
    """`pipeline.run` (or another `runner` with its signature, e.g. the engine's) with a download
    bar, an image bar (done/total, images/s, ETA) and a summary."""
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

        def on_download(done: int, total: int | None) -> None:
            if "download" not in state:
                state["download"] = progress.add_task("download SAM checkpoint", total=total)
            progress.update(state["download"], completed=done)

        def on_start(total: int, skipped: int) -> None:
            if skipped:
                console.print(f"{skipped} of {total} images already done; skipping them")
            state["images"] = progress.add_task("label", total=total - skipped)

        def on_image(result: ImageResult) -> None:
            if result.status == "failed":
                progress.console.print(
                    f"[yellow]failed[/] {result.rel} ({result.stage}): {result.error}",
                    highlight=False,
                )
            progress.advance(state["images"])

        summary = (runner or run)(cfg, on_start, on_image, on_download)
    rate = summary.done / summary.seconds if summary.seconds else 0.0
    console.print(
        f"[bold green]done[/] {summary.done} labelled, {summary.skipped} skipped, "
        f"{len(summary.failed)} failed of {summary.total} images; {summary.num_masks} masks; "
        f"{summary.seconds:.1f} s ({rate:.2f} img/s) -> {cfg.out_dir}",
        highlight=False,
    )
    if summary.failed:
        names = ", ".join(str(f.rel) for f in summary.failed[:5])
        more = f" and {len(summary.failed) - 5} more" if len(summary.failed) > 5 else ""
        console.print(
            f"[bold red]{len(summary.failed)} failed:[/] {names}{more} "
            f"(see {cfg.out_dir}/{FAILURES_FILE})",
            highlight=False,
        )
    return summary

