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
) -> None:
    """Label every image of a dataset: SAM masks, voted by a semantic segmentor."""
    from ssa import config as config_mod
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
        }
        cfg = config_mod.build_config(file_values, cli_values)
        summary = run_with_progress(cfg, console)
    except SSAError as exc:
        fail(exc)
        return
    if summary.failed:
        raise typer.Exit(1)



@app.command()
def engine(
    data_dir: DataDirOpt = None,
    out_dir: Annotated[
        Optional[Path], typer.Option(help="Where the outputs go.", rich_help_panel="Data")
    ] = None,
    masks: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of SA-1B-style JSON masks (<stem>.json per image, mirroring its path "
            "or flat); without it SAM makes the masks.",
            rich_help_panel="Mask branch",
        ),
    ] = None,
    limit: Annotated[
        Optional[int], typer.Option(help="Label only the first N images.", rich_help_panel="Data")
    ] = None,
    sam_model: Annotated[
        str, typer.Option(help="vit_h | vit_l | vit_b", rich_help_panel="Mask branch")
    ] = "vit_h",
    sam_checkpoint: Annotated[
        Optional[Path],
        typer.Option(
            help="SAM .pth (default ckp/sam_<model>_<hash>.pth, downloaded if missing).",
            rich_help_panel="Mask branch",
        ),
    ] = None,
    amg_preset: Annotated[
        str, typer.Option(help="default | ssa", rich_help_panel="Mask branch")
    ] = "default",
    amg: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Any SamAutomaticMaskGenerator knob, KEY=VALUE; repeatable.",
            rich_help_panel="Mask branch",
        ),
    ] = None,
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
        Optional[str],
        typer.Option(help="BLIP captioner: hub id or folder.", rich_help_panel="Engine models"),
    ] = None,
    clip: Annotated[
        Optional[str],
        typer.Option(help="CLIP: hub id or folder.", rich_help_panel="Engine models"),
    ] = None,
    clipseg: Annotated[
        Optional[str],
        typer.Option(help="CLIPSeg: hub id or folder.", rich_help_panel="Engine models"),
    ] = None,
    oneformer_ade: Annotated[
        Optional[str],
        typer.Option(
            help="OneFormer with ADE20K classes: hub id or folder.",
            rich_help_panel="Engine models",
        ),
    ] = None,
    oneformer_coco: Annotated[
        Optional[str],
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
    device: Annotated[
        Optional[str], typer.Option(help="cuda | cpu (default: cuda when available).")
    ] = None,
) -> None:
    """Name every mask of a folder of images with free-form words (the SSA engine)."""
    from ssa.engine.runner import EngineConfig, run_engine
    from ssa.masks import parse_amg
    from ssa.progress import run_with_progress

    try:
        cfg = EngineConfig(
            data_dir=data_dir,
            out_dir=out_dir,
            masks_dir=masks,
            sam_model=sam_model,
            sam_checkpoint=sam_checkpoint,
            amg_preset=amg_preset,
            amg=parse_amg(amg or []) if masks is None else {},
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
        summary = run_with_progress(cfg, console, runner=run_engine)
    except SSAError as exc:
        fail(exc)
        return
    if summary.failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
