"""The command line: the Typer app (`commands`), rich progress and logging (`progress`) and
rich tables (`tables`). Nothing below this package imports typer or rich."""

import ssa.cli.report  # noqa: F401  (registers `ssa report` on the app)
from ssa.cli.commands import app

__all__ = ["app"]
