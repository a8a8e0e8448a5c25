"""The `ssa` commands: each turns its options into a plan (`ssa.plan`, every check before any
model loads; a refusal is one line and exit code 2) and calls the library. Options are declared
once, in `ssa.cli.options`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ssa.cli import options as o
from ssa.cli.app import app, console, fail, refuse, set_log_every, setup_logging
from ssa.cli.launch import launch_export, launch_or_run, write_report
from ssa.errors import SSAError

__all__ = ["app"]


def run_config(values: dict[str, Any]) -> Any:
    """`ssa run`'s options as a `RunConfig`: `--config` YAML below the flags that were given."""
    from ssa import config
    from ssa.keyvalue import parse_key_values
    from ssa.specs.segmentors import parse_segmentor_args

    values = dict(values)
    path = values.pop("config")
    values["amg"] = parse_key_values(values["amg"] or [], "--amg", "points_per_side=32") or None
    values["segmentor_args"] = parse_segmentor_args(values.pop("segmentor_arg") or []) or None
    values["compile"] = values.pop("compile_")
    return config.build_config(config.load_yaml(path) if path else {}, values)


@app.command()
def run(
    dataset: o.Dataset = None, data_dir: o.DataDir = None, out_dir: o.OutDir = None,
    split: o.Split = None, limit: o.Limit = None, config: o.Config = None,
    masks: o.Masks = None, sam_model: o.SamModel = None, sam_checkpoint: o.SamCheckpoint = None,
    amg_preset: o.AmgPreset = None, amg: o.Amg = None, amg_impl: o.AmgImpl = None,
    segmentor: o.Segmentor = None, segmentor_arg: o.SegmentorArg = None,
    classes: o.Classes = None, label_map: o.LabelMap = None, prompts: o.Prompts = None,
    prompt_batch: o.PromptBatch = None, vote: o.Vote = None,
    min_vote_share: o.MinVoteShare = None, top_k: o.TopK = None,
    save_branch: o.SaveBranch = None, save_vis: o.SaveVis = None, device: o.Device = None,
    evaluate: o.Evaluate = None, gt_dir: o.GtDir = None, report: o.Report = None,
    overwrite: o.Overwrite = None, max_pixels: o.MaxPixels = None,
    world_size: o.WorldSize = None, precision: o.Precision = None,
    compile_: o.Compile = None, log_every: o.LogEvery = None,
) -> None:
    """Label every image of a dataset: SAM masks, voted by a semantic segmentor."""
    values = dict(locals())  # the options, before any other name is bound here
    import logging

    from ssa.plan import nothing_to_do, plan_run

    setup_logging()
    try:
        cfg = run_config(values)
        set_log_every(cfg.log_every)
        plan = plan_run(cfg, cfg.world_size)
        if cfg.report:
            from ssa.report import check_extra

            check_extra()  # before a long run, not after it
        done = nothing_to_do(plan)
    except SSAError as exc:
        refuse(exc)
    code = 0
    if done:
        logging.getLogger("ssa").info(
            "nothing to do: %s of %s images already done in %s (--overwrite redoes them)",
            done, done, plan.outputs.out_dir)
    else:
        try:
            launch_or_run(plan, cfg.world_size)
        except typer.Exit as exc:  # failed images: the report shows them
            if not cfg.report or exc.exit_code not in (0, 1):
                raise
            code = exc.exit_code
    if cfg.report:
        from ssa.report import ReportOptions

        try:
            write_report(ReportOptions.for_run(cfg))
        except SSAError as exc:
            fail(exc)
    if code:
        raise typer.Exit(code)


@app.command("eval")
def eval_(
    pred_dir: o.PredDir, dataset: o.RunDataset = None, data_dir: o.RunDataDir = None,
    split: o.RunSplit = None, gt_dir: o.GtDir = None, classes: o.EvalClasses = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the scores as JSON (percent).")] = None,
    csv_out: Annotated[Path | None, typer.Option(
        "--csv", help="Write one row per class as CSV (percent).")] = None,
    allow_missing: o.AllowMissing = False,
    workers: Annotated[int | None, typer.Option(
        help="Reading threads (default: 2 per core, at most 16).")] = None,
    report: o.Report = False,
) -> None:
    """Score a run by mIoU (mmsegmentation conventions); branch vs voted when it saved both.

    --dataset, --data-dir and --split default to the run's own (its ssa_run.json)."""
    from ssa.cli.tables import evaluate_with_progress
    from ssa.evaluation.evaluate import plan_eval
    from ssa.plan import run_defaults

    try:
        if workers is not None and workers < 1:
            raise SSAError(f"--workers {workers} must be at least 1")
        dataset, data_dir, split = run_defaults(pred_dir, dataset, data_dir, split)
        plan = plan_eval(dataset, data_dir, pred_dir, split, gt_dir, classes,
                         allow_missing=allow_missing)
    except SSAError as exc:
        refuse(exc)
    try:
        evaluate_with_progress(plan, console, json_out, csv_out, workers)
        if report:
            from ssa.report import ReportOptions

            write_report(ReportOptions(pred_dir, dataset=dataset, data_dir=data_dir,
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


def _prompt(image: list[Path], point: list[str] | None, negative: list[str] | None,
            box: str | None) -> tuple[Path, list | None, list | None, list | None]:
    """The image and the prompt of `ssa predict`'s options (`X,Y` points, an `X0,Y0,X1,Y1`
    box), with the hint for a point written as two values (`--point 128 110`)."""
    if len(image) != 1:
        extra = " ".join(str(p) for p in image[1:])
        if all(p.name.replace(".", "", 1).isdigit() for p in image[1:]):
            raise SSAError(f"a point is one value X,Y: write --point X,Y (e.g. --point "
                           f"128,110), not two values ({extra})")
        raise SSAError(f"ssa predict takes one image, got {len(image)}; pass one path")
    pos = [_parse_xy(p, "--point", 2, "X,Y 120,80") for p in point or []]
    neg = [_parse_xy(p, "--negative", 2, "X,Y 120,80") for p in negative or []]
    box_xyxy = _parse_xy(box, "--box", 4, "X0,Y0,X1,Y1 10,20,200,150") if box else None
    points = pos + neg or None
    labels = [1] * len(pos) + [0] * len(neg) if points else None
    return image[0], points, labels, box_xyxy


@app.command()
def predict(
    image: Annotated[list[Path], typer.Argument(
        help="The image to prompt (any PIL-readable file).", metavar="IMAGE")],
    point: Annotated[list[str] | None, typer.Option(
        help="A foreground click X,Y in pixels; repeatable.", rich_help_panel="Prompt")] = None,
    negative: Annotated[list[str] | None, typer.Option(
        help="A background click X,Y in pixels; repeatable.", rich_help_panel="Prompt")] = None,
    box: Annotated[str | None, typer.Option(
        help="A box X0,Y0,X1,Y1 in pixels.", rich_help_panel="Prompt")] = None,
    dataset: o.Dataset = None, masks: o.Masks = None, sam_model: o.SamModel = None,
    sam_checkpoint: o.SamCheckpoint = None, segmentor: o.Segmentor = None,
    segmentor_arg: o.SegmentorArg = None, classes: o.Classes = None,
    label_map: o.LabelMap = None, prompts: o.Prompts = None, top_k: o.TopK = None,
    device: o.Device = None, precision: o.Precision = None, compile_: o.Compile = None,
    json_path: Annotated[Path | None, typer.Option(
        "--json", help="Write the three masks as JSON (COCO RLE) here.")] = None,
    save_vis: Annotated[Path | None, typer.Option(
        "--save-vis", help="Write an overlay JPEG here.")] = None,
) -> None:
    """Click or box -> SAM's three masks (whole, part, subpart), each labelled.

    Any promptable mask source (sam:, hf:) and any segmentor of `ssa run`."""
    from ssa.config import RunConfig, validated
    from ssa.io import read_image, write_json
    from ssa.plan import plan_predict
    from ssa.run.predictor import build_predictor, check_prompt
    from ssa.specs.segmentors import parse_segmentor_args

    values = {"dataset": dataset, "masks": masks, "sam_model": sam_model,
              "sam_checkpoint": sam_checkpoint, "segmentor": segmentor, "device": device,
              "top_k": top_k, "classes": classes, "label_map": label_map, "prompts": prompts,
              "precision": precision, "compile": compile_}
    setup_logging()
    try:
        path, points, labels, box_xyxy = _prompt(image, point, negative, box)
        array = read_image(path)
        check_prompt(points, labels, box_xyxy, array.shape[:2])  # before any model loads
        plan = plan_predict(validated(
            RunConfig, {k: v for k, v in values.items() if v is not None},
            segmentor_args=parse_segmentor_args(segmentor_arg or [])))
    except SSAError as exc:
        refuse(exc)
    try:
        predictor = build_predictor(plan)
        predictor.set_image(array, Path(path.name))
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


def _print_prediction(records: list[dict]) -> None:
    from rich.console import Console
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


def _model(role: str) -> Any:
    return Annotated[str | None, typer.Option(
        f"--{role.replace('_', '-')}", help=f"{role}: hub id or folder (default: ssa's).",
        rich_help_panel="Engine models")]


@app.command()
def engine(
    data_dir: o.DataDir = None, out_dir: o.OutDir = None, limit: o.Limit = None,
    masks: o.Masks = None, sam_model: o.SamModel = None, sam_checkpoint: o.SamCheckpoint = None,
    amg_preset: o.AmgPreset = None, amg: o.Amg = None, amg_impl: o.AmgImpl = None,
    top_k: Annotated[int, typer.Option(help="Open-vocabulary proposals kept per mask.")] = 3,
    light: Annotated[bool, typer.Option(
        "--light", help="Smaller default models (BLIP base, CLIP B/32, CLIPSeg rd16, OneFormer "
        "Swin-T ADE20K).", rich_help_panel="Engine models")] = False,
    captioner: _model("captioner") = None, clip: _model("clip") = None,
    clipseg: _model("clipseg") = None, oneformer_ade: _model("oneformer_ade") = None,
    oneformer_coco: _model("oneformer_coco") = None,
    batch_size: Annotated[int, typer.Option(help="Crops per forward pass of each model.")] = 16,
    no_spacy: Annotated[bool, typer.Option(
        "--no-spacy", help="Noun phrases by the built-in heuristic even if spaCy is installed."
    )] = False,
    save_vis: o.SaveVis = None, device: o.Device = None, world_size: o.WorldSize = None,
    precision: o.Precision = None, compile_: o.Compile = None, log_every: o.LogEvery = None,
) -> None:
    """Name every mask of a folder of images with free-form words (the SSA engine).

    Sharded over --world-size N workers or torchrun's, as `ssa run` is."""
    from ssa.config import EngineConfig, validated
    from ssa.keyvalue import parse_key_values
    from ssa.plan import plan_engine

    models = {"captioner": captioner, "clip": clip, "clipseg": clipseg,
              "oneformer_ade": oneformer_ade, "oneformer_coco": oneformer_coco}
    values = {"data_dir": data_dir, "out_dir": out_dir, "limit": limit, "masks": masks,
              "sam_model": sam_model, "sam_checkpoint": sam_checkpoint,
              "amg_preset": amg_preset or "default", "amg_impl": amg_impl, "top_k": top_k,
              "light": light, "batch_size": batch_size, "use_spacy": not no_spacy,
              "save_vis": save_vis, "device": device, "precision": precision,
              "compile": compile_}
    setup_logging()
    try:
        set_log_every(log_every)
        cfg = validated(EngineConfig, {k: v for k, v in values.items() if v is not None},
                        models=models, amg=parse_key_values(amg or [], "--amg",
                                                            "points_per_side=32"))
        plan = plan_engine(cfg, world_size)  # before torch or a model library is imported
    except SSAError as exc:
        refuse(exc)
    launch_or_run(plan, world_size, engine=True)


@app.command("export")
def export_(
    format: Annotated[str, typer.Option(
        "--format", help="coco-instances | coco-panoptic | cityscapes | label-studio | "
        "hf-dataset")],
    pred_dir: Annotated[Path, typer.Option(
        help="The --out-dir of a finished `ssa run` or `ssa engine`.", rich_help_panel="Data")],
    out: Annotated[Path, typer.Option(
        help="coco-instances: a .json file; hf-dataset: a folder (save_to_disk) or a .parquet "
        "file; the others: a folder.", rich_help_panel="Data")],
    dataset: o.RunDataset = None, data_dir: o.RunDataDir = None, split: o.RunSplit = None,
    classes: Annotated[Path | None, typer.Option(
        help="Class names, one per line (default: the run's class_names; for an engine run the "
        "sorted names of its masks). Category id = line index + 1.")] = None,
    things: Annotated[Path | None, typer.Option(
        help="coco-panoptic: thing class names, one per line (built in for ADE20K-150 and "
        "Cityscapes).")] = None,
    image_root_url: Annotated[str | None, typer.Option(
        help="label-studio: URL prefix of the images (default /data/local-files/?d=).")] = None,
    limit: o.Limit = None,
    images: Annotated[Path | None, typer.Option(
        help="Export only the images this file lists, one relative path per line (e.g. the "
        "review.txt of `ssa report`).", rich_help_panel="Data")] = None,
    allow_missing: o.AllowMissing = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an earlier export of ssa's at --out.")] = False,
    world_size: Annotated[int | None, typer.Option(
        help="Start N CPU workers on this machine (no GPU is used); under torchrun, leave it "
        "out.", rich_help_panel="Scale")] = None,
) -> None:
    """Write a run's labels as COCO, COCO panoptic, Cityscapes, Label Studio or a HF dataset.

    --dataset, --data-dir and --split default to the run's own (its ssa_run.json)."""
    from ssa.cli.launch import export_share
    from ssa.export.base import ExportConfig
    from ssa.export.runner import check_export
    from ssa.plan import check_workers, run_defaults

    try:
        dataset, data_dir, split = run_defaults(pred_dir, dataset, data_dir, split)
        cfg = ExportConfig(
            format=format, pred_dir=pred_dir, out=out, dataset=dataset, data_dir=data_dir,
            split=split, classes=classes, things=things, image_root_url=image_root_url,
            limit=limit, allow_missing=allow_missing, overwrite=overwrite, images=images,
        )
        check_workers("cpu", world_size)
        check_export(cfg, world_size or 1)  # every refusal before a worker starts
    except SSAError as exc:
        refuse(exc)
    from ssa import distributed

    if distributed.rank_info_from_env() is None and world_size is not None and world_size > 1:
        launch_export(cfg, world_size)
    if export_share(cfg):
        raise typer.Exit(1)
