"""One resolved plan per command (issue 24): `ssa.plan` turns options and YAML into frozen typed
plans; `--precision`/`--compile` for run, engine and predict with one meaning; the engine's
settings record; eval and export starting from the run's record; help that reads at 80
columns and teaches (issue 25). Runs use saved masks and precomputed labels (no model)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from export_run import RELS, invoke, make_inputs, make_run

from ssa.errors import SSAError

ROLES = ("captioner", "clip", "clipseg", "oneformer_ade", "oneformer_coco")


def one_line(result, code):
    assert result.exit_code == code, result.output
    text = " ".join(result.output.split())
    assert text.startswith("Error:") and "Traceback" not in text, text
    return text


def test_the_run_plan_is_typed_frozen_and_resolved_once(tmp_path):
    from ssa.config import build_config
    from ssa.plan import MaskBranch, RunPlan, SemanticBranch, plan_run

    data, masks_dir, labels_dir, classes = make_inputs(tmp_path)
    cfg = build_config({"top_k": 2}, {
        "data_dir": data, "out_dir": tmp_path / "link", "masks": str(masks_dir),
        "segmentor": f"labels:{labels_dir}", "classes": classes, "device": "cpu",
        "vote": "soft"})
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    plan = plan_run(cfg, world_size=1)
    assert isinstance(plan, RunPlan) and isinstance(plan.masks, MaskBranch)
    assert isinstance(plan.semantic, SemanticBranch)
    assert plan.masks.spec.kind == "json" and plan.masks.precision == "fp32"
    assert plan.semantic.classes == tuple(classes.read_text().split())
    assert (plan.voting.policy, plan.voting.top_k) == ("soft", 2)
    assert plan.outputs.out_dir == (tmp_path / "real").resolve()  # the real folder, once
    assert [r.as_posix() for r in plan.images.rels] == [r.as_posix() for r in RELS]
    assert plan.device == "cpu" and plan.settings["top_k"] == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.device = "cuda"  # type: ignore[misc]
    with pytest.raises(SSAError, match="--world-size 0 must be at least 1"):
        plan_run(cfg, world_size=0)


def test_precision_is_one_option_of_run_engine_and_predict(tmp_path, sam_checkpoint):
    """fp16 needs CUDA: every command refuses it on the CPU with the same line, exit code 2,
    before any model (so each command really takes the option and checks it)."""
    data, masks_dir, labels_dir, classes = make_inputs(tmp_path)
    models = []
    for role in ROLES:
        (tmp_path / role).mkdir()
        models += [f"--{role.replace('_', '-')}", tmp_path / role]
    runs = {
        "run": ["run", "--data-dir", data, "--out-dir", tmp_path / "o1", "--masks", masks_dir,
                "--segmentor", f"labels:{labels_dir}", "--classes", classes],
        "engine": ["engine", "--data-dir", data, "--out-dir", tmp_path / "o2", "--masks",
                   masks_dir, *models],
        "predict": ["predict", data / "a.png", "--point", "3,3", "--masks",
                    f"sam:vit_b:{sam_checkpoint}", "--segmentor", f"labels:{labels_dir}",
                    "--classes", classes],
    }
    for name, args in runs.items():
        text = one_line(invoke(*args, "--device", "cpu", "--precision", "fp16"), 2)
        # labels: has no network (refused); the engine's and SAM's networks need CUDA for fp16
        assert "--precision fp16" in text, (name, text)
    assert "needs a CUDA device" in one_line(invoke(*runs["engine"], "--device", "cpu",
                                                    "--precision", "fp16"), 2)
    text = one_line(invoke(*runs["predict"], "--device", "cpu", "--precision", "fp12"), 2)
    assert "fp12" in text


def test_plans_carry_precision_to_engine_and_predict(tmp_path, sam_checkpoint, segformer_5):
    from ssa.config import EngineConfig, RunConfig, validated
    from ssa.plan import plan_engine, plan_predict
    from ssa.run.predictor import build_predictor

    data, masks_dir, _, _ = make_inputs(tmp_path)
    folders = {}
    for role in ROLES:
        (tmp_path / role).mkdir()
        folders[role] = str(tmp_path / role)
    engine = plan_engine(validated(EngineConfig, data_dir=data, out_dir=tmp_path / "e",
                                   masks=str(masks_dir), models=folders, device="cpu",
                                   precision="bf16"))
    assert engine.precision == "bf16" and engine.masks.precision == "bf16"
    assert engine.settings["models"]["clip"] == str((tmp_path / "clip").resolve())
    plan = plan_predict(validated(RunConfig, masks=f"sam:vit_b:{sam_checkpoint}",
                                  segmentor=f"hf:{segformer_5}", device="cpu",
                                  precision="bf16"))
    predictor = build_predictor(plan)
    assert predictor.masks.precision == "bf16"
    assert str(predictor.segmentor.model.dtype) == "torch.bfloat16"


def test_export_and_eval_start_from_the_runs_record(tmp_path):
    data, out = make_run(tmp_path)
    record = json.loads((out / "ssa_run.json").read_text())
    assert record["dataset"] == "folder" and record["data_dir"] == str(data.resolve())
    target = tmp_path / "i.json"
    # no --data-dir: the run's own (coco-instances names the images)
    result = invoke("export", "--format", "coco-instances", "--pred-dir", out, "--out", target)
    assert result.exit_code == 0, result.output
    names = [img["file_name"] for img in json.loads(target.read_text())["images"]]
    assert names == [r.as_posix() for r in RELS]


def test_yaml_takes_every_run_option(tmp_path):
    data, masks_dir, labels_dir, classes = make_inputs(tmp_path)
    config = tmp_path / "run.yaml"
    config.write_text(f"data_dir: {data}\nout_dir: {tmp_path / 'out'}\nmasks: {masks_dir}\n"
                      f"segmentor: labels:{labels_dir}\nclasses: {classes}\ndevice: cpu\n"
                      f"world_size: 1\nlog_every: 5\nreport: false\n")
    result = invoke("run", "--config", config)
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out").rglob("*_semantic.json"))) == len(RELS)
    config.write_text(config.read_text() + "world_size: 0\n")
    assert "world_size" in one_line(invoke("run", "--config", config), 2)


def _help(*args):
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb", "NO_COLOR": "1"}
    proc = subprocess.run([sys.executable, "-m", "ssa", *args, "--help"], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("command", ["run", "eval", "predict", "engine", "export", "report"])
def test_help_at_80_columns(command):
    text = _help(command)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "<bool>" not in text  # a switch takes no value
    assert "{" not in text.split("\n\n")[1] if "\n\n" in text else True  # no {image} in usage
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage
    if command == "predict":
        assert "IMAGE" in usage
    if command in ("run", "engine", "predict"):
        assert "--precision" in text and "--compile" in text


def test_a_point_in_two_values_gets_the_x_y_hint(tmp_path):
    data, *_ = make_inputs(tmp_path)
    text = one_line(invoke("predict", data / "a.png", "--point", "128", "110"), 2)
    assert "write --point X,Y (e.g. --point 128,110)" in text


def test_usage_errors_exit_2_and_runtime_failures_exit_1(tmp_path):
    data, masks_dir, labels_dir, classes = make_inputs(tmp_path)
    base = ["run", "--data-dir", data, "--masks", masks_dir, "--segmentor",
            f"labels:{labels_dir}", "--classes", classes, "--device", "cpu"]
    one_line(invoke(*base, "--out-dir", tmp_path / "o", "--vote", "x"), 2)
    (masks_dir / "a.json").unlink()  # that image fails while running
    result = invoke(*base, "--out-dir", tmp_path / "o2")
    assert result.exit_code == 1 and (tmp_path / "o2" / "failures.jsonl").is_file()
    Path(tmp_path / "o2").exists()


def test_a_bad_value_typer_parses_is_one_line_too():
    result = invoke("run", "--limit", "ten")
    text = one_line(result, 2)
    assert "'--limit'" in text and "run --help" in text


def test_eval_table_at_80_columns_wraps_names_not_numbers():
    import io

    from rich.console import Console

    from ssa.cli.tables import eval_table

    name = "vegetation-and-terrain-long-class-name"
    per_class = {name: {"iou": 12.345, "acc": 67.891}, "sky": {"iou": 99.5, "acc": 100.0}}
    report = {"per_class": per_class, "miou": 55.92, "macc": 83.95, "aacc": 90.12,
              "branch": {"per_class": per_class, "miou": 50.0, "macc": 80.0, "aacc": 88.0}}
    buf = io.StringIO()
    Console(file=buf, width=80, color_system=None).print(eval_table(report))
    text = buf.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 80
    assert name in "".join(line.split("│")[2].strip() for line in text.splitlines()
                           if line.count("│") > 3)
    for number in ("12.35", "67.89", "+5.92", "55.92"):
        assert number in text
