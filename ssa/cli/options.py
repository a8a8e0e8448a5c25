"""Every option of the command line, declared once as an `Annotated` alias and used by each
command that has it (`ssa.cli.commands`). `ssa run`'s options default to None so that a
`--config` YAML can fill them (flags > file > defaults, `ssa.config.build_config`); their
help says the default."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DATA, MASKS, SEMANTIC, VOTING, SCALE, EVAL = (
    "Data", "Mask branch", "Semantic branch", "Voting", "Scale", "Evaluation")
DATASETS = "ade20k | cityscapes | foggy_driving | folder"


def _opt(help: str, panel: str | None = None, *names: str, **kw: object) -> typer.models.OptionInfo:
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)  # type: ignore[arg-type]


# Data
Dataset = Annotated[str | None, _opt(f"{DATASETS} (default: folder).", DATA)]
DataDir = Annotated[Path | None, _opt("The dataset's root folder.", DATA)]
OutDir = Annotated[Path | None, _opt("Where the outputs go.", DATA)]
PredDir = Annotated[Path, _opt("The --out-dir of a finished `ssa run`.", DATA)]
Split = Annotated[str | None, _opt("Dataset split (default: validation/val/test).", DATA)]
Limit = Annotated[int | None, _opt("Only the first N images.", DATA)]
Config = Annotated[Path | None, _opt(
    "YAML config (configs/<name>.yaml): any option of this command; flags override it.")]
# Commands that read a finished run (eval, export, report) default to what its record names.
RunDataset = Annotated[str | None, _opt(
    f"{DATASETS}: how --data-dir is laid out (default: the run's own, from its ssa_run.json; "
    f"else folder).", DATA)]
RunDataDir = Annotated[Path | None, _opt(
    "The dataset the run read (default: the run's own, from its ssa_run.json).", DATA)]
RunSplit = Annotated[str | None, _opt(
    "Dataset split (default: the run's own, else validation/val/test).", DATA)]
GtDir = Annotated[Path | None, _opt(
    "folder only: ground truth, <stem>.png class indices (255 = ignore) mirroring the images' "
    "relative paths.", EVAL)]
EvalClasses = Annotated[Path | None, _opt(
    "folder only: class names, one per line (or a JSON list); default: the 'class_names' of "
    "the predictions' <stem>_semantic.json.", EVAL)]
AllowMissing = Annotated[bool, _opt(
    "Go on when some images failed or are not done (eval: count them as all wrong; export: "
    "leave them out).", None, "--allow-missing")]

# Mask branch
Masks = Annotated[str | None, _opt(
    "The mask source: sam:<vit_h|vit_l|vit_b>[:<file.pth>] | hf:<hub id or folder> | "
    "json:<folder of SA-1B <stem>.json> (a bare folder too) | py:<module or file.py>:<factory> "
    "| plugin:<name>. Default: sam:<--sam-model>.", MASKS)]
SamModel = Annotated[str | None, _opt(
    "vit_h | vit_l | vit_b: shorthand for --masks sam:<model> (default: vit_h).", MASKS)]
SamCheckpoint = Annotated[Path | None, _opt(
    "The sam: checkpoint .pth (default ckp/sam_<model>_<hash>.pth, downloaded if missing).",
    MASKS)]
AmgPreset = Annotated[str | None, _opt(
    "ssa (the original SSA settings; default for ade20k/cityscapes) | default (the library's "
    "defaults) | keep-all (keep every candidate: random or untrained weights).", MASKS)]
Amg = Annotated[list[str] | None, _opt(
    "A generation knob of the mask source, KEY=VALUE; repeatable (sam: every "
    "SamAutomaticMaskGenerator keyword; a typo lists the valid keys).", MASKS)]
AmgImpl = Annotated[str | None, _opt(
    "sam: fast (default: the same masks, filtered at low resolution) | stock "
    "(segment-anything's SamAutomaticMaskGenerator).", MASKS)]

# Semantic branch
Segmentor = Annotated[str | None, _opt(
    "hf:<hub id or folder> | py:<module or file.py>:<factory> | labels:<folder> | "
    "plugin:<name> | a short name (segformer-b5-ade, oneformer-ade-swin-l, ...). Default: the "
    "dataset's Segformer-B5.", SEMANTIC)]
SegmentorArg = Annotated[list[str] | None, _opt(
    "A keyword argument for the segmentor's factory, KEY=VALUE; repeatable.", SEMANTIC)]
Classes = Annotated[Path | None, _opt(
    "labels: or SAM 3: class names, one per line (default: the dataset's).", SEMANTIC)]
LabelMap = Annotated[Path | None, _opt(
    "labels: JSON/YAML {stored id: class index or name}; unlisted ids = no label.", SEMANTIC)]
Prompts = Annotated[Path | None, _opt(
    "SAM 3: YAML/JSON mapping a class name to a phrase or a list of phrases; a class scores the "
    "max over its phrases (default: its name).", SEMANTIC)]
PromptBatch = Annotated[int | None, _opt(
    "SAM 3: text prompts per forward pass against the image's cached features (default 16).",
    SEMANTIC)]

# Voting
Vote = Annotated[str | None, _opt(
    "hard (default; the SSA rule: top-1 of the branch's labels) | soft (highest mean "
    "probability; needs scores).", VOTING)]
MinVoteShare = Annotated[float | None, _opt(
    "A mask whose class holds less than this share of its pixels keeps the branch's labels "
    "(default 0 = off).", VOTING)]
TopK = Annotated[int | None, _opt("Class proposals kept per mask (default 3).", VOTING)]

# Outputs and scale
SaveBranch = Annotated[bool | None, _opt(
    "Also write the branch's own <stem>_branch.png.", None, "--save-branch")]
SaveVis = Annotated[bool | None, _opt("Also write an overlay <stem>_vis.jpg.", None, "--save-vis")]
Device = Annotated[str | None, _opt("cuda | cpu (default: cuda when available).")]
Overwrite = Annotated[bool | None, _opt(
    "Redo the images that are done (default: skip them, so a rerun resumes); only files ssa "
    "wrote are replaced.", SCALE, "--overwrite")]
MaxPixels = Annotated[int | None, _opt(
    "Label images with more pixels downsized to at most this many (both branches; outputs at the "
    "labelled size, the JSON keeps the original size). Default: off.", SCALE)]
WorldSize = Annotated[int | None, _opt(
    "Start N workers on this machine (one per GPU; on the CPU, N processes share the cores, "
    "gloo). Under torchrun, leave it out: workers come from torchrun.", SCALE)]
Precision = Annotated[str | None, _opt(
    "fp32 (default, exact) | bf16 (CPU and CUDA) | fp16 (CUDA): every branch's networks; "
    "post-processing and thresholds stay fp32.", SCALE)]
Compile = Annotated[bool | None, _opt(
    "torch.compile the mask branch's networks (needs a C++ compiler on the CPU, Triton on "
    "CUDA).", SCALE, "--compile")]
LogEvery = Annotated[float | None, _opt(
    "Seconds between progress lines when stderr is not a terminal (nohup, SLURM, CI); default "
    "$SSA_LOG_EVERY, else 30.", SCALE)]
Evaluate = Annotated[bool | None, _opt(
    "Score the outputs once every image is done (table + <out-dir>/eval.json).", EVAL,
    "--eval")]
Report = Annotated[bool, _opt(
    "Then write the HTML report of the out-dir (`ssa report`).", None, "--report")]
