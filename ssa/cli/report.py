"""`ssa report` (issue 26): a static HTML report of a finished run (`ssa run --report` and
`ssa eval --report` call the library from `ssa.cli.commands`, which cannot import this module:
it imports the app from there)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import ssa.cli.commands  # noqa: F401  (their commands are listed first)
from ssa.cli import options as o
from ssa.cli.app import app, console, fail
from ssa.errors import SSAError

if TYPE_CHECKING:  # the report package loads when a report is made, not for `ssa --help`
    from ssa.report import ReportOptions


def make_report(options: ReportOptions) -> Path:
    """Build the report with a progress bar; print and return the file:// URL of index.html."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from ssa.report import build_report, check_extra

    check_extra()
    with Progress(TextColumn("[bold]report"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("report", total=None)
        result = build_report(
            options,
            on_start=lambda n: progress.update(task, total=n),
            on_image=lambda: progress.advance(task),
        )
    print(result.index.resolve().as_uri())
    return result.index


@app.command("report")
def report(
    pred_dir: o.PredDir,
    out: Annotated[
        Path | None,
        typer.Option(help="The report folder (default <pred-dir>/report); a new folder, an "
                     "empty one, or an earlier report.", rich_help_panel="Data"),
    ] = None,
    dataset: o.RunDataset = None,
    data_dir: o.RunDataDir = None,
    split: o.RunSplit = None,
    gt_dir: o.GtDir = None,
    classes: o.EvalClasses = None,
    review: Annotated[
        int, typer.Option(help="Images in the review queue (the worst first).")
    ] = 50,
    page_size: Annotated[
        int, typer.Option(help="Thumbnails per gallery page.")
    ] = 60,
) -> None:
    """A static HTML report of a run, to open from file:// (prints its URL).

    Class table and charts, a gallery worst first, a page per image, a review queue."""
    from ssa.plan import run_defaults
    from ssa.report import ReportOptions

    try:
        # the run's own dataset and images by default (with its labels, the scores too)
        given = dataset
        dataset, data_dir, split = run_defaults(pred_dir, dataset, data_dir, split)
        if given is None and dataset == "folder":
            dataset = None  # the run's own class names and colours
        make_report(ReportOptions(
            pred_dir=pred_dir, out=out, dataset=dataset, data_dir=data_dir, split=split,
            gt_dir=gt_dir, classes=classes, review=review, page_size=page_size,
        ))
    except SSAError as exc:
        fail(exc)
