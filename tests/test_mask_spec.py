"""`--masks SPEC` parsing (table-driven), the knob tables, and each form's loader."""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ssa.config import RunConfig
from ssa.errors import SSAError
from ssa.keyvalue import Knob, check_knobs, parse_key_values
from ssa.masks import MaskResult
from ssa.specs import masks as spec_mod
from ssa.specs.masks import (
    MaskSpec,
    load_mask_source,
    load_prompt_source,
    mask_knobs,
    parse_mask_spec,
    resolve_mask_settings,
    spec_from_config,
)

PLUGINS = {"my-masks"}


@pytest.fixture()
def folder(tmp_path, monkeypatch) -> Path:
    """A folder `masks/` under the working directory (bare folders are relative paths)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "masks").mkdir()
    (tmp_path / "my-masks").mkdir()  # a folder with a plug-in's name
    return tmp_path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sam:vit_h", MaskSpec("sam", "vit_h")),
        ("sam:vit_b:path/to.pth", MaskSpec("sam", "vit_b", checkpoint="path/to.pth")),
        ("sam:vit_l:C:/ckp/sam.pth", MaskSpec("sam", "vit_l", checkpoint="C:/ckp/sam.pth")),
        (" sam:vit_b ", MaskSpec("sam", "vit_b")),
        ("hf:facebook/sam2.1-hiera-large", MaskSpec("hf", "facebook/sam2.1-hiera-large")),
        ("hf:./models/sam-hq", MaskSpec("hf", "./models/sam-hq")),
        ("json:masks", MaskSpec("json", "masks")),
        ("json:/data/sa1b/json", MaskSpec("json", "/data/sa1b/json")),
        ("masks", MaskSpec("json", "masks")),  # an existing folder
        ("py:my_pkg.sources:build", MaskSpec("py", "my_pkg.sources", "build")),
        ("py:plugins/masks.py:make", MaskSpec("py", "plugins/masks.py", "make")),
        ("py:C:/x/masks.py:make", MaskSpec("py", "C:/x/masks.py", "make")),
        ("plugin:my-masks", MaskSpec("plugin", "my-masks")),
    ],
)
def test_parse_accepts(folder, text, expected):
    assert parse_mask_spec(text, plugins=PLUGINS) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "it is empty"),
        ("  ", "it is empty"),
        ("sam:", "nothing after 'sam:'"),
        ("sam:vit_x", "unknown SAM model 'vit_x'"),
        ("sam:vit_b:", "nothing after the model's ':'"),
        ("hf:", "nothing after 'hf:'"),
        ("json:", "nothing after 'json:'"),
        ("sam2:facebook/x", "unknown prefix 'sam2:'"),
        ("vit_h", "write sam:vit_h"),
        ("ckp/sam_vit_b.pth", "write sam:vit_h:ckp/sam_vit_b.pth"),
        ("facebook/sam-vit-base", "write hf:facebook/sam-vit-base"),
        ("nowhere", "neither an existing folder nor a plug-in"),
        ("py:masks.py", "py: needs a module or .py file and a factory"),
        ("py:masks.py:1x", "factory '1x' is not a Python identifier"),
        ("py:not a module:f", "neither a dotted module name nor a .py file"),
        ("plugin:other", "no plug-in named 'other' (registered: my-masks)"),
        ("my-masks", "both a folder and an installed plug-in"),
        ("masks.py:make", "write py:masks.py:make"),
    ],
)
def test_parse_refuses_with_one_line_and_hint(folder, text, message):
    with pytest.raises(SSAError) as err:
        parse_mask_spec(text, plugins=PLUGINS)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert "accepted forms" in str(err.value)


def test_bare_plugin_name_when_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_mask_spec("my-masks", plugins=PLUGINS) == MaskSpec("plugin", "my-masks")


def test_spec_str_round_trips(folder):
    for text in ("sam:vit_b:a/b.pth", "hf:org/model", "json:masks", "py:m.py:f", "plugin:my-masks"):
        assert str(parse_mask_spec(text, plugins=PLUGINS)) == text


def test_sam_models_are_the_encoders():
    from ssa.masks.sam import SAM_ENCODERS

    assert set(spec_mod.SAM_MODELS) == set(SAM_ENCODERS)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, MaskSpec("sam", "vit_h")),
        ({"sam_model": "vit_b", "sam_checkpoint": Path("x.pth")},
         MaskSpec("sam", "vit_b", checkpoint="x.pth")),
        ({"masks": "sam:vit_l", "sam_checkpoint": Path("y.pth")},
         MaskSpec("sam", "vit_l", checkpoint="y.pth")),
        ({"masks": "sam:vit_l:y.pth", "sam_checkpoint": Path("y.pth")},
         MaskSpec("sam", "vit_l", checkpoint="y.pth")),
        ({"masks": "hf:org/m", "sam_model": "vit_b"}, MaskSpec("hf", "org/m")),
        ({"masks": "masks"}, MaskSpec("json", "masks")),
    ],
)
def test_spec_from_config_shorthands(folder, fields, expected):
    assert spec_from_config(RunConfig(**fields)) == expected


def test_two_checkpoints_are_refused():
    with pytest.raises(SSAError, match="two checkpoints"):
        spec_from_config(RunConfig(masks="sam:vit_b:a.pth", sam_checkpoint=Path("b.pth")))


# --- KEY=VALUE and knob tables ---------------------------------------------------------------


def test_one_key_value_parser_types_scalars():
    assert parse_key_values(["a=3", "b=0.5", "c=true", "d=null", "e-f=x", "g=[1]"], "--x", "a=1") == {
        "a": 3, "b": 0.5, "c": True, "d": None, "e_f": "x", "g": "[1]"}
    with pytest.raises(SSAError, match="--x 'a' is not KEY=VALUE; write e.g. --x a=1"):
        parse_key_values(["a"], "--x", "a=1")


@pytest.mark.parametrize(
    ("knob", "value", "expected"),
    [
        (Knob("n", 32, int, optional=True), "none", None),
        (Knob("n", 32, int), 8, 8),
        (Knob("t", 0.5, float), 1, 1.0),
        (Knob("b", False, bool), "true", True),
        (Knob("b", False, bool), 0, False),
        (Knob("s", "fp32", str), "bf16", "bf16"),
    ],
)
def test_knob_values_are_typed(knob, value, expected):
    got = check_knobs({knob.name: value}, {knob.name: knob})[knob.name]
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("knob", "value"),
    [(Knob("n", 32, int), "abc"), (Knob("n", 32, int), 0.5), (Knob("n", 32, int), True),
     (Knob("b", False, bool), 2), (Knob("n", 32, int), None)],
)
def test_knob_values_of_another_type_are_refused(knob, value):
    article = {"int": "an int", "bool": "a bool"}[knob.type.__name__]
    with pytest.raises(SSAError, match=f"{knob.name} takes {article}"):
        check_knobs({knob.name: value}, {knob.name: knob})


def test_sam_knobs_are_the_stock_keywords_plus_the_fast_extras():
    import inspect

    from segment_anything import SamAutomaticMaskGenerator

    stock = {k: p.default for k, p in
             inspect.signature(SamAutomaticMaskGenerator.__init__).parameters.items()
             if k not in ("self", "model", "output_mode", "point_grids")}
    fast = mask_knobs("sam:vit_b")
    assert {k: v.default for k, v in mask_knobs("sam:vit_b", "stock").items()} == stock
    assert set(fast) == set(stock) | {"prompt_batch", "precision", "sdpa", "compile",
                                      "max_gpu_memory"}
    with pytest.raises(SSAError) as err:
        resolve_mask_settings("sam:vit_b", "default", {"points_per_sid": 3})
    assert "points_per_side" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(SSAError, match="unknown --amg key 'sdpa'"):
        resolve_mask_settings("sam:vit_b", "default", {"sdpa": True}, impl="stock")
    with pytest.raises(SSAError, match="unknown --amg-impl 'quick'"):
        resolve_mask_settings("sam:vit_b", "default", {}, impl="quick")


def test_json_takes_no_knobs_and_factories_get_amg_as_given(folder):
    assert resolve_mask_settings("json:masks", "ssa", {}) == {}
    with pytest.raises(SSAError, match="points_per_side: --masks json:masks reads saved masks"):
        resolve_mask_settings("json:masks", "ssa", {"points_per_side": 8})
    assert resolve_mask_settings("py:m.py:f", "ssa", {"anything": 1}) == {"anything": 1}


# --- hf: dispatch (the module is another file; a fake one stands in) -------------------------


@pytest.fixture()
def fake_hf(monkeypatch):
    import ssa.masks

    calls = []
    module = types.ModuleType("ssa.masks.hf")

    def knobs():
        return {"points_per_side": Knob("points_per_side", 32, int, optional=True),
                "pred_iou_thresh": 0.88}

    def load_hf_mask_source(name, device, settings):
        calls.append((name, device, settings))
        return "source"

    module.knobs = knobs
    module.load_hf_mask_source = load_hf_mask_source
    monkeypatch.setitem(sys.modules, "ssa.masks.hf", module)
    monkeypatch.setattr(ssa.masks, "hf", module, raising=False)
    return calls


def test_hf_dispatch_passes_name_device_and_checked_settings(fake_hf):
    settings = resolve_mask_settings("hf:org/sam2", "ssa", {"pred_iou_thresh": 1})
    # The preset's knobs that the family declares, overrides typed by its table.
    assert settings == {"points_per_side": 64, "pred_iou_thresh": 1.0}
    assert load_mask_source("hf:org/sam2", "cpu", settings) == "source"
    assert fake_hf == [("org/sam2", "cpu", settings)]
    with pytest.raises(SSAError) as err:
        resolve_mask_settings("hf:org/sam2", "default", {"crop_n_layers": 1})
    assert "valid keys: points_per_side, pred_iou_thresh" in str(err.value)
    with pytest.raises(SSAError, match="takes no prompts"):
        load_prompt_source("hf:org/sam2", "cpu")


def test_hf_without_its_module_is_one_line(monkeypatch):
    import ssa.masks

    monkeypatch.setitem(sys.modules, "ssa.masks.hf", None)  # import fails as if absent
    monkeypatch.delattr(ssa.masks, "hf", raising=False)
    with pytest.raises(SSAError, match="hf: mask sources need the module ssa.masks.hf"):
        load_mask_source("hf:org/sam2", "cpu", {})


# --- py: factories --------------------------------------------------------------------------


FACTORY = textwrap.dedent(
    '''
    import numpy as np

    class Halves:
        """Two masks, the left and right halves; raw records (HW bool), as SAM's generator."""

        def __init__(self, device="cpu", score=0.5):
            self.device, self.score = device, score

        def generate(self, image):
            h, w = image.shape[:2]
            left = np.zeros((h, w), bool)
            left[:, : w // 2] = True
            return [{"segmentation": left, "predicted_iou": self.score},
                    {"segmentation": ~left, "predicted_iou": self.score}]

    def halves(device="cpu", score=0.5):
        return Halves(device, score)

    def nothing():
        return 3
    '''
)


def test_py_factory_records_are_wrapped_into_a_mask_result(tmp_path):
    from ssa import io

    path = tmp_path / "halves.py"
    path.write_text(FACTORY)
    source = load_mask_source(f"py:{path}:halves", "cpu", {"score": 0.25})
    image = np.zeros((6, 8, 3), np.uint8)
    out = source.generate(image, path=Path("a.png"))
    assert isinstance(out, MaskResult) and out.masks.dtype == torch.bool
    assert out.masks.shape == (2, 6, 8) and out.masks[0, :, :4].all() and not out.masks[0, :, 4:].any()
    for record, mask in zip(out.records, out.masks):
        assert isinstance(record["segmentation"]["counts"], str)
        np.testing.assert_array_equal(io.decode_rle(record["segmentation"]), mask.numpy())
        assert record["area"] == 24 and record["predicted_iou"] == 0.25
    assert [r["bbox"] for r in out.records] == [[0, 0, 4, 6], [4, 0, 4, 6]]
    with pytest.raises(SSAError, match="takes no argument 'points_per_side'"):
        load_mask_source(f"py:{path}:halves", "cpu", {"points_per_side": 8})
    with pytest.raises(SSAError, match="without a generate"):
        load_mask_source(f"py:{path}:nothing", "cpu", {})
    with pytest.raises(SSAError, match="without set_image/predict"):
        load_prompt_source(f"py:{path}:halves", "cpu")


def test_json_cannot_answer_prompts(folder):
    with pytest.raises(SSAError, match="cannot answer prompts"):
        load_prompt_source("json:masks", "cpu")


def test_entry_point_mask_source(tmp_path, monkeypatch):
    """A factory registered under `ssa.mask_sources` is found by its bare name and loaded
    through `EntryPoint.load`, as an installed package's would be."""
    from importlib.metadata import EntryPoint

    (tmp_path / "toy_masks_mod.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    ep = EntryPoint(name="toymasks", value="toy_masks_mod:halves", group="ssa.mask_sources")

    def fake_entry_points(group=None):
        return [ep] if group == "ssa.mask_sources" else []

    monkeypatch.setattr("importlib.metadata.entry_points", fake_entry_points)
    assert parse_mask_spec("toymasks") == MaskSpec("plugin", "toymasks")
    assert parse_mask_spec("plugin:toymasks") == MaskSpec("plugin", "toymasks")
    source = load_mask_source("toymasks", "cpu", resolve_mask_settings("toymasks", "ssa", {}))
    out = source.generate(np.zeros((4, 4, 3), np.uint8))
    assert out.masks.flatten(1).sum(1).tolist() == [8, 8]
    with pytest.raises(SSAError, match="registered: toymasks"):
        parse_mask_spec("plugin:other")
