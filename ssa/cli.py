"""The `ssa` command line: thin commands that parse options, then call the library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from ssa import __version__
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
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = None,
) -> None:
    """Label SAM's masks with a semantic segmentor's votes, over whole datasets."""


def fail(exc: Exception) -> None:
    """One line, exit code 1."""
    console.print(f"[bold red]Error:[/] {exc}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


DatasetOpt = Annotated[
    Optional[str],
    typer.Option(help="ade20k | cityscapes | foggy_driving | folder", rich_help_panel="Data"),
]
DataDirOpt = Annotated[
    Optional[Path], typer.Option(help="The dataset's root folder.", rich_help_panel="Data")
]

GtDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="folder only: ground truth, <stem>.png class indices (255 = ignore) mirroring the "
        "images' relative paths.",
        rich_help_panel="Evaluation",
    ),
]


@app.command()
def run(
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    out_dir: Annotated[
        Optional[Path], typer.Option(help="Where the outputs go.", rich_help_panel="Data")
    ] = None,
    split: Annotated[
        Optional[str],
        typer.Option(help="Dataset split (default: validation/val/test).", rich_help_panel="Data"),
    ] = None,
    limit: Annotated[
        Optional[int], typer.Option(help="Label only the first N images.", rich_help_panel="Data")
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option(help="YAML config (configs/<name>.yaml); flags override it."),
    ] = None,
    sam_model: Annotated[
        Optional[str], typer.Option(help="vit_h | vit_l | vit_b", rich_help_panel="Mask branch")
    ] = None,
    sam_checkpoint: Annotated[
        Optional[Path],
        typer.Option(
            help="SAM .pth (default ckp/sam_<model>_<hash>.pth, downloaded if missing).",
            rich_help_panel="Mask branch",
        ),
    ] = None,
    amg_preset: Annotated[
        Optional[str],
        typer.Option(
            help="ssa (the original SSA settings; default for ade20k/cityscapes) | default "
            "(the library's defaults).",
            rich_help_panel="Mask branch",
        ),
    ] = None,
    amg: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Any SamAutomaticMaskGenerator knob, KEY=VALUE; repeatable.",
            rich_help_panel="Mask branch",
        ),
    ] = None,
    segmentor: Annotated[
        Optional[str],
        typer.Option(
            help="hf:<hub id or local folder> (default: the dataset's Segformer-B5).",
            rich_help_panel="Semantic branch",
        ),
    ] = None,
    top_k: Annotated[
        Optional[int],
        typer.Option(help="Class proposals kept per mask.", rich_help_panel="Voting"),
    ] = None,
    save_branch: Annotated[
        Optional[bool],
        typer.Option("--save-branch", help="Also write the branch's own <stem>_branch.png."),
    ] = None,
    save_vis: Annotated[
        Optional[bool], typer.Option("--save-vis", help="Also write an overlay <stem>_vis.jpg.")
    ] = None,
    device: Annotated[
        Optional[str], typer.Option(help="cuda | cpu (default: cuda when available).")
    ] = None,
    evaluate: Annotated[
        Optional[bool],
        typer.Option(
            "--eval",
            help="Score the outputs once every image is done (table + <out-dir>/eval.json).",
            rich_help_panel="Evaluation",
        ),
    ] = None,
    gt_dir: GtDirOpt = None,
) -> None:
    """Label every image of a dataset: SAM masks, voted by a semantic segmentor."""
    from ssa import config as config_mod
    from ssa.evaluate import check_run_eval
    from ssa.masks import parse_amg
    from ssa.progress import run_with_progress

    try:
        file_values = config_mod.load_yaml(config) if config else {}
        if "amg" in file_values and isinstance(file_values["amg"], dict):
            parse_amg(f"{k}={v}" for k, v in file_values["amg"].items())
        cli_values = {
            "dataset": dataset,
            "data_dir": data_dir,
            "out_dir": out_dir,
            "split": split,
            "limit": limit,
            "sam_model": sam_model,
            "sam_checkpoint": sam_checkpoint,
            "amg_preset": amg_preset,
            "amg": parse_amg(amg or []) or None,
            "segmentor": segmentor,
            "top_k": top_k,
            "save_branch": save_branch,
            "save_vis": save_vis,
            "device": device,
            "evaluate": evaluate,
            "gt_dir": gt_dir,
        }
        cfg = config_mod.build_config(file_values, cli_values)
        check_run_eval(cfg)
        summary = run_with_progress(cfg, console)
        if cfg.evaluate and summary.failed:
            console.print(
                f"[yellow]not scored:[/] {len(summary.failed)} images failed; rerun them, or "
                f"score the rest with `ssa eval --allow-missing`",
                highlight=False,
            )
        elif cfg.evaluate:
            from ssa.evaluate import EVAL_JSON, plan_run_eval
            from ssa.report import evaluate_with_progress

            evaluate_with_progress(plan_run_eval(cfg), console, cfg.out_dir / EVAL_JSON)
    except SSAError as exc:
        fail(exc)
        return
    if summary.failed:
        raise typer.Exit(1)


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
        Optional[str],
        typer.Option(help="Dataset split (default: validation/val/test).", rich_help_panel="Data"),
    ] = None,
    gt_dir: GtDirOpt = None,
    classes: Annotated[
        Optional[Path],
        typer.Option(
            help="folder only: class names, one per line (or a JSON list); default: the "
            "'class_names' of the predictions' <stem>_semantic.json.",
            rich_help_panel="Data",
        ),
    ] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="Write the scores as JSON (percent).")
    ] = None,
    csv_out: Annotated[
        Optional[Path], typer.Option("--csv", help="Write one row per class as CSV (percent).")
    ] = None,
    allow_missing: Annotated[
        bool,
        typer.Option("--allow-missing", help="Count images without a prediction as all wrong."),
    ] = False,
    workers: Annotated[
        Optional[int], typer.Option(help="Reading threads (default: 2 per core, at most 16).")
    ] = None,
) -> None:
    """Score predictions by mIoU (mmsegmentation conventions); branch vs voted when present."""
    from ssa.evaluate import plan_eval
    from ssa.report import evaluate_with_progress

    try:
        if workers is not None and workers < 1:
            raise SSAError(f"--workers {workers} must be at least 1")
        plan = plan_eval(dataset, data_dir, pred_dir, split, gt_dir, classes,
                         allow_missing=allow_missing)
        evaluate_with_progress(plan, console, json_out, csv_out, workers)
    except SSAError as exc:
        fail(exc)


if __name__ == "__main__":
    app()
