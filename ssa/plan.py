"""The checks a run passes before any model library is imported, so that a usage error is one
line in well under a second: options, paths, the out-dir, the dataset's images, the mask spec,
the settings an earlier run in the same out-dir recorded (`ssa_run.json`), and whether anything
is left to do.

Nothing here imports torch, transformers or segment-anything at module level; the `sam:` knob
check (it reads `SamAutomaticMaskGenerator`'s signature) runs last.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ssa import io
from ssa.config import VOTE_POLICIES
from ssa.datasets import get_dataset
from ssa.errors import SSAError

log = logging.getLogger(__name__)


def check_voting(cfg: Any) -> None:
    """Refuse a bad policy before anything is loaded."""
    if cfg.vote not in VOTE_POLICIES:
        raise SSAError(f"unknown --vote {cfg.vote!r}; choose one of: {', '.join(VOTE_POLICIES)}")
    share = cfg.min_vote_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise SSAError(f"--min-vote-share {share!r} must be a number in [0, 1] (0 = off)")


def check_run(cfg: Any) -> None:
    """The checks that need no model (before workers start, so one message, not N): outputs,
    images, the mask spec's files, the recorded settings; the mask source's knobs first when
    `--amg` sets some, else last."""
    from ssa.datasets import list_images
    from ssa.run.record import check_inputs, real
    from ssa.specs.masks import check_mask_source, mask_settings, spec_from_config

    check_voting(cfg)
    preset = get_dataset(cfg.dataset).default_amg_preset
    if cfg.amg:  # knobs the user typed are checked first (for sam: it reads the library)
        mask_settings(cfg, preset)
    if cfg.out_dir is None:
        raise SSAError("--out-dir is required; pass the folder for the outputs")
    list_images(cfg)
    check_inputs(cfg.out_dir, run_inputs(cfg))
    cfg.out_dir = real(cfg.out_dir)  # a symlinked --out-dir is its target, resolved once
    io.check_writable(cfg.out_dir)  # a file, a read-only or full out-dir: one line
    check_mask_source(spec_from_config(cfg))
    check_settings(cfg)
    if not cfg.amg:
        mask_settings(cfg, preset)


def run_settings(cfg: Any) -> dict[str, Any]:
    """The settings of `cfg` that decide what its outputs hold (`ssa.run.record.SETTING_KEYS`),
    JSON-ready, paths real and absolute; `masks` is the full spec string (`sam:vit_h`, ...)."""
    from ssa.run.record import SETTING_KEYS, settings_of
    from ssa.specs.masks import spec_from_config

    values = {key: getattr(cfg, key, None) for key in SETTING_KEYS}
    values["masks"] = str(spec_from_config(cfg))
    return settings_of(values)


def image_prints(cfg: Any) -> dict[str, Any]:
    """The fingerprint of the full image listing (`--limit` aside: a limited run resumes)."""
    from ssa.datasets import select_images
    from ssa.run.record import fingerprint

    root, rels = select_images(cfg.dataset, cfg.data_dir, cfg.split, None, cfg.out_dir)
    return fingerprint(root, rels)


def check_settings(cfg: Any) -> None:
    """Refuse an out-dir that is not ssa's, or whose record says a run with other settings or
    other images wrote it (`ssa.run.record.check_record`)."""
    from ssa.run.record import check_record

    check_record(Path(cfg.out_dir), run_settings(cfg), Path(cfg.data_dir), image_prints(cfg),
                 bool(getattr(cfg, "overwrite", False)))


def run_inputs(cfg: Any) -> list[tuple[str, Path | None]]:
    """The folders and files a run reads, by flag (an out-dir must keep clear of them)."""
    from ssa.specs.masks import spec_from_config
    from ssa.specs.segmentors import parse_spec

    inputs: list[tuple[str, Path | None]] = [("--data-dir", cfg.data_dir)]
    for key in ("gt_dir", "classes", "label_map", "prompts"):
        inputs.append(("--" + key.replace("_", "-"), getattr(cfg, key, None)))
    spec = spec_from_config(cfg)
    if spec.kind == "json":
        inputs.append(("--masks", Path(spec.target)))
    if getattr(cfg, "segmentor", None):
        seg = parse_spec(cfg.segmentor)
        if seg.kind == "labels":
            inputs.append(("--segmentor", Path(seg.target)))
    return inputs


def nothing_to_do(cfg: Any) -> int:
    """The number of images when every one is done already (0 when some are not, or with
    `--overwrite`): stops at the first image that is not done, so a fresh run costs one look.
    An unfinished `--overwrite` counts only what it redid (`ssa.run.record.overwrite_mark`)."""
    from ssa.datasets import list_images
    from ssa.run.outputs import is_done
    from ssa.run.record import overwrite_mark

    if getattr(cfg, "overwrite", False) or not Path(cfg.out_dir).is_dir():
        return 0
    since = overwrite_mark(Path(cfg.out_dir), False)
    _, rels = list_images(cfg)
    for rel in rels:
        if not is_done(Path(cfg.out_dir), rel, since):
            return 0
    return len(rels)
