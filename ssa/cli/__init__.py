"""The command line: the Typer app and how it speaks (`app`), every option declared once
(`options`), the commands (`commands`, `report`), running them in N workers (`launch`), rich
progress and logging (`progress`) and rich tables (`tables`). Nothing below this package imports
typer or rich."""

import ssa.cli.report  # noqa: F401  (registers `ssa report`, after the commands it imports)
from ssa.cli.commands import app

__all__ = ["app"]
