"""The Typer app, its console, and how every command speaks: one `Error:` line, exit code 2
for a usage error (found while planning, before anything runs) and 1 for a runtime failure."""

from __future__ import annotations

import os
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from ssa import __version__

app = typer.Typer(
    rich_markup_mode="rich",
    no_args_is_help=True,
    help="Semantic labels for Segment Anything masks: SAM's crisp masks, each given the top-1 "
    "class of a semantic segmentor's pixels inside it.",
    pretty_exceptions_enable=False,
    add_completion=False,  # shell completion would be two more options on every help page
)
console = Console(stderr=True)
USAGE, RUNTIME = 2, 1


def _switches_take_no_value() -> None:
    """Typer prints a type beside every option, `--save-branch <bool>` and `--help <bool>` too,
    as if a switch took a value; a switch shows none here."""
    from typer import core

    option = getattr(core, "TyperOption", None)
    plain = getattr(option, "display_type_rich", None)
    if plain is None or getattr(plain, "_ssa", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else plain(self, ctx)

    display_type_rich._ssa = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


def _usage_names_plain() -> None:
    """Typer writes a required argument as `{image}` in the usage line; write it as `IMAGE`, the
    way click and man pages do (`[IMAGE]` when optional)."""
    from typer import core

    argument = getattr(core, "TyperArgument", None)
    if argument is None or not hasattr(argument, "_usage_display_name"):
        return

    def usage_name(self: Any) -> str:
        name = (self.metavar or self.name or "").upper()
        return name if self.required else f"[{name}]"

    argument._usage_display_name = usage_name


def _usage_errors_in_one_line() -> None:
    """A bad value that Typer itself parses (`--limit ten`, a missing required option) is one
    `Error:` line naming the option and where the help is, as ssa's own refusals are; the exit
    code stays click's 2."""
    from typer import rich_utils

    if getattr(rich_utils.rich_format_error, "_ssa", False):
        return

    def one_line(exc: Any) -> None:
        if exc.__class__.__name__ == "NoArgsIsHelpError":
            return
        ctx = getattr(exc, "ctx", None)
        where = f"; see `{ctx.command_path} --help`" if ctx is not None else ""
        message = " ".join(str(exc.format_message()).split()).rstrip(".")
        console.print(f"[bold red]Error:[/] {message}{where}", highlight=False, soft_wrap=True)

    one_line._ssa = True  # type: ignore[attr-defined]
    rich_utils.rich_format_error = one_line


_switches_take_no_value()
_usage_names_plain()
_usage_errors_in_one_line()


def _version(value: bool) -> None:
    if value:
        print(f"ssa {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
) -> None:
    """Label SAM's masks with a semantic segmentor's votes, over whole datasets."""


def log_error(message: str) -> None:
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)


def fail(exc: Exception, code: int = RUNTIME) -> NoReturn:
    """One line, then exit (`USAGE` for a refusal while planning, `RUNTIME` after)."""
    log_error(str(exc))
    raise typer.Exit(code)


def refuse(exc: Exception) -> NoReturn:
    """A refusal while planning: one line, exit code 2 for a usage error, 1 where the machine
    cannot do the job (`FatalError`: a read-only or full out-dir, as at run time)."""
    from ssa.errors import FatalError

    fail(exc, RUNTIME if isinstance(exc, FatalError) else USAGE)


def setup_logging() -> None:
    """`logging` for this process, once: rich's handler on a terminal, plain lines with time,
    level and rank otherwise (`ssa.cli.progress.configure_logging`)."""
    from ssa.cli.progress import configure_logging

    configure_logging(console)


def set_log_every(seconds: float | None) -> None:
    """`--log-every` for this process and its workers (they inherit the environment)."""
    from ssa.cli.progress import LOG_EVERY_ENV
    from ssa.errors import SSAError

    if seconds is not None:
        if not seconds > 0:
            raise SSAError(f"--log-every {seconds} must be a positive number of seconds")
        os.environ[LOG_EVERY_ENV] = str(seconds)
