"""One frozen, typed plan per command, resolved once from the options and the YAML, with every
check that needs no model: `plan_run` turns a `RunConfig` (defaults < `--config` < flags,
`ssa.config.build_config`) into a `RunPlan`, and the code below (`ssa.run`, `ssa.evaluation`)
takes the typed parts it needs (`Images`, `MaskBranch`, `SemanticBranch`, `Voting`, `Outputs`,
the device) and never reads the options again. Usage errors are one line in well under a second:
options, paths, the out-dir and its record (`ssa.run.record`), the dataset's images, the mask
spec and its knobs, the semantic branch's class files, precision and the worker count; they run
once, in the process that starts the run, before any worker or model.

Where each run option is resolved and checked: `--masks` (with `--sam-model`/`--sam-checkpoint`)
is parsed once in `plan_run` (`spec_from_config`) and handed on as a `MaskSpec`; `--amg-preset`,
`--amg`, `--amg-impl` in `mask_branch`; `--segmentor` is parsed once in `plan_run` and checked
with its class files in `semantic_branch`; `--precision`/`--compile` in `mask_branch` and
`semantic_branch` (the device's support in `plan_run`); `--world-size` in `check_workers`;
`--device` in `resolve_device`.

Nothing here imports torch, transformers or segment-anything at module level; the `sam:` knob
check (it reads `SamAutomaticMaskGenerator`'s signature) and the device run last.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssa import io
from ssa.config import VOTE_POLICIES
from ssa.datasets import get_dataset
from ssa.errors import SSAError

if TYPE_CHECKING:
    from ssa.config import EngineConfig, MaskBranchConfig, RunConfig
    from ssa.specs.masks import MaskSpec
    from ssa.specs.segmentors import SegmentorSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Images:
    """The images of a run: `root` (the image folder) and the sorted `rels` under it (the first
    `limit`), listed as `dataset` lays out `data_dir`."""

    dataset: str
    data_dir: Path
    split: str | None
    limit: int | None
    root: Path
    rels: tuple[Path, ...]


@dataclass(frozen=True)
class MaskBranch:
    """The mask branch as resolved: the parsed spec, the settings its source is built with
    (library defaults < preset < `--amg`, checked against the source's knobs), the generator
    implementation (`fast` | `stock`, segment-anything only) and the networks' precision."""

    spec: MaskSpec
    settings: Mapping[str, Any] = field(default_factory=dict)
    impl: str = "fast"
    precision: str = "fp32"
    compile: bool = False


@dataclass(frozen=True)
class SemanticBranch:
    """The semantic branch: its spec (the dataset's default applied), the factory's keyword
    arguments (`--segmentor-arg`; SAM 3's `prompt_batch`; `precision` for `hf:` models), the
    class names a `labels:` or SAM 3 segmentor uses (`--classes`, else the dataset's), and the
    `labels:` id map / SAM 3 phrases files."""

    spec: str
    args: Mapping[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    label_map: Path | None = None
    prompts: Path | None = None


@dataclass(frozen=True)
class Voting:
    """`ssa.voting`'s policy (`hard` | `soft`), the minimum share of a mask's pixels its class
    must hold (0 = off) and the class proposals kept per mask."""

    policy: str = "hard"
    min_share: float = 0.0
    top_k: int = 3


@dataclass(frozen=True)
class Outputs:
    """Where and what a run writes: `out_dir` (its real path), the optional branch map and
    overlay, whether done images are redone, and the pixel cap images are labelled at."""

    out_dir: Path
    save_branch: bool = False
    save_vis: bool = False
    overwrite: bool = False
    max_pixels: int | None = None


@dataclass(frozen=True)
class RunPlan:
    """Everything `ssa run` does, resolved and checked (see the module docstring). `device` is
    the run's device (`cuda`, `cpu`, ...; a rank takes `cuda:LOCAL_RANK` of it); `settings` and
    `listing` (the full image listing's fingerprint) what the out-dir's record holds
    (`ssa.run.record`); `evaluate`/`gt_dir`: `--eval` once done."""

    images: Images
    masks: MaskBranch
    semantic: SemanticBranch
    voting: Voting
    outputs: Outputs
    device: str
    settings: Mapping[str, Any]
    listing: Mapping[str, Any] = field(default_factory=dict)
    world_size: int | None = None
    evaluate: bool = False
    gt_dir: Path | None = None

    def on_device(self, device: str) -> RunPlan:
        """The same plan on another device (a rank's `cuda:N`)."""
        return replace(self, device=device)


def check_voting(cfg: RunConfig) -> None:
    """Refuse a bad policy before anything is loaded."""
    if cfg.vote not in VOTE_POLICIES:
        raise SSAError(f"unknown --vote {cfg.vote!r}; choose one of: {', '.join(VOTE_POLICIES)}")
    share = cfg.min_vote_share
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise SSAError(f"--min-vote-share {share!r} must be a number in [0, 1] (0 = off)")


def run_settings(cfg: RunConfig, spec: MaskSpec, segmentor: str) -> dict[str, Any]:
    """The settings of `cfg` that decide what its outputs hold (`ssa.run.record.SETTING_KEYS`),
    JSON-ready, paths real and absolute; `masks` is the full spec, `segmentor` the resolved
    one."""
    from ssa.run.record import SETTING_KEYS, settings_of

    values = {key: getattr(cfg, key, None) for key in SETTING_KEYS}
    return settings_of({**values, "masks": str(spec), "segmentor": segmentor})


def run_inputs(
    cfg: RunConfig, spec: MaskSpec, seg: SegmentorSpec | None
) -> list[tuple[str, Path | None]]:
    """The folders and files a run reads, by flag (an out-dir must keep clear of them)."""
    inputs: list[tuple[str, Path | None]] = [("--data-dir", cfg.data_dir)]
    for key in ("gt_dir", "classes", "label_map", "prompts"):
        inputs.append(("--" + key.replace("_", "-"), getattr(cfg, key, None)))
    if spec.kind == "json":
        inputs.append(("--masks", Path(spec.target)))
    if seg is not None and seg.kind == "labels":
        inputs.append(("--segmentor", Path(seg.target)))
    return inputs


def nothing_to_do(plan: RunPlan) -> int:
    """The number of images when every one is done already (0 when some are not, or with
    `--overwrite`): stops at the first image that is not done, so a fresh run costs one look.
    An unfinished `--overwrite` counts only what it redid (`ssa.run.record.overwrite_mark`)."""
    from ssa.run.outputs import is_done
    from ssa.run.record import overwrite_mark

    out_dir = plan.outputs.out_dir
    if plan.outputs.overwrite or plan.evaluate or not out_dir.is_dir():
        return 0
    since = overwrite_mark(out_dir, False)
    for rel in plan.images.rels:
        if not is_done(out_dir, rel, since):
            return 0
    return len(plan.images.rels)


def check_workers(device: str | None, world_size: int | None) -> None:
    """`--world-size` against torchrun's environment and, for N > 1, this machine's GPUs or
    cores (`device` None: the default device, which asks torch)."""
    from ssa import distributed

    info = distributed.rank_info_from_env()
    if world_size is not None and world_size < 1:
        raise SSAError(f"--world-size {world_size} must be at least 1")
    if info is not None and world_size not in (None, info.world_size):
        raise SSAError(
            f"--world-size {world_size}, but torchrun started {info.world_size} workers "
            f"(WORLD_SIZE); leave --world-size out under torchrun"
        )
    if info is None and world_size is not None and world_size > 1:
        distributed.check_world_size(resolve_device(device), world_size)


def resolve_device(device: str | None) -> str:
    """`--device` as given, else `cuda` where torch sees a GPU, else `cpu`; a CUDA device where
    there is none is refused."""
    from ssa.config import RunConfig

    return RunConfig(device=device).resolved_device()


def mask_branch(cfg: MaskBranchConfig, spec: MaskSpec, preset: str) -> MaskBranch:
    """The mask branch of a parsed `--masks` spec (`spec_from_config`, once per command):
    `--amg-preset` (else `preset`), `--amg` checked against the source's knobs, `--amg-impl`,
    `--precision`, `--compile` (any `MaskBranchConfig`: run, engine)."""
    from ssa.precision import check_name
    from ssa.specs.masks import resolve_mask_settings

    precision = getattr(cfg, "precision", "fp32")
    check_name(precision)
    compiled = bool(getattr(cfg, "compile", False))
    if spec.kind == "sam" and cfg.amg_impl != "fast" and (precision != "fp32" or compiled):
        raise SSAError(f"--precision {precision} / --compile need --amg-impl fast (the stock "
                       f"generator runs as segment-anything ships it)")
    settings = resolve_mask_settings(spec, cfg.amg_preset or preset, cfg.amg, cfg.amg_impl)
    return MaskBranch(spec, settings, cfg.amg_impl, precision, compiled)


def semantic_branch(
    cfg: RunConfig, default: str | None, parsed: SegmentorSpec | None = None
) -> SemanticBranch:
    """`--segmentor` (else the dataset's `default`), `--segmentor-arg`, `--classes`,
    `--label-map`, `--prompts`, `--prompt-batch` and `--precision`, checked against each other
    and the files read (class names, id map, phrases) before any model loads."""
    from ssa.specs.segmentors import parse_spec, read_classes_file, read_label_map_file

    segmentor = cfg.segmentor or default
    if segmentor is None:
        raise SSAError("--dataset folder needs --segmentor (e.g. --segmentor hf:<hub id or folder>)")
    dataset = get_dataset(cfg.dataset)
    parsed = parsed or parse_spec(segmentor)
    kind = parsed.kind
    sam3 = False
    if kind == "hf" and (
        cfg.classes is not None or cfg.prompts is not None or cfg.prompt_batch is not None
        or getattr(cfg, "precision", "fp32") != "fp32"
    ):
        from ssa.segmentors.hf import is_sam3

        sam3 = is_sam3(parsed.target)
    if not sam3:
        for flag, value in (("--prompts", cfg.prompts), ("--prompt-batch", cfg.prompt_batch)):
            if value is not None:
                raise SSAError(
                    f"{flag} applies to SAM 3 segmentors (hf:facebook/sam3); {segmentor} is not "
                    f"one"
                )
    classes: list[str] | None = None
    if cfg.classes is not None:
        if kind != "labels" and not sam3:
            raise SSAError(
                f"--classes applies to labels: segmentors and SAM 3 models; {segmentor} names "
                f"its own classes"
            )
        classes = read_classes_file(cfg.classes)
        if dataset.num_classes is not None and len(classes) != dataset.num_classes:
            raise SSAError(
                f"--classes {cfg.classes} names {len(classes)} classes but --dataset "
                f"{dataset.name} has {dataset.num_classes}; give one name per dataset class, "
                f"in its order"
            )
    elif dataset.classes is not None:
        classes = list(dataset.classes)
    if cfg.label_map is not None:
        if kind != "labels":
            raise SSAError(f"--label-map applies to labels: segmentors only, not {segmentor}")
        if classes is not None:  # no classes: the loader says so
            read_label_map_file(cfg.label_map, classes)
    args = dict(cfg.segmentor_args)
    if cfg.prompts is not None:
        from ssa.segmentors.sam3 import read_prompts_file

        if classes is None:
            raise SSAError(f"--prompts {cfg.prompts} needs class names: pass --classes FILE too")
        read_prompts_file(cfg.prompts, classes)
    if cfg.prompt_batch is not None:
        args["prompt_batch"] = cfg.prompt_batch
    precision = getattr(cfg, "precision", "fp32")
    if precision != "fp32" and "precision" not in args:
        if kind != "hf" or sam3:
            raise SSAError(
                f"--precision {precision} applies to hf: segmentors (Segformer, OneFormer, ...); "
                f"{segmentor} runs in its own precision: pass --precision fp32"
            )
        args["precision"] = precision
    return SemanticBranch(segmentor, args, None if classes is None else tuple(classes),
                          cfg.label_map, cfg.prompts)


def plan_run(cfg: RunConfig, world_size: int | None = None) -> RunPlan:
    """The `RunPlan` of `cfg` with every check that needs no model (see the module docstring),
    each option read once: the mask spec is parsed here and handed on. The Python API's entry:
    `ssa.run.runner.run_rank(plan_run(RunConfig(...)))`. Order: what the user typed first
    (voting, `--amg` knobs), then paths, the out-dir and its record, the spec's files, the
    knobs of a preset (for `sam:` they read the library), the semantic branch, the device."""
    from ssa.datasets import select_images
    from ssa.evaluation.evaluate import check_run_eval
    from ssa.precision import check_device
    from ssa.run.record import check_inputs, check_record, fingerprint
    from ssa.specs.masks import check_mask_source, spec_from_config
    from ssa.specs.segmentors import parse_spec

    check_run_eval(cfg)
    check_workers(cfg.device, world_size)  # --world-size against torchrun and this machine
    check_voting(cfg)
    dataset = get_dataset(cfg.dataset)
    spec = spec_from_config(cfg)  # --masks, --sam-model, --sam-checkpoint: read here, once
    masks = mask_branch(cfg, spec, dataset.default_amg_preset) if cfg.amg else None
    if cfg.out_dir is None:
        raise SSAError("--out-dir is required; pass the folder for the outputs")
    full_root, full = select_images(cfg.dataset, cfg.data_dir, cfg.split, None, cfg.out_dir)
    rels = full[: cfg.limit] if cfg.limit is not None else full
    segmentor = cfg.segmentor or dataset.default_segmentor
    seg = parse_spec(segmentor) if segmentor else None  # --segmentor: read here, once
    check_inputs(cfg.out_dir, run_inputs(cfg, spec, seg))
    out_dir = io.real_path(cfg.out_dir)  # a symlinked --out-dir is its target, resolved once
    io.check_writable(out_dir)  # a file, a read-only or full out-dir: one line
    check_mask_source(spec)
    if segmentor is None or seg is None:
        raise SSAError("--dataset folder needs --segmentor (e.g. --segmentor hf:<hub id or folder>)")
    settings = run_settings(cfg, spec, segmentor)
    listing = fingerprint(full_root, full)  # the whole listing: a --limit run resumes
    check_record(out_dir, settings, Path(cfg.data_dir), listing, cfg.overwrite)
    if masks is None:
        masks = mask_branch(cfg, spec, dataset.default_amg_preset)
    semantic = semantic_branch(cfg, dataset.default_segmentor, seg)
    device = resolve_device(cfg.device)  # --device, once
    check_device(masks.precision, masks.compile, device)
    return RunPlan(
        images=Images(cfg.dataset, Path(cfg.data_dir), cfg.split, cfg.limit, Path(full_root),
                      tuple(rels)),
        masks=masks,
        semantic=semantic,
        voting=Voting(cfg.vote, float(cfg.min_vote_share), cfg.top_k),
        outputs=Outputs(out_dir, cfg.save_branch, cfg.save_vis, cfg.overwrite, cfg.max_pixels),
        device=device,
        settings=settings,
        listing=listing,
        world_size=world_size,
        evaluate=cfg.evaluate,
        gt_dir=cfg.gt_dir,
    )


@dataclass(frozen=True)
class EnginePlan:
    """Everything `ssa engine` does, resolved and checked: the images of a folder, the mask
    branch, the five models by role (`ssa.engine.models.ROLES`), proposals per mask, crops per
    forward pass, the noun-phrase parser, the outputs, the device and precision of the engine's
    models, and the record it leaves in its out-dir (as `ssa run`'s, `ssa.run.record`)."""

    images: Images
    masks: MaskBranch
    outputs: Outputs
    models: Mapping[str, str]
    device: str
    settings: Mapping[str, Any]
    listing: Mapping[str, Any] = field(default_factory=dict)
    top_k: int = 3
    batch_size: int = 16
    use_spacy: bool = True
    precision: str = "fp32"
    world_size: int | None = None
    evaluate: bool = False  # `ssa engine` has no ground truth to score
    command: str = "ssa engine"

    def on_device(self, device: str) -> EnginePlan:
        return replace(self, device=device)


ENGINE_SETTING_KEYS = ("masks", "amg_preset", "amg", "amg_impl", "models", "top_k")


def plan_engine(cfg: EngineConfig, world_size: int | None = None) -> EnginePlan:
    """The `EnginePlan` of an `ssa.engine.runner.EngineConfig`, every check before any model:
    the out-dir and its record, the images, the models' folders, the mask spec and knobs."""
    from ssa.datasets import select_images
    from ssa.engine.models import resolve_models
    from ssa.precision import check_device
    from ssa.run.record import check_inputs, check_record, fingerprint, settings_of
    from ssa.specs.masks import check_mask_source, spec_from_config

    check_workers(cfg.device, world_size)  # --world-size against torchrun and this machine
    if cfg.out_dir is None:
        raise SSAError("--out-dir is required; pass the folder for the outputs")
    root, full = select_images("folder", cfg.data_dir, None, None, cfg.out_dir)
    rels = full[: cfg.limit] if cfg.limit is not None else full
    inputs: list[tuple[str, Path | None]] = [("--data-dir", cfg.data_dir)]
    spec = spec_from_config(cfg)
    if spec.kind == "json":
        inputs.append(("--masks", Path(spec.target)))
    check_inputs(cfg.out_dir, inputs)
    out_dir = io.real_path(cfg.out_dir)  # a symlinked --out-dir is its target, resolved once
    io.check_writable(out_dir)
    models = resolve_models(cfg.models, cfg.light)
    check_mask_source(spec)  # a missing file before the knobs (they import)
    masks = mask_branch(cfg, spec, "default")
    values = {"masks": str(spec), "amg_preset": cfg.amg_preset, "amg": cfg.amg,
              "amg_impl": cfg.amg_impl, "top_k": cfg.top_k}
    settings = {k: v for k, v in settings_of(values).items() if k in ENGINE_SETTING_KEYS}
    settings["models"] = {role: str(io.real_path(m)) if Path(m).expanduser().exists() else m
                          for role, m in models.items()}
    listing = fingerprint(root, full)  # the whole listing: a --limit run resumes
    check_record(out_dir, settings, Path(cfg.data_dir), listing, False)
    device = resolve_device(cfg.device)
    check_device(masks.precision, masks.compile, device)
    return EnginePlan(
        images=Images("folder", Path(cfg.data_dir), None, cfg.limit, Path(root), tuple(rels)),
        masks=masks,
        outputs=Outputs(out_dir, save_vis=cfg.save_vis),
        models=models,
        device=device,
        settings=settings,
        listing=listing,
        top_k=cfg.top_k,
        batch_size=cfg.batch_size,
        use_spacy=cfg.use_spacy,
        precision=masks.precision,
        world_size=world_size,
    )


@dataclass(frozen=True)
class PredictPlan:
    """Everything `ssa predict` needs: the promptable mask branch (its spec and precision), the
    semantic branch, the dataset whose classes and palette apply, proposals per mask, device."""

    masks: MaskBranch
    semantic: SemanticBranch
    dataset: str
    device: str
    top_k: int = 3


def plan_predict(cfg: RunConfig) -> PredictPlan:
    """The `PredictPlan` of a `RunConfig` (masks or sam_model/sam_checkpoint, segmentor,
    dataset, device, top_k, precision, compile), checked as `ssa run` checks them."""
    from ssa.precision import check_device, check_name
    from ssa.specs.masks import check_mask_source, spec_from_config

    dataset = get_dataset(cfg.dataset)
    spec = spec_from_config(cfg)
    check_mask_source(spec)
    check_name(cfg.precision)
    semantic = semantic_branch(cfg, dataset.default_segmentor)
    device = resolve_device(cfg.device)
    check_device(cfg.precision, cfg.compile, device)
    return PredictPlan(MaskBranch(spec, {}, cfg.amg_impl, cfg.precision, cfg.compile), semantic,
                       cfg.dataset, device, cfg.top_k)


def run_defaults(
    pred_dir: Path, dataset: str | None, data_dir: Path | None, split: str | None
) -> tuple[str, Path | None, str | None]:
    """`ssa eval`/`ssa export`/`ssa report` start from the run's own record: its dataset,
    image folder and split are the defaults of the options not given (`folder` without one)."""
    from ssa.run.record import read_record

    record = read_record(Path(pred_dir)) if Path(pred_dir).is_dir() else None
    if record is None:
        return dataset or "folder", data_dir, split
    recorded = record.get("dataset") or "folder"
    if dataset is not None and dataset != recorded:
        return dataset, data_dir, split  # another layout: the run's folder would not fit it
    if data_dir is None and record.get("data_dir") and Path(record["data_dir"]).is_dir():
        data_dir = Path(record["data_dir"])
    return recorded, data_dir, split if split is not None else record.get("split")
