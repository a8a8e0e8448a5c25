"""`ssa report`: a static, browsable HTML report of a finished run, opened from `file://` with
no server and no network (every asset local, links relative).

    from ssa.report import ReportOptions, build_report
    result = build_report(ReportOptions(pred_dir=Path("outputs/run")))
    print(result.index)  # outputs/run/report/index.html

Modules: `run_files` (what an out-dir holds), `build` (the pass over the images and the
pages), `thumbnails` (Pillow pictures), `charts` (matplotlib, Agg), `pages` (Jinja2, autoescape
on), `folder` (ownership of the report folder). Needs the `report` extra (jinja2, matplotlib).
"""

from __future__ import annotations

from ssa.errors import SSAError
from ssa.report.build import ReportOptions, ReportResult, build_report

__all__ = ["ReportOptions", "ReportResult", "build_report", "check_extra"]


def check_extra() -> None:
    """Refuse in one line when the `report` extra (jinja2, matplotlib) is missing."""
    import importlib.util

    missing = [m for m in ("jinja2", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise SSAError(f"ssa report needs {' and '.join(missing)}; install them with "
                       f"pip install 'ssa[report]'")
