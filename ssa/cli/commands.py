"""The `ssa` command line: thin commands that parse options, then call the library."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ssa import __version__, io
from ssa.errors import SSAError

app = typer.Typer(
    rich_markup_mode="rich",
    no_args_is_help=True,
    help="Semantic labels for Segment Anything masks.",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


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


def setup_logging() -> None:
    """`logging` for this process, once: rich's handler on a terminal, plain lines with time,
    level and rank otherwise (`ssa.cli.progress.configure_logging`)."""
    from ssa.cli.progress import configure_logging

    configure_logging(console)


LogEveryOpt = Annotated[
    float | None,
    typer.Option(
        help="Seconds between progress lines when stderr is not a terminal (nohup, SLURM, CI); "
        "default $SSA_LOG_EVERY, else 30.",
        rich_help_panel="Scale",
    ),
]


def _set_log_every(seconds: float | None) -> None:
    import os

    from ssa.cli.progress import LOG_EVERY_ENV

    if seconds is not None:
        if not seconds > 0:
            raise SSAError(f"--log-every {seconds} must be a positive number of seconds")
        os.environ[LOG_EVERY_ENV] = str(seconds)  # workers inherit it


def fail(exc: Exception) -> None:
    """One line, exit code 1."""
    console.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


DatasetOpt = Annotated[
    str | None,
    typer.Option(help="ade20k | cityscapes | foggy_driving | folder", rich_help_panel="Data"),
]
DataDirOpt = Annotated[
    Path | None, typer.Option(help="The dataset's root folder.", rich_help_panel="Data")
]

OutDirOpt = Annotated[
    Path | None, typer.Option(help="Where the outputs go.", rich_help_panel="Data")
]
LimitOpt = Annotated[
    int | None, typer.Option(help="Label only the first N images.", rich_help_panel="Data")
]
SamCheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        help="The sam: checkpoint .pth (default ckp/sam_<model>_<hash>.pth, downloaded if "
        "missing).",
        rich_help_panel="Mask branch",
    ),
]
AmgOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="A generation knob of the mask source, KEY=VALUE; repeatable (sam: every "
        "SamAutomaticMaskGenerator keyword; a typo lists the valid keys).",
        rich_help_panel="Mask branch",
    ),
]
MasksOpt = Annotated[
    str | None,
    typer.Option(
        help="The mask source: sam:<vit_h|vit_l|vit_b>[:<file.pth>] | hf:<hub id or folder> | "
        "json:<folder of SA-1B <stem>.json> (a bare folder too) | py:<module or file.py>:"
        "<factory> | plugin:<name>. Default: sam:<--sam-model>.",
        rich_help_panel="Mask branch",
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option(help="cuda | cpu (default: cuda when available).")
]
WorldSizeOpt = Annotated[
    int | None,
    typer.Option(
        help="Start N workers on this machine (one per GPU; CPU workers use gloo). Under "
        "torchrun, leave it out: workers come from torchrun.",
        rich_help_panel="Scale",
    ),
]

GtDirOpt = Annotated[
    Path | None,
    typer.Option(
        help="folder only: ground truth, <stem>.png class indices (255 = ignore) mirroring the "
        "images' relative paths.",
        rich_help_panel="Evaluation",
    ),
]


ReportOpt = Annotated[
    bool,
    typer.Option("--report", help="Then write the HTML report of the out-dir (`ssa report`).",
                 rich_help_panel="Evaluation"),
]


@app.command()
def run(
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    out_dir: OutDirOpt = None,
    split: Annotated[
        str | None,
        typer.Option(help="Dataset split (default: validation/val/test).", rich_help_panel="Data"),
    ] = None,
    limit: LimitOpt = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML config (configs/<name>.yaml); flags override it."),
    ] = None,
    sam_model: Annotated[
        str | None, typer.Option(
            help="vit_h | vit_l | vit_b: shorthand for --masks sam:<model>.",
            rich_help_panel="Mask branch",
        )
    ] = None,
    sam_checkpoint: SamCheckpointOpt = None,
    amg_preset: Annotated[
        str | None,
        typer.Option(
            help="ssa (the original SSA settings; default for ade20k/cityscapes) | default "
            "(the library's defaults).",
            rich_help_panel="Mask branch",
        ),
    ] = None,
    amg: AmgOpt = None,
    amg_impl: Annotated[
        str | None,
        typer.Option(
            help="fast (default: same masks, low-res filtering) | stock "
            "(segment-anything's SamAutomaticMaskGenerator).",
            rich_help_panel="Mask branch",
        ),
    ] = None,
    masks: MasksOpt = None,
    segmentor: Annotated[
        str | None,
        typer.Option(
            help="hf:<hub id or folder> | py:<module or file.py>:<factory> | labels:<folder> | "
            "plugin:<name> | a short name (segformer-b5-ade, oneformer-ade-swin-l, ...). "
            "Default: the dataset's Segformer-B5.",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    segmentor_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="A keyword argument for the segmentor's factory, KEY=VALUE; repeatable.",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    classes: Annotated[
        Path | None,
        typer.Option(
            help="labels: or SAM 3: class names, one per line (default: the dataset's).",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="SAM 3: YAML/JSON mapping a class name to a phrase or a list of phrases; a class "
            "scores the max over its phrases (default: its name).",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    prompt_batch: Annotated[
        int | None,
        typer.Option(
            help="SAM 3: text prompts per forward pass against the image's cached features "
            "(default 16).",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    label_map: Annotated[
        Path | None,
        typer.Option(
            help="labels: JSON/YAML {stored id: class index or name}; unlisted ids = no label.",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    vote: Annotated[
        str | None,
        typer.Option(
            help="hard (the SSA rule: top-1 of the branch's labels) | soft (highest mean "
            "probability; needs scores).",
            rich_help_panel="Voting",
        ),
    ] = None,
    min_vote_share: Annotated[
        float | None,
        typer.Option(
            help="A mask whose class holds less than this share of its pixels keeps the "
            "branch's labels (0 = off).",
            rich_help_panel="Voting",
        ),
    ] = None,
    top_k: Annotated[
        int | None,
        typer.Option(help="Class proposals kept per mask.", rich_help_panel="Voting"),
    ] = None,
    save_branch: Annotated[
        bool | None,
        typer.Option("--save-branch", help="Also write the branch's own <stem>_branch.png."),
    ] = None,
    save_vis: Annotated[
        bool | None, typer.Option("--save-vis", help="Also write an overlay <stem>_vis.jpg.")
    ] = None,
    device: DeviceOpt = None,
    evaluate: Annotated[
        bool | None,
        typer.Option(
            "--eval",
            help="Score the outputs once every image is done (table + <out-dir>/eval.json).",
            rich_help_panel="Evaluation",
        ),
    ] = None,
    gt_dir: GtDirOpt = None,
    overwrite: Annotated[
        bool | None,
        typer.Option(
            "--overwrite",
            help="Redo images that are done (default: skip them, so a rerun resumes).",
            rich_help_panel="Scale",
        ),
    ] = None,
    max_pixels: Annotated[
        int | None,
        typer.Option(
            help="Label images with more pixels downsized to at most this many (both branches; "
            "outputs at the labelled size, the JSON keeps the original size). Default: off.",
            rich_help_panel="Scale",
        ),
    ] = None,
    world_size: WorldSizeOpt = None,
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32 (default, exact) | bf16 (CPU and CUDA) | fp16 (CUDA): both branches' "
            "networks; post-processing and thresholds stay fp32.",
            rich_help_panel="Scale",
        ),
    ] = None,
    compile_: Annotated[
        bool | None,
        typer.Option(
            "--compile",
            help="torch.compile the mask branch's encoder and decoder (needs a C++ compiler "
            "on the CPU, Triton on CUDA).",
            rich_help_panel="Scale",
        ),
    ] = None,
    log_every: LogEveryOpt = None,
    report: ReportOpt = False,
) -> None:
    """Label every image of a dataset: SAM masks, voted by a semantic segmentor."""
    from ssa import config as config_mod
    from ssa.keyvalue import parse_key_values
    from ssa.plan import nothing_to_do, plan_run
    from ssa.specs.segmentors import parse_segmentor_args
    from ssa.words import plural

    setup_logging()
    try:
        _set_log_every(log_every)
        file_values = config_mod.load_yaml(config) if config else {}
        cli_values = {
            "dataset": dataset,
            "data_dir": data_dir,
            "out_dir": out_dir,
            "split": split,
            "limit": limit,
            "sam_model": sam_model,
            "sam_checkpoint": sam_checkpoint,
            "amg_preset": amg_preset,
            # Checked against the mask source's knobs once the spec is known (check_run).
            "amg": parse_key_values(amg or [], "--amg", "points_per_side=32") or None,
            "amg_impl": amg_impl,
            "masks": masks,
            "segmentor": segmentor,
            "segmentor_args": parse_segmentor_args(segmentor_arg or []) or None,
            "classes": classes,
            "label_map": label_map,
            "prompts": prompts,
            "prompt_batch": prompt_batch,
            "vote": vote,
            "min_vote_share": min_vote_share,
            "top_k": top_k,
            "save_branch": save_branch,
            "save_vis": save_vis,
            "device": device,
            "overwrite": overwrite,
            "max_pixels": max_pixels,
            "evaluate": evaluate,
            "gt_dir": gt_dir,
            "precision": precision,
            "compile": compile_,
        }
        cfg = config_mod.build_config(file_values, cli_values)
        # Every check that needs no model, once, before torch or a model library is imported.
        plan = plan_run(cfg, world_size)
        if report:
            from ssa.report import check_extra

            check_extra()  # before a long run, not after it
        done = nothing_to_do(plan)
    except SSAError as exc:
        fail(exc)
        return
    if done:
        import logging

        logging.getLogger("ssa").info(
            "nothing to do: %s of %s already done in %s (--overwrite redoes them)",
            done, plural(done, "image"), plan.outputs.out_dir,
        )
    code = 0
    if not done:
        try:
            _launch_or_run(plan, world_size)
        except typer.Exit as exc:  # workers' exit, or failed images: the report shows them
            if not report or exc.exit_code not in (0, 1):
                raise
            code = exc.exit_code
    if report:
        from ssa.report import ReportOptions

        try:
            _write_report(ReportOptions.for_run(cfg))
        except SSAError as exc:
            fail(exc)
        if code:
            raise typer.Exit(code)


def _write_report(options: Any) -> None:
    """`--report`: the HTML report of the out-dir (`ssa report`; rank 0 only); prints the
    file:// URL of its index.html."""
    from ssa import distributed
    from ssa.report import build_report

    info = distributed.rank_info_from_env()
    if info is None or info.is_main:
        console.print(f"writing the report of {options.pred_dir}", highlight=False)
        print(build_report(options).index.resolve().as_uri())


def _launch_or_run(plan: Any, world_size: int | None, engine: bool = False) -> None:
    """Start `world_size` workers (`ssa run`/`ssa engine --world-size N`), or run this process's
    share (one process, or a rank under torchrun); exit 1 when any image failed. The plan was
    checked once, here: the workers get it as it is."""
    from ssa import distributed

    info = distributed.rank_info_from_env()
    if info is None and world_size is not None and world_size > 1:
        from ssa.run.runner import out_dir_lock

        try:
            with out_dir_lock(plan.outputs.out_dir, what=getattr(plan, "command", "ssa run")) \
                    as lock:
                os.environ[io.LOCK_ENV] = str(lock.path)  # its workers are covered by it
                code = distributed.launch(world_size, run_share, (plan, engine), log=_log_error)
        except SSAError as exc:
            fail(exc)
            return
        raise typer.Exit(code)
    code = run_share(plan, engine)
    if code:
        raise typer.Exit(1 if code == distributed.REPORTED_EXIT else code)


def run_share(plan: Any, engine: bool = False) -> int:
    """This process's share of the run (the only process, a rank under torchrun, or a worker of
    `distributed.launch`, which pickles this function by name): returns the exit code, 1 when
    rank 0 saw images fail, `distributed.REPORTED_EXIT` after a one-line error."""
    from ssa import distributed
    from ssa.cli.progress import run_with_progress
    from ssa.run.heap import keep_freed_memory

    setup_logging()  # a worker of `distributed.launch` is a fresh process
    keep_freed_memory()  # the command's choice for its process (SSA_KEEP_HEAP=0 turns it off)
    runner = None
    if engine:
        from ssa.engine.runner import run_engine as runner
    try:
        info = distributed.rank_info_from_env()
        summary = run_with_progress(plan, console, info, runner=runner)
    except SSAError as exc:
        _log_error(str(exc))
        return distributed.REPORTED_EXIT
    # Rank 0 speaks for the run (its summary covers every rank); the others end cleanly.
    return 1 if summary.failed and (info is None or info.is_main) else 0


def _log_error(message: str) -> None:
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)


@app.command("eval")
def eval_(
    dataset: Annotated[
        str,
        typer.Option(help="ade20k | cityscapes | foggy_driving | folder", rich_help_panel="Data"),
    ],
    data_dir: Annotated[
        Path, typer.Option(help="The dataset's root folder.", rich_help_panel="Data")
    ],
    pred_dir: Annotated[
        Path,
        typer.Option(help="The --out-dir of `ssa run` (<stem>_semantic.png files).",
                     rich_help_panel="Data"),
    ],
    split: Annotated[
        str | None,
        typer.Option(help="Dataset split (default: validation/val/test).", rich_help_panel="Data"),
    ] = None,
    gt_dir: GtDirOpt = None,
    classes: Annotated[
        Path | None,
        typer.Option(
            help="folder only: class names, one per line (or a JSON list); default: the "
            "'class_names' of the predictions' <stem>_semantic.json.",
            rich_help_panel="Data",
        ),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the scores as JSON (percent).")
    ] = None,
    csv_out: Annotated[
        Path | None, typer.Option("--csv", help="Write one row per class as CSV (percent).")
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option("--allow-missing", help="Count images without a prediction as all wrong."),
    ] = False,
    workers: Annotated[
        int | None, typer.Option(help="Reading threads (default: 2 per core, at most 16).")
    ] = None,
    report: ReportOpt = False,
) -> None:
    """Score predictions by mIoU (mmsegmentation conventions); branch vs voted when present."""
    from ssa.cli.tables import evaluate_with_progress
    from ssa.evaluation.evaluate import plan_eval

    try:
        if workers is not None and workers < 1:
            raise SSAError(f"--workers {workers} must be at least 1")
        plan = plan_eval(dataset, data_dir, pred_dir, split, gt_dir, classes,
                         allow_missing=allow_missing)
        evaluate_with_progress(plan, console, json_out, csv_out, workers)
        if report:
            from ssa.report import ReportOptions

            _write_report(ReportOptions(pred_dir, dataset=dataset, data_dir=data_dir,
                                        split=split, gt_dir=gt_dir, classes=classes))
    except SSAError as exc:
        fail(exc)


def _parse_xy(raw: str, flag: str, count: int, example: str) -> list[float]:
    parts = raw.replace(" ", "").split(",")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) != count:
        form, sample = example.split()
        raise SSAError(f"{flag} {raw!r} is not {form}; write e.g. {flag} {sample}")
    return values


def _print_prediction(records: list[dict]) -> None:
    from rich.table import Table

    table = Table(title="ssa predict: whole -> part -> subpart")
    for column in ("granularity", "area", "predicted IoU", "class_name", "top proposals"):
        table.add_column(column, justify="right" if column in ("area", "predicted IoU") else "left")
    for r in records:
        props = ", ".join(
            f"{n} {s:.0%}" for n, s in zip(r["class_proposals"], r["proposal_shares"])
        )
        table.add_row(
            r["granularity"], str(r["area"]), f"{r['predicted_iou']:.3f}",
            r["class_name"] or "-", props or "-",
        )
    Console().print(table)


@app.command()
def predict(
    image: Annotated[Path, typer.Argument(help="The image to prompt (any PIL-readable file).")],
    point: Annotated[
        list[str] | None,
        typer.Option(
            help="A foreground click X,Y in pixels; repeatable.", rich_help_panel="Prompt"
        ),
    ] = None,
    negative: Annotated[
        list[str] | None,
        typer.Option(
            help="A background click X,Y in pixels; repeatable.", rich_help_panel="Prompt"
        ),
    ] = None,
    box: Annotated[
        str | None,
        typer.Option(help="A box X0,Y0,X1,Y1 in pixels.", rich_help_panel="Prompt"),
    ] = None,
    dataset: Annotated[
        str,
        typer.Option(
            help="ade20k | cityscapes | foggy_driving | folder: the class names and default "
            "segmentor (folder: the segmentor's own names).",
            rich_help_panel="Semantic branch",
        ),
    ] = "folder",
    masks: Annotated[
        str | None,
        typer.Option(
            help="A promptable mask source: sam:<vit_h|vit_l|vit_b>[:<file.pth>] | hf:<hub id "
            "or folder> | py:<module or file.py>:<factory> | plugin:<name>. Default: "
            "sam:<--sam-model>.",
            rich_help_panel="Mask branch",
        ),
    ] = None,
    sam_model: Annotated[
        str, typer.Option(
            help="vit_h | vit_l | vit_b: shorthand for --masks sam:<model>.",
            rich_help_panel="Mask branch",
        )
    ] = "vit_h",
    sam_checkpoint: SamCheckpointOpt = None,
    segmentor: Annotated[
        str | None,
        typer.Option(
            help="As in `ssa run`: hf:<hub id or folder> | py:<module or file.py>:<factory> | "
            "labels:<folder> (the image's file name finds its labels) | plugin:<name> | a short "
            "name. Default: the dataset's Segformer-B5.",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    segmentor_arg: Annotated[
        list[str] | None,
        typer.Option(
            help="A keyword argument for the segmentor's factory, KEY=VALUE; repeatable.",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    classes: Annotated[
        Path | None,
        typer.Option(
            help="labels: or SAM 3: class names, one per line (default: the dataset's).",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    label_map: Annotated[
        Path | None,
        typer.Option(
            help="labels: JSON/YAML {stored id: class index or name}; unlisted ids = no label.",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help="SAM 3: YAML/JSON mapping a class name to a phrase or a list of phrases.",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option(help="Class proposals kept per mask.", rich_help_panel="Voting")
    ] = 3,
    device: DeviceOpt = None,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Write the three masks as JSON (COCO RLE) here."),
    ] = None,
    save_vis: Annotated[
        Path | None, typer.Option("--save-vis", help="Write an overlay JPEG here.")
    ] = None,
) -> None:
    """Click or box -> the model's three masks (whole, part, subpart), each with a semantic
    label; any promptable mask source (sam:, hf:)."""
    from ssa.config import RunConfig, validated
    from ssa.io import read_image, write_json
    from ssa.run.predictor import build_predictor, check_prompt
    from ssa.specs.segmentors import parse_segmentor_args

    setup_logging()
    try:
        args = parse_segmentor_args(segmentor_arg or [])
        pos = [_parse_xy(p, "--point", 2, "X,Y 120,80") for p in point or []]
        neg = [_parse_xy(p, "--negative", 2, "X,Y 120,80") for p in negative or []]
        box_xyxy = _parse_xy(box, "--box", 4, "X0,Y0,X1,Y1 10,20,200,150") if box else None
        array = read_image(image)
        points = pos + neg or None
        labels = [1] * len(pos) + [0] * len(neg) if points else None
        # Check the prompt against the image before any model loads.
        check_prompt(points, labels, box_xyxy, array.shape[:2])
        cfg = validated(
            RunConfig, dataset=dataset, masks=masks, sam_model=sam_model,
            sam_checkpoint=sam_checkpoint, segmentor=segmentor, segmentor_args=args,
            device=device, top_k=top_k, classes=classes, label_map=label_map, prompts=prompts,
        )
        predictor = build_predictor(cfg)
        predictor.set_image(array, Path(image.name))
        records = predictor.predict(points=points, labels=labels, box=box_xyxy)
        _print_prediction(records)
        if json_path is not None:
            prompt = {"points": points or [], "point_labels": labels or [], "box": box_xyxy}
            write_json(json_path, predictor.to_json(records, prompt))
            console.print(f"wrote {json_path}")
        if save_vis is not None:
            predictor.write_overlay(save_vis, records)
            console.print(f"wrote {save_vis}")
    except SSAError as exc:
        fail(exc)



@app.command()
def engine(
    data_dir: DataDirOpt = None,
    out_dir: OutDirOpt = None,
    masks: MasksOpt = None,
    limit: LimitOpt = None,
    sam_model: Annotated[
        str, typer.Option(
            help="vit_h | vit_l | vit_b: shorthand for --masks sam:<model>.",
            rich_help_panel="Mask branch",
        )
    ] = "vit_h",
    sam_checkpoint: SamCheckpointOpt = None,
    amg_preset: Annotated[
        str, typer.Option(help="default | ssa", rich_help_panel="Mask branch")
    ] = "default",
    amg: AmgOpt = None,
    amg_impl: Annotated[
        str,
        typer.Option(help="sam: fast | stock (see ssa run).", rich_help_panel="Mask branch"),
    ] = "fast",
    top_k: Annotated[
        int, typer.Option(help="Open-vocabulary proposals kept per mask.")
    ] = 3,
    light: Annotated[
        bool,
        typer.Option(
            "--light",
            help="Smaller default models (BLIP base, CLIP B/32, CLIPSeg rd16, OneFormer Swin-T "
            "ADE20K).",
            rich_help_panel="Engine models",
        ),
    ] = False,
    captioner: Annotated[
        str | None,
        typer.Option(help="BLIP captioner: hub id or folder.", rich_help_panel="Engine models"),
    ] = None,
    clip: Annotated[
        str | None,
        typer.Option(help="CLIP: hub id or folder.", rich_help_panel="Engine models"),
    ] = None,
    clipseg: Annotated[
        str | None,
        typer.Option(help="CLIPSeg: hub id or folder.", rich_help_panel="Engine models"),
    ] = None,
    oneformer_ade: Annotated[
        str | None,
        typer.Option(
            help="OneFormer with ADE20K classes: hub id or folder.",
            rich_help_panel="Engine models",
        ),
    ] = None,
    oneformer_coco: Annotated[
        str | None,
        typer.Option(
            help="OneFormer with COCO classes: hub id or folder.",
            rich_help_panel="Engine models",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Crops per forward pass of each model.")
    ] = 16,
    no_spacy: Annotated[
        bool,
        typer.Option(
            "--no-spacy", help="Take noun phrases with the built-in heuristic even if spaCy is "
            "installed."
        ),
    ] = False,
    save_vis: Annotated[
        bool, typer.Option("--save-vis", help="Also write an overlay <stem>_vis.jpg.")
    ] = False,
    device: DeviceOpt = None,
    world_size: WorldSizeOpt = None,
    log_every: LogEveryOpt = None,
) -> None:
    """Name every mask of a folder of images with free-form words (the SSA engine).

    With --world-size N or under torchrun the images are sharded across the workers, as with
    `ssa run`."""
    from ssa.config import EngineConfig, validated
    from ssa.keyvalue import parse_key_values
    from ssa.plan import plan_engine

    setup_logging()
    try:
        _set_log_every(log_every)
        cfg = validated(
            EngineConfig,
            data_dir=data_dir,
            out_dir=out_dir,
            masks=masks,
            sam_model=sam_model,
            sam_checkpoint=sam_checkpoint,
            amg_preset=amg_preset,
            amg=parse_key_values(amg or [], "--amg", "points_per_side=32"),
            amg_impl=amg_impl,
            models={
                "captioner": captioner,
                "clip": clip,
                "clipseg": clipseg,
                "oneformer_ade": oneformer_ade,
                "oneformer_coco": oneformer_coco,
            },
            light=light,
            top_k=top_k,
            batch_size=batch_size,
            save_vis=save_vis,
            device=device,
            limit=limit,
            use_spacy=not no_spacy,
        )
        plan = plan_engine(cfg, world_size)  # before torch or a model library is imported
    except SSAError as exc:
        fail(exc)
        return
    _launch_or_run(plan, world_size, engine=True)


# --- ssa export (issue 13): a finished run's labels in the formats dataset tools import ---


@app.command("export")
def export_(
    format: Annotated[
        str,
        typer.Option(
            "--format",
            help="coco-instances | coco-panoptic | cityscapes | label-studio | hf-dataset",
        ),
    ],
    pred_dir: Annotated[
        Path,
        typer.Option(help="The --out-dir of a finished `ssa run` or `ssa engine`.",
                     rich_help_panel="Data"),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="coco-instances: a .json file; hf-dataset: a folder (save_to_disk) or a "
            ".parquet file; the others: a folder.",
            rich_help_panel="Data",
        ),
    ],
    dataset: Annotated[
        str,
        typer.Option(help="ade20k | cityscapes | foggy_driving | folder: how --data-dir is laid "
                     "out, as in `ssa run`.", rich_help_panel="Data"),
    ] = "folder",
    data_dir: Annotated[
        Path | None,
        typer.Option(help="The dataset the run read (needed by every format but cityscapes: it "
                     "names or embeds the images).", rich_help_panel="Data"),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Dataset split (default: validation/val/test).", rich_help_panel="Data"),
    ] = None,
    classes: Annotated[
        Path | None,
        typer.Option(help="Class names, one per line (default: the run's class_names; for an "
                     "engine run the sorted names of its masks). Category id = line index + 1."),
    ] = None,
    things: Annotated[
        Path | None,
        typer.Option(help="coco-panoptic: thing class names, one per line (built in for "
                     "ADE20K-150 and Cityscapes)."),
    ] = None,
    image_root_url: Annotated[
        str | None,
        typer.Option(help="label-studio: URL prefix of the images (default "
                     "/data/local-files/?d=)."),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Export only the first N images.", rich_help_panel="Data")
    ] = None,
    images: Annotated[
        Path | None,
        typer.Option(help="Export only the images this file lists, one relative path per line "
                     "(e.g. the review.txt of `ssa report`).", rich_help_panel="Data"),
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option("--allow-missing",
                     help="Export the images that are done when some failed or are not done."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out.")
    ] = False,
    world_size: WorldSizeOpt = None,
) -> None:
    """Write a run's labels as COCO, COCO panoptic, Cityscapes, Label Studio or a HF dataset."""
    from ssa import distributed
    from ssa.export.base import ExportConfig
    from ssa.export.runner import check_export

    info = distributed.rank_info_from_env()
    try:
        cfg = ExportConfig(
            format=format, pred_dir=pred_dir, out=out, dataset=dataset, data_dir=data_dir,
            split=split, classes=classes, things=things, image_root_url=image_root_url,
            limit=limit, allow_missing=allow_missing, overwrite=overwrite, images=images,
        )
        if world_size is not None and world_size < 1:
            raise SSAError(f"--world-size {world_size} must be at least 1")
        if info is not None and world_size not in (None, info.world_size):
            raise SSAError(
                f"--world-size {world_size}, but torchrun started {info.world_size} workers "
                f"(WORLD_SIZE); leave --world-size out under torchrun"
            )
        if info is None and world_size is not None and world_size > 1:
            check_export(cfg, world_size)
            distributed.check_world_size("cpu", world_size)
            from ssa.export.runner import export_lock

            with export_lock(cfg) as lock:
                os.environ[io.LOCK_ENV] = str(lock.path)  # its workers are covered by it
                code = distributed.launch(world_size, export_share, (cfg,), log=_log_error)
            raise typer.Exit(code)
    except SSAError as exc:
        fail(exc)
        return
    code = export_share(cfg)
    if code:
        raise typer.Exit(1)


def export_share(cfg: Any) -> int:
    """This process's share of `ssa export` (the only process, a rank under torchrun, or a
    worker of `distributed.launch`): 0, or `distributed.REPORTED_EXIT` after a one-line error."""
    from ssa import distributed
    from ssa.cli.progress import export_with_progress

    try:
        export_with_progress(cfg, console, distributed.rank_info_from_env())
    except SSAError as exc:
        _log_error(str(exc))
        return distributed.REPORTED_EXIT
    return 0


if __name__ == "__main__":
    app()
