"""Rich progress and summaries for the command line (the library reports through callbacks)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ssa.distributed import Group, RankInfo
from ssa.run.describe import describe_run
from ssa.run.outputs import FAILURES_FILE, ImageResult
from ssa.run.runner import RunSummary, run_rank
from ssa.words import plural

if TYPE_CHECKING:
    from ssa.export.base import ExportConfig

log = logging.getLogger(__name__)

LOG_EVERY_ENV = "SSA_LOG_EVERY"  # seconds between progress lines in a log (not a terminal)
LOG_EVERY_S = 30.0


def log_every_default() -> float:
    """`SSA_LOG_EVERY` seconds, else LOG_EVERY_S."""
    try:
        return max(0.01, float(os.environ.get(LOG_EVERY_ENV, LOG_EVERY_S)))
    except ValueError:
        return LOG_EVERY_S


# --- logging: set up once by the command line; library modules only call getLogger(__name__) ---


class _RankFilter(logging.Filter):
    """Adds `rank` ("0/2"; "0" for one process) and `rank_prefix` ("[rank 1/2] " on ranks
    other than 0 of a group, else "") to every record, from torchrun's environment."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
        record.rank = rank if world == "1" else f"{rank}/{world}"
        record.rank_prefix = "" if rank == "0" else f"[rank {rank}/{world}] "
        return True


PLAIN_FORMAT = "%(asctime)s %(levelname)s [rank %(rank)s] %(message)s"


class _ConsoleStreamHandler(logging.StreamHandler):
    """Plain lines to the console's stream as it is at each record (`Console(stderr=True)`
    follows `sys.stderr`, which test runners and daemons swap)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return self._console.file

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ sets it; the console decides
        pass


_configured: list[logging.Handler] = []


def configure_logging(console: Console, level: int = logging.INFO) -> logging.Handler:
    """Send `logging` records (ssa's from `level` up, the libraries' warnings) to `console`'s
    stream, once per process: rich's handler on a terminal (ranks other than 0 prefixed), else
    plain unwrapped lines with time, level and rank. Off a terminal, Hugging Face's download and "Loading
    weights" bars are switched off too (they would fill a log with carriage returns)."""
    if _configured:
        return _configured[0]
    handler: logging.Handler
    if console.is_terminal:
        from rich.logging import RichHandler

        handler = RichHandler(console=console, show_time=False, show_path=False,
                              rich_tracebacks=False, markup=False)
        handler.setFormatter(logging.Formatter("%(rank_prefix)s%(message)s"))
    else:
        handler = _ConsoleStreamHandler(console)
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT, "%Y-%m-%d %H:%M:%S"))
        disable_hf_progress_bars()
    handler.addFilter(_RankFilter())
    # Every library's warnings get the same format; only ssa's own INFO lines are shown (an
    # HTTP client's INFO request lines would bury the progress).
    logging.getLogger().addHandler(handler)
    logging.getLogger("ssa").setLevel(level)
    _configured.append(handler)
    return handler


def disable_hf_progress_bars() -> None:
    """huggingface_hub's and transformers' tqdm bars off (the variable is read at import; the
    calls cover libraries imported already)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


# --- what a run counts: images labelled in this run, their rate and the time left ---


def format_rate(images: int, seconds: float) -> str:
    """`2.50 img/s`, or `4.1 s/img` when slower than one image a second; `-` before any."""
    if images <= 0 or seconds <= 0:
        return "- img/s"
    rate = images / seconds
    return f"{rate:.2f} img/s" if rate >= 1 else f"{seconds / images:.1f} s/img"


def format_duration(seconds: float | None) -> str:
    """h:mm:ss, or `-:--:--` when unknown."""
    if seconds is None:
        return "-:--:--"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Meter:
    """The images of this run (done images skipped before it apart): `count` of `total`, the
    rate since the meter was made (when labelling starts, the models loaded) and the time left
    at that rate. clock: seconds (monotonic)."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.clock, self.count = total, clock, 0
        self.started = clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def eta(self) -> float | None:
        elapsed = self.elapsed()
        if self.count <= 0 or elapsed <= 0:
            return None
        return (self.total - self.count) * elapsed / self.count

    def rate(self) -> str:
        return format_rate(self.count, self.elapsed())

    def line(self, what: str = "label") -> str:
        """`label 3/10 images, 4.1 s/img, 0:00:12 elapsed, ETA 0:00:29`."""
        return (f"{what} {self.count}/{plural(self.total, 'image')}, {self.rate()}, "
                f"{format_duration(self.elapsed())} elapsed, ETA {format_duration(self.eta())}")


class _MeterColumn(ProgressColumn):
    """The rate and ETA of the task's `meter` field (images labelled in this run)."""

    def render(self, task: Any) -> Text:
        meter: Meter | None = task.fields.get("meter")
        if meter is None:
            return Text("")
        return Text(f"{meter.rate()}  ETA {format_duration(meter.eta())}")


def run_with_progress(
    plan: Any,
    console: Console,
    info: RankInfo | None = None,
    runner: Callable[..., RunSummary] | None = None,
    log_every: float | None = None,
) -> RunSummary:
    """`ssa.run.runner.run_rank` of `plan` (a `ssa.plan.RunPlan`, or another `runner` with its
    signature and plan, e.g. `ssa.engine.runner.run_engine` with an `EnginePlan`) with the
    progress this rank shows.

    Rank 0 on a terminal shows a download bar and an image bar of every rank's images
    (done/total, rate, ETA); off a terminal (nohup, SLURM, CI), and on the other ranks, plain
    `logging` lines every `log_every` seconds (default `SSA_LOG_EVERY`, else 30). Rank 0 then
    logs the summary of all ranks and the `--eval` report. An image counts once its JSON is
    written.
    """
    info = info or RankInfo()
    every = log_every if log_every is not None else log_every_default()

    def drive(group: Group, call: Callable[..., RunSummary]) -> RunSummary:
        if not group.info.is_main:
            return _run_with_lines(group, call, every, shared=False)
        log.info(describe_run(plan, group.info.world_size))  # before any model loads
        if console.is_terminal:
            summary = _run_with_bar(console, group, call)
        else:
            summary = _run_with_lines(group, call, every, shared=group.info.world_size > 1)
        log_summary(plan.outputs.out_dir, summary)
        return summary

    def evaluate(plan: Any, group: Group, summary: RunSummary) -> None:
        from ssa.cli.tables import evaluate_with_progress, print_report
        from ssa.evaluation.evaluate import evaluate_run

        main = group.info.is_main
        if summary.failed:  # every rank holds the summary of all ranks, so all of them skip
            if main:
                log.warning(
                    "not scored: %s failed; rerun them, or score the rest with `ssa eval "
                    "--allow-missing`", plural(len(summary.failed), "image"),
                )
            return
        evaluate_run(
            plan, group, summary,
            single=lambda plan, out_json: evaluate_with_progress(plan, console, out_json),
            on_report=lambda report, plan: print_report(report, plan, console),
        )

    return run_rank(plan, info, runner, drive, evaluate)


def _log_failure(result: ImageResult) -> None:
    if result.status == "failed":
        log.warning("failed %s (%s): %s", result.rel, result.stage, result.error)


def _log_start(total: int, skipped: int) -> None:
    if skipped and skipped < total:
        log.info("%s of %s already done; skipping them", skipped, plural(total, "image"))


def _run_with_bar(console: Console, group: Group, call: Callable[..., RunSummary]) -> RunSummary:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _MeterColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        state: dict[str, Any] = {}
        stop = threading.Event()
        ranks = group.info.world_size

        def on_download(done: int, total: int | None) -> None:
            if "download" not in state:
                state["download"] = progress.add_task(
                    "download SAM checkpoint", total=total, meter=None)
            progress.update(state["download"], completed=done)

        def set_count(count: int) -> None:
            state["meter"].count = count
            progress.update(state["images"], completed=count)

        def poll() -> None:  # every rank's count, from the group's store (no collective)
            while not stop.wait(0.5):
                set_count(group.count("processed"))

        def on_start(total: int, skipped: int, mine: int = 0) -> None:
            _log_start(total, skipped)
            label = "label" if ranks == 1 else f"label ({ranks} workers)"
            state["meter"] = Meter(total - skipped)
            state["images"] = progress.add_task(label, total=total - skipped,
                                                meter=state["meter"])
            if ranks > 1:
                threading.Thread(target=poll, daemon=True).start()

        def on_image(result: ImageResult) -> None:
            _log_failure(result)
            if ranks == 1:
                set_count(state["meter"].count + 1)

        try:
            summary = call(on_start, on_image, on_download)
        finally:
            stop.set()
        if "images" in state:
            set_count(summary.done + len(summary.failed))
    return summary


def _run_with_lines(
    group: Group, call: Callable[..., RunSummary], every: float, shared: bool
) -> RunSummary:
    """The run with plain `logging` lines: the start, failures, `Meter.line()` every `every`
    seconds and at the end. shared: count every rank's images (rank 0 of a group, from the
    group's store), else this rank's own."""
    state: dict[str, Any] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def tick() -> None:
        while not stop.wait(every):
            with lock:
                if shared:
                    state["meter"].count = group.count("processed")
                log.info(state["meter"].line())

    def on_download(done: int, total: int | None) -> None:
        if not state.get("download"):
            state["download"] = True
            size = f" ({total / 2**20:.0f} MiB)" if total else ""
            log.info("downloading the SAM checkpoint%s", size)

    def on_start(total: int, skipped: int, mine: int = 0) -> None:
        _log_start(total, skipped)
        todo = total - skipped if shared or group.info.world_size == 1 else mine
        state["meter"] = Meter(todo)
        if todo:
            log.info("%s to label", plural(todo, "image"))
            threading.Thread(target=tick, daemon=True).start()

    def on_image(result: ImageResult) -> None:
        _log_failure(result)
        if not shared:
            with lock:
                state["meter"].count += 1

    try:
        summary = call(on_start, on_image, on_download)
    finally:
        stop.set()
    meter = state.get("meter")
    if meter is not None and meter.total:
        with lock:
            meter.count = summary.done + len(summary.failed) if shared or \
                group.info.world_size == 1 else meter.count
            log.info(meter.line())
    return summary


def no_masks_hint(filters: dict[str, int]) -> str:
    """Why no image got a mask (`ssa.masks.knobs.no_masks_message`: every filter that removed
    candidates, with counts, and the preset that keeps them)."""
    from ssa.masks.knobs import no_masks_message

    return no_masks_message(filters)


def log_summary(out_dir: Path, summary: RunSummary) -> None:
    """The run's last lines: temporary files removed, counts, rate, failures."""
    if summary.removed_temps:
        log.info("removed %s an interrupted run had left",
                 plural(summary.removed_temps, "temporary file"))
    processed = summary.done + len(summary.failed)
    log.info(
        "done: %s labelled, %s skipped (already done), %s failed of %s; %s; %.1f s (%s) -> %s",
        summary.done, summary.skipped, len(summary.failed), plural(summary.total, "image"),
        plural(summary.num_masks, "mask"), summary.seconds,
        format_rate(processed, summary.seconds), out_dir,
    )
    if summary.done and not summary.num_masks:
        log.warning(no_masks_hint(summary.filters))
    if summary.failed:
        names = ", ".join(str(f.rel) for f in summary.failed[:10])
        more = f" and {len(summary.failed) - 10} more" if len(summary.failed) > 10 else ""
        log.error(
            "%s failed: %s%s (see %s; a rerun retries them)", len(summary.failed),
            names, more, Path(out_dir) / FAILURES_FILE,
        )


def export_with_progress(cfg: ExportConfig, console: Console, info: RankInfo | None = None) -> Any:
    """`ssa.export.runner.export` for one rank (or the only process): rank 0 shows a bar of
    every rank's images (done/total, images/s, ETA) and the summary; other ranks are quiet."""
    from ssa.export.runner import export

    info = info or RankInfo()
    with Group(info, "cpu") as group:
        if not info.is_main:
            return export(cfg, group=group)
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
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
