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
    overwrite: Annotated[
        bool | None,
        typer.Option(
            "--overwrite",
            help="Redo images that are done (default: skip them, so a rerun resumes).",
            rich_help_panel="Scale",
        ),
    ] = None,
    world_size: Annotated[
        int | None,
        typer.Option(
            help="Start N workers on this machine (one per GPU; CPU workers use gloo). Under "
            "torchrun, leave it out: workers come from torchrun.",
            rich_help_panel="Scale",
        ),
    ] = None,
) -> None:
    """Label every image of a dataset: SAM masks, voted by a semantic segmentor."""
    from ssa import config as config_mod
    from ssa import distributed
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
            "overwrite": overwrite,
        }
        cfg = config_mod.build_config(file_values, cli_values)
        info = distributed.rank_info_from_env()
        if world_size is not None and world_size < 1:
            raise SSAError(f"--world-size {world_size} must be at least 1")
        if info is not None and world_size not in (None, info.world_size):
            raise SSAError(
                f"--world-size {world_size}, but torchrun started {info.world_size} workers "
                f"(WORLD_SIZE); leave --world-size out under torchrun"
            )
        if info is None and world_size is not None and world_size > 1:
            from ssa.pipeline import check_run

            check_run(cfg)
            raise typer.Exit(distributed.launch(world_size, cfg, _log_error))
        summary = run_with_progress(cfg, console, info)
    except SSAError as exc:
        fail(exc)
        return
    # Rank 0 speaks for the run (its summary covers every rank); the others end cleanly.
    if summary.failed and (info is None or info.is_main):
        raise typer.Exit(1)


def _log_error(message: str) -> None:
    console.print(f"[bold red]Error:[/] {message}", highlight=False, soft_wrap=True)


@app.command("_worker", hidden=True)
def worker() -> None:
    """One worker of `ssa run --world-size N` (its config comes in SSA_WORKER_CONFIG)."""
    import os

    from ssa import distributed
    from ssa.progress import run_with_progress

    try:
        text = os.environ.get(distributed.ENV_WORKER_CONFIG)
        if text is None:
            raise SSAError("ssa _worker is started by ssa run --world-size N; run that instead")
        info = distributed.rank_info_from_env()
        cfg = distributed.config_from_json(text)
        summary = run_with_progress(cfg, console, info)
    except SSAError as exc:
        fail(exc)
        return
    if summary.failed and (info is None or info.is_main):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
