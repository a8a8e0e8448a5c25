"""`--segmentor` spec strings: a table-driven test of the parser, then each loader for real."""

from __future__ import annotations

import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest

from ssa.errors import SSAError
from ssa.specs import segmentors as spec_mod
from ssa.specs.segmentors import (
    SegmentorSpec,
    load_segmentor,
    parse_segmentor_args,
    parse_spec,
    read_label_map_file,
)

PLUGINS = {"toyseg", "segformer-b5-ade"}  # the second collides with a short name

OK = [
    ("hf:nvidia/segformer-b0-finetuned-ade-512-512",
     SegmentorSpec("hf", "nvidia/segformer-b0-finetuned-ade-512-512")),
    ("hf:./models/my_segformer", SegmentorSpec("hf", "./models/my_segformer")),
    ("hf:/abs/path with space", SegmentorSpec("hf", "/abs/path with space")),
    (" hf: ./rel ", SegmentorSpec("hf", "./rel")),
    ("py: m.py : make ", SegmentorSpec("py", "m.py", "make")),
    ("py:examples/enet_cityscapes.py:make", SegmentorSpec("py", "examples/enet_cityscapes.py", "make")),
    ("py:mypkg.models:build_model", SegmentorSpec("py", "mypkg.models", "build_model")),
    ("py:C:/models/seg.py:make", SegmentorSpec("py", "C:/models/seg.py", "make")),
    ("py:seg:Model", SegmentorSpec("py", "seg", "Model")),
    ("labels:preds/mmseg", SegmentorSpec("labels", "preds/mmseg")),
    ("labels:/data/out:with:colons", SegmentorSpec("labels", "/data/out:with:colons")),
    ("plugin:toyseg", SegmentorSpec("plugin", "toyseg")),
    ("plugin:segformer-b5-ade", SegmentorSpec("plugin", "segformer-b5-ade")),
    ("toyseg", SegmentorSpec("plugin", "toyseg")),
    ("segformer-b5-cityscapes",
     SegmentorSpec("hf", "nvidia/segformer-b5-finetuned-cityscapes-1024-1024")),
    ("oneformer-ade-swin-l", SegmentorSpec("hf", "shi-labs/oneformer_ade20k_swin_large")),
    ("mask2former-ade-swin-l",
     SegmentorSpec("hf", "facebook/mask2former-swin-large-ade-semantic")),
]  # fmt: skip

BAD = [
    ("", "empty"),
    ("  ", "empty"),
    ("hf:", "nothing after"),
    ("labels:", "nothing after"),
    ("tf:model", "unknown prefix"),
    ("HF:model", "unknown prefix"),
    ("py:model.py", "factory"),
    ("py::make", "factory"),
    ("py:model.py:", "not a Python identifier"),
    ("py:model.py:make-it", "not a Python identifier"),
    ("py:my-pkg:make", "neither a dotted module"),
    ("py:pkg..mod:make", "neither a dotted module"),
    ("plugin:missing", "no plug-in named 'missing'"),
    ("segformer-b5-ade", "both a short name and an installed plug-in"),
    ("segformer-b9-ade", "not a known short name"),
    ("nvidia/segformer-b0-finetuned-ade-512-512", "write hf:nvidia/"),
    ("model.py:make", "write py:model.py:make"),
]


@pytest.mark.parametrize(("text", "expected"), OK)
def test_parse_accepts(text, expected):
    assert parse_spec(text, plugins=PLUGINS) == expected


@pytest.mark.parametrize(("text", "why"), BAD)
def test_parse_refuses_with_accepted_forms(text, why):
    with pytest.raises(SSAError) as err:
        parse_spec(text, plugins=PLUGINS)
    message = str(err.value)
    assert why in message
    assert "accepted forms: hf:<hub id or local folder> | py:" in message
    assert "\n" not in message


def test_every_short_name_is_an_hf_spec():
    for name, hub_id in spec_mod.SHORT_NAMES.items():
        assert parse_spec(name, plugins=set()) == SegmentorSpec("hf", hub_id)
        assert "/" in hub_id and name in spec_mod.ACCEPTED_FORMS


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["crop_size=512"], {"crop_size": 512}),
        (["scale=0.5", "resize=false", "name=abc"], {"scale": 0.5, "resize": False, "name": "abc"}),
        (["model=../x/enet-model.net"], {"model": "../x/enet-model.net"}),
        (["batch-size=2", "tag=null"], {"batch_size": 2, "tag": None}),
        (["list=[1, 2]"], {"list": "[1, 2]"}),  # only scalars are typed
        (["empty="], {"empty": ""}),
    ],
)
def test_parse_segmentor_args(items, expected):
    assert parse_segmentor_args(items) == expected


@pytest.mark.parametrize("item", ["crop_size", "=3", "1x=2"])
def test_parse_segmentor_args_refuses(item):
    with pytest.raises(SSAError, match="KEY=VALUE"):
        parse_segmentor_args([item])


PLUGIN_SOURCE = textwrap.dedent(
    '''
    import numpy as np

    class Constant:
        """Labels every pixel with one class; remembers its factory arguments."""

        def __init__(self, value=1, device="cpu"):
            self.id2label = {0: "a", 1: "b", 2: "c"}
            self.value, self.device = value, device

        def __call__(self, image):
            return np.full(image.shape[:2], self.value, dtype=np.int64)

    def make(value: int = 1, device: str = "cpu"):
        return Constant(value, device)

    def make_strict(value: int = 1):
        return Constant(value)
    '''
)


@pytest.fixture()
def plugin_module(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "toy_plugin_mod.py"
    path.write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield path
    sys.modules.pop("toy_plugin_mod", None)


def test_py_file_and_module_with_args(plugin_module):
    image = np.zeros((4, 5, 3), np.uint8)
    by_file = load_segmentor(f"py:{plugin_module}:make", device="cpu", args={"value": 2})
    assert by_file.value == 2 and by_file.device == "cpu"  # device passed since make takes it
    assert (by_file(image) == 2).all()
    by_module = load_segmentor("py:toy_plugin_mod:make_strict", device="cuda:3")
    assert by_module.value == 1 and by_module.device == "cpu"  # make_strict takes no device
    assert load_segmentor("py:toy_plugin_mod:make", device="x", args={"device": "y"}).device == "y"


def test_py_errors(plugin_module, tmp_path):
    with pytest.raises(SSAError, match="takes no argument 'colour'; its keyword arguments: value"):
        load_segmentor(f"py:{plugin_module}:make", args={"colour": 1})
    with pytest.raises(SSAError, match="has no 'build'; its callables: .*make"):
        load_segmentor(f"py:{plugin_module}:build")
    with pytest.raises(SSAError, match="no such file"):
        load_segmentor(f"py:{tmp_path / 'absent.py'}:make")
    with pytest.raises(SSAError, match="cannot import module"):
        load_segmentor("py:no_such_module_xyz:make")


def test_entry_point_plugin(plugin_module, monkeypatch):
    """A plug-in registered under `ssa.segmentors` is found by name and loaded through
    `EntryPoint.load`, as an installed package's would be."""
    ep = EntryPoint(name="toyseg", value="toy_plugin_mod:make", group="ssa.segmentors")

    def fake_entry_points(group=None):
        return [ep] if group == "ssa.segmentors" else []

    monkeypatch.setattr("importlib.metadata.entry_points", fake_entry_points)
    assert parse_spec("toyseg") == SegmentorSpec("plugin", "toyseg")
    seg = load_segmentor("toyseg", args={"value": 0})
    assert seg.value == 0 and seg.id2label[0] == "a"
    assert load_segmentor("plugin:toyseg").value == 1
    with pytest.raises(SSAError, match="registered: toyseg"):
        parse_spec("plugin:other")


def test_hf_short_name_and_args(segformer_5, monkeypatch):
    """A short name resolves to its hub id; hf arguments are checked against HFSegmentor's."""
    monkeypatch.setitem(spec_mod.SHORT_NAMES, "tiny-test", str(segformer_5))
    seg = load_segmentor("tiny-test", args={"crop_size": 64, "batch_size": 1})
    assert seg.crop == (64, 64) and len(seg.id2label) == 5
    with pytest.raises(SSAError, match="takes no argument 'scale'.*crop_size"):
        load_segmentor(f"hf:{segformer_5}", args={"scale": 2})


def test_labels_segmentor(tmp_path):
    from PIL import Image

    folder = tmp_path / "preds"
    (folder / "city").mkdir(parents=True)
    ids = np.array([[0, 1, 2], [7, 1, 0]], dtype=np.uint8)
    Image.fromarray(ids).save(folder / "city" / "a.png")
    scores = np.random.default_rng(0).random((3, 2, 3)).astype(np.float32)
    np.save(folder / "b.npy", scores)  # flat folder fallback, scores
    image = np.zeros((2, 3, 3), np.uint8)
    seg = load_segmentor(f"labels:{folder}", classes=["x", "y", "z"])
    assert seg(image, path=Path("city/a.jpg")).tolist() == [[0, 1, 2], [255, 1, 0]]
    np.testing.assert_array_equal(seg(image, path=Path("other/b.jpg")), scores)
    mapped = load_segmentor(f"labels:{folder}", classes=["x", "y", "z"], label_map={7: 2, 1: 0})
    assert mapped(image, path=Path("city/a.jpg")).tolist() == [[255, 0, 255], [2, 0, 255]]
    with pytest.raises(SSAError, match="no precomputed labels for image city/c.jpg"):
        seg(image, path=Path("city/c.jpg"))
    with pytest.raises(SSAError, match="needs class names"):
        load_segmentor(f"labels:{folder}")
    with pytest.raises(SSAError, match="no such folder"):
        load_segmentor(f"labels:{tmp_path / 'none'}", classes=["x"])
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(folder / "rgb.png")
    with pytest.raises(SSAError, match="colour image"):
        seg(image, path=Path("rgb.png"))


def test_label_map_file(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("7: 0\n8: sidewalk\n")
    assert read_label_map_file(path, ["road", "sidewalk"]) == {7: 0, 8: 1}
    path.write_text('{"7": 5}')
    with pytest.raises(SSAError, match="neither a class index 0..1 nor a class name"):
        read_label_map_file(path, ["road", "sidewalk"])
