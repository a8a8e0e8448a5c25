"""Rich output for `ssa eval` and `ssa run --eval` (command-line layer; the library returns dicts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ssa.evaluation.evaluate import (
    EvalPlan,
    build_report,
    delta,
    plan_eval,
    score,
    write_csv,
    write_json,
)
from ssa.words import plural


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _fmt_delta(value: float | None) -> str:
    if value is None:
        return "—"
    colour = "green" if value > 0.005 else "red" if value < -0.005 else "dim"
    return f"[{colour}]{value:+.2f}[/]"


def eval_table(report: dict[str, Any], title: str = "Evaluation") -> Table:
    """Per-class IoU/Acc and the overall scores; with a branch, branch | voted | delta columns."""
    branch = report.get("branch")
    table = Table(title=title, show_footer=False)
    # At 80 columns a long class name wraps onto a second line; numbers are never cut.
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    table.add_column("class", overflow="fold")
    if branch:
        for name in ("IoU branch", "IoU voted", "ΔIoU", "Acc branch", "Acc voted", "ΔAcc"):
            table.add_column(name, justify="right", no_wrap=True)
    else:
        table.add_column("IoU", justify="right", no_wrap=True)
        table.add_column("Acc", justify="right", no_wrap=True)
    for index, (name, s) in enumerate(report["per_class"].items()):
        if branch:
            b = branch["per_class"][name]
            cells = [_fmt(b["iou"]), _fmt(s["iou"]), _fmt_delta(delta(s["iou"], b["iou"])),
                     _fmt(b["acc"]), _fmt(s["acc"]), _fmt_delta(delta(s["acc"], b["acc"]))]
        else:
            cells = [_fmt(s["iou"]), _fmt(s["acc"])]
        table.add_row(str(index), name, *cells)
    table.add_section()
    for key, label in (("miou", "mIoU"), ("macc", "mAcc"), ("aacc", "aAcc")):
        if branch:
            table.add_row("", f"[bold]{label}", _fmt(branch[key]), f"[bold]{_fmt(report[key])}",
                          _fmt_delta(delta(report[key], branch[key])), "", "", "")
        else:
            table.add_row("", f"[bold]{label}", f"[bold]{_fmt(report[key])}", "")
    return table


def evaluate_with_progress(
    plan: EvalPlan,
    console: Console,
    json_path: Path | None = None,
    csv_path: Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Score the plan with a progress bar, print the table and a summary, write JSON/CSV."""
    with Progress(
        TextColumn("[bold]score"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True,
    ) as progress:
        task = progress.add_task("score", total=len(plan.items))
        counts = score(plan, workers=workers, on_image=lambda _: progress.advance(task))
    report = build_report(counts, plan.class_names)
    print_report(report, plan, console)
    if json_path is not None:
        write_json(json_path, report)
    if csv_path is not None:
        write_csv(csv_path, report)
    return report


def print_report(report: dict[str, Any], plan: EvalPlan, console: Console) -> None:
    title = (f"{plan.dataset}: {plural(report['num_images'], 'image')}, "
             f"{plural(plan.num_classes, 'class', 'classes')}")
    # A branch scored over fewer images has no per-class deltas against the voted column.
    shown = {k: v for k, v in report.items() if k != "branch"} if plan.partial_branch else report
    console.print(eval_table(shown, title))
    console.print(f"[bold]mIoU {_fmt(report['miou'])}[/]  mAcc {_fmt(report['macc'])}  "
                  f"aAcc {_fmt(report['aacc'])}", highlight=False)
    line = ""  # the branch on a line of its own: the summary fits 80 columns
    if "branch" in report and plan.partial_branch:  # other images: the deltas would mislead
        b = report["branch"]
        scored = len(plan.items) - len(plan.missing_branch)
        of_all = plural(len(plan.items), "image")
        line = (f"branch alone, over the {scored} of {of_all} with a branch map: "
                f"mIoU {_fmt(b['miou'])}")
    elif "branch" in report:
        b = report["branch"]
        line = (f"branch alone: mIoU {_fmt(b['miou'])}; voting "
                f"{_fmt_delta(delta(report['miou'], b['miou']))} mIoU")
    if line:
        console.print(line, highlight=False)
    of_all = plural(len(plan.items), "image")
    if plan.missing:
        console.print(f"[yellow]{len(plan.missing)} of {of_all} had no "
                      f"prediction and count as all wrong[/]", highlight=False)
    if plan.missing_branch and plan.partial_branch:
        console.print(f"[yellow]{len(plan.missing_branch)} of {of_all} were "
                      f"labelled without --save-branch: the branch column leaves them out "
                      f"(`ssa run --save-branch --overwrite` redoes them)[/]", highlight=False)
    elif plan.missing_branch:
        console.print(f"[yellow]{len(plan.missing_branch)} of {of_all} had no "
                      f"branch map and count as all wrong in the branch column[/]",
                      highlight=False)


__all__ = ["eval_table", "evaluate_with_progress", "plan_eval", "print_report"]
