"""The report's charts, drawn with matplotlib's Agg backend into PNG bytes (no display, no
fonts fetched): per-class IoU bars, the row-normalised confusion matrix, the mask-area
histogram.

Class names are user text: matplotlib's mathtext is turned off (`text.parse_math`), so a
name such as `$x$` or `a$b` is drawn as it is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from typing import Any

import numpy as np

# Mask area as a share of the image's pixels, log-spaced bins from 1e-6 to 1.
AREA_BINS = np.logspace(-6, 0, 37)
_STYLE = {"text.parse_math": False, "font.size": 8, "svg.fonttype": "none"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=96, layout="constrained")


def _png(fig: Any) -> bytes:
    buffer = BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def iou_bars(names: Sequence[str], voted: Sequence[float | None],
             branch: Sequence[float | None] | None = None) -> bytes:
    """Horizontal bars of per-class IoU (percent), worst class at the top; classes with no
    IoU (absent from ground truth and prediction) left out; the branch's IoU as a tick."""
    import matplotlib

    kept = [i for i, v in enumerate(voted) if v is not None]
    kept.sort(key=lambda i: voted[i])  # type: ignore[arg-type, return-value]
    with matplotlib.rc_context(_STYLE):
        fig = _figure(6.5, 0.9 + 0.16 * max(len(kept), 1))
        ax = fig.add_subplot()
        y = np.arange(len(kept))
        ax.barh(y, [voted[i] for i in kept], color="#3b78c2", label="voted")
        if branch is not None:
            marks = [(k, branch[i]) for k, i in enumerate(kept) if branch[i] is not None]
            if marks:
                ax.plot([m[1] for m in marks], [m[0] for m in marks], "|", color="#d9480f",
                        markersize=7, label="branch")
                ax.legend(loc="lower right")
        ax.set_yticks(y, [names[i] for i in kept])
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_xlabel("IoU (%)")
        ax.grid(axis="x", alpha=0.3)
        if not kept:
            ax.text(50, 0, "no class to score", ha="center")
        return _png(fig)


def confusion(names: Sequence[str], matrix: np.ndarray) -> bytes:
    """A heat map of the `(C, C + 1)` confusion matrix (rows: ground truth, columns: prediction
    then "no label"), each row divided by its total; classes absent from both the ground truth
    and the prediction are left out."""
    import matplotlib

    matrix = np.asarray(matrix, dtype=np.float64)
    num = matrix.shape[0]
    present = np.flatnonzero((matrix.sum(axis=1) > 0) | (matrix[:, :num].sum(axis=0) > 0))
    if present.size == 0:
        present = np.arange(min(num, 1))
    rows = matrix[present][:, np.append(present, num)]
    totals = rows.sum(axis=1, keepdims=True)
    shares = np.divide(rows, totals, out=np.zeros_like(rows), where=totals > 0)
    labels = [names[i] for i in present]
    side = 2.5 + 0.14 * len(labels)
    with matplotlib.rc_context(_STYLE):
        fig = _figure(side + 1.2, side)
        ax = fig.add_subplot()
        image = ax.imshow(shares, cmap="viridis", vmin=0, vmax=1, aspect="auto",
                          interpolation="nearest")
        ax.set_yticks(np.arange(len(labels)), labels)
        ax.set_xticks(np.arange(len(labels) + 1), [*labels, "(no label)"], rotation=90)
        ax.set_ylabel("ground truth")
        ax.set_xlabel("prediction")
        fig.colorbar(image, ax=ax, label="share of the row", shrink=0.6)
        return _png(fig)


def area_histogram(counts: np.ndarray) -> bytes:
    """Bars of the mask counts per `AREA_BINS` bin (mask area / image pixels, log scale)."""
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        fig = _figure(6.5, 2.6)
        ax = fig.add_subplot()
        edges = AREA_BINS
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#5c940d")
        ax.set_xscale("log")
        # Plain tick labels: the default log labels are mathtext, which is off (user text).
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("mask area / image area")
        ax.set_ylabel("masks")
        ax.grid(axis="y", alpha=0.3)
        return _png(fig)
