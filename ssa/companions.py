"""Finding the file that goes with an image (its masks, its precomputed labels) in another folder.

An image at relative path `rel` (relative to the dataset's image folder) pairs with
`<folder>/<rel's parent>/<rel's stem><suffix>`, the first suffix that exists winning; when that
mirrored file is absent, `<folder>/<rel's stem><suffix>` (a flat folder) is tried.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssa.errors import SSAError


def companion_candidates(folder: Path, rel: Path, suffixes: Sequence[str]) -> list[Path]:
    """The paths tried for image `rel`, in order."""
    rel = Path(rel)
    mirrored = [Path(folder) / rel.parent / f"{rel.stem}{s}" for s in suffixes]
    flat = [Path(folder) / f"{rel.stem}{s}" for s in suffixes]
    return mirrored + [p for p in flat if p not in mirrored]


def find_companion(folder: Path, rel: Path | None, suffixes: Sequence[str], what: str) -> Path:
    """The companion file of image `rel`; SSAError naming the paths tried when there is none."""
    if rel is None:
        raise SSAError(
            f"{what} in {folder} are matched by the image's relative path, but none was given; "
            f"pass path=<relative path> (the labeller does)"
        )
    candidates = companion_candidates(folder, rel, suffixes)
    for path in candidates:
        if path.is_file():
            return path
    raise SSAError(
        f"no {what} for image {rel}: tried {', '.join(str(p) for p in candidates[:2])}"
        f"{' ...' if len(candidates) > 2 else ''}; add the file or remove the image"
    )
