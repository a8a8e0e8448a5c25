"""The checks a run passes before any model library is imported, so that a usage error is one
line in well under a second: options, paths, the out-dir, the dataset's images, the mask spec,
the settings an earlier run in the same out-dir recorded (`ssa_run.json`), and whether anything
is left to do.

Nothing here imports torch, transformers or segment-anything at module level; the `sam:` knob
check (it reads `SamAutomaticMaskGenerator`'s signature) runs last.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ssa import io
from ssa.config import VOTE_POLICIES
from ssa.datasets import get_dataset
from ssa.errors import SSAError

log = logging.getLogger(__name__)

RUN_SETTINGS = "ssa_run.json"  # the settings of the run that wrote an out-dir
# The RunConfig fields that change what an image's outputs hold (the rest: where, how fast,
# which images, which extra files).
SETTING_KEYS = (
    "masks", "amg_preset", "amg", "amg_impl", "segmentor", "segmentor_args", "classes",
    "label_map", "prompts", "vote", "min_vote_share", "top_k", "max_pixels",
)


def check_voting(cfg: Any) -> None:
    """Refuse a bad policy before anything is loaded."""
    if cfg.vote not in VOTE_POLICIES:
        raise SSAError(f"unknown --vote {cfg.vote!r}; choose one of: {', '.join(VOTE_POLICIES)}")
    share = cfg.min_vote_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise SSAError(f"--min-vote-share {share!r} must be a number in [0, 1] (0 = off)")


def mask_settings(cfg: Any, default_preset: str = "default") -> tuple[Any, dict[str, Any]]:
    """The run's mask spec (`ssa.specs.masks.spec_from_config`) and the settings its source is
    built with (preset: `cfg.amg_preset`, else `default_preset`), checked against the source's
    knobs."""
    from ssa.specs.masks import resolve_mask_settings, spec_from_config

    spec = spec_from_config(cfg)
    preset = cfg.amg_preset or default_preset
    return spec, resolve_mask_settings(spec, preset, cfg.amg, cfg.amg_impl)


def check_run(cfg: Any) -> None:
    """The checks that need no model (before workers start, so one message, not N): outputs,
    images, the mask spec's files, the recorded settings; the mask source's knobs first when
    `--amg` sets some, else last."""
    from ssa.datasets import list_images
    from ssa.specs.masks import check_mask_source, spec_from_config

    check_voting(cfg)
    preset = get_dataset(cfg.dataset).default_amg_preset
    if cfg.amg:  # knobs the user typed are checked first (for sam: it reads the library)
        mask_settings(cfg, preset)
    if cfg.out_dir is None:
        raise SSAError("--out-dir is required; pass the folder for the outputs")
    list_images(cfg)
    io.check_writable(cfg.out_dir)  # a file, a read-only or full out-dir: one line
    check_mask_source(spec_from_config(cfg))
    check_settings(cfg)
    if not cfg.amg:
        mask_settings(cfg, preset)


def run_settings(cfg: Any) -> dict[str, Any]:
    """The settings of `cfg` that decide what its outputs hold (`SETTING_KEYS`), JSON-ready;
    `masks` is the full spec string (`sam:vit_h`, ...)."""
    from ssa.specs.masks import spec_from_config

    values: dict[str, Any] = {}
    for key in SETTING_KEYS:
        value = getattr(cfg, key, None)
        if key == "masks":
            value = str(spec_from_config(cfg))
        values[key] = str(value) if isinstance(value, Path) else value
    return json.loads(json.dumps(values, default=str))


def check_settings(cfg: Any) -> None:
    """Refuse to resume an out-dir that a run with other settings wrote (its images would keep
    the old settings beside the new ones); `--overwrite` redoes every image instead."""
    path = Path(cfg.out_dir) / RUN_SETTINGS
    if getattr(cfg, "overwrite", False) or not path.is_file():
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, ValueError, AttributeError):
        return  # unreadable: the next write replaces it
    now = run_settings(cfg)
    differ = [k for k in SETTING_KEYS if k in earlier and earlier[k] != now[k]]
    if differ:
        shown = ", ".join(f"{k} {earlier[k]!r} -> {now[k]!r}" for k in differ)
        raise SSAError(
            f"{cfg.out_dir} holds a run with other settings ({shown}); pass the same settings to "
            f"resume it, --overwrite to redo every image, or another --out-dir"
        )


def write_settings(cfg: Any) -> None:
    """Record the run's settings in `<out-dir>/ssa_run.json` (atomically)."""
    from ssa import __version__

    io.write_json(Path(cfg.out_dir) / RUN_SETTINGS,
                  {"ssa_version": __version__, "settings": run_settings(cfg)})


def nothing_to_do(cfg: Any) -> int:
    """The number of images when every one is done already (0 when some are not, or with
    `--overwrite`): stops at the first image that is not done, so a fresh run costs one look."""
    from ssa.datasets import list_images
    from ssa.run.outputs import is_done

    if getattr(cfg, "overwrite", False) or not Path(cfg.out_dir).is_dir():
        return 0
    _, rels = list_images(cfg)
    for rel in rels:
        if not is_done(Path(cfg.out_dir), rel):
            return 0
    return len(rels)
