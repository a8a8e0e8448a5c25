"""Issue 23's reliability findings, one regression test (or a few) each: hostile config files
(6), export write failures (8), NaN/Inf from a segmentor (9), extreme aspect ratios with `sam:`
(10). Export validation (5) is in test_export_validation.py; the launcher (12) in
test_distributed.py; memory by pixels (13) in test_memory.py and scripts/benchmark_memory.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from export_run import invoke

from ssa.errors import SSAError

# --- finding 6: YAML aliases, duplicate keys, size cap -----------------------------------------

BOMB = "amg:\n  a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}]\n"
    for i in range(8)
)  # 9^9 = 387M strings once expanded


def test_config_alias_bomb_is_refused(tmp_path: Path) -> None:
    from ssa.config import load_yaml

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(SSAError, match=r"--config .*bomb.yaml uses the YAML alias \*a \(line 3\)"):
        load_yaml(path)
    path.write_text("amg: &knobs {points_per_side: 8}\nsegmentor_args: *knobs\n")
    with pytest.raises(SSAError, match=r"alias \*knobs"):
        load_yaml(path)


def test_config_duplicate_key_is_named(tmp_path: Path) -> None:
    from ssa.config import load_yaml

    path = tmp_path / "dup.yaml"
    path.write_text("dataset: ade20k\ntop_k: 2\namg:\n  points_per_side: 8\n  points_per_side: 16\n")
    with pytest.raises(SSAError, match=r"--config .*dup.yaml gives key 'points_per_side' twice "
                                       r"\(line 5\)"):
        load_yaml(path)
    path.write_text("top_k: 2\ndataset: ade20k\ntop_k: 5\n")
    with pytest.raises(SSAError, match="key 'top_k' twice"):
        load_yaml(path)


def test_config_size_cap(tmp_path: Path) -> None:
    from ssa.config import load_yaml
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * (4 << 20) + "\ntop_k: 2\n")
    with pytest.raises(SSAError, match=r"--config .*big.yaml is 4.0 MiB, over the 4 MiB limit"):
        load_yaml(path)


def test_config_limits_from_the_cli_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    result = invoke("run", "--config", path, "--data-dir", tmp_path, "--out-dir", tmp_path / "o")
    assert result.exit_code in (1, 2), result.output
    text = " ".join(result.output.split())
    assert "uses the YAML alias *a" in text and "Traceback" not in text, text


def test_prompts_file_gets_the_same_loader(tmp_path: Path) -> None:
    from ssa.segmentors.sam3 import read_prompts_file

    path = tmp_path / "prompts.yaml"
    path.write_text("sky: blue sky\ntree: a tree\nsky: the sky\n")
    with pytest.raises(SSAError, match="--prompts .*gives key 'sky' twice"):
        read_prompts_file(path, ["sky", "tree"])
    path.write_text('{"sky": "blue sky", "sky": "sky"}')  # JSON too
    with pytest.raises(SSAError, match="key 'sky' twice"):
        read_prompts_file(path, ["sky", "tree"])
