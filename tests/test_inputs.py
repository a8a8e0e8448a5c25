"""Inputs that must not become silent garbage: image modes, RLE validation, config types."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssa import io
from ssa.errors import SSAError

# --- image modes: each against an array worked out by hand --------------------------------


def _grey3(values: list[list[int]]) -> np.ndarray:
    arr = np.array(values, dtype=np.uint8)
    return np.repeat(arr[:, :, None], 3, axis=2)


def test_16_bit_greyscale_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 257, 65535], [128, 129, 32896]], np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    # v / 257 rounded: 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1, 32896/257 = 128.
    np.testing.assert_array_equal(io.read_image(path), _grey3([[0, 1, 255], [0, 1, 128]]))


def test_32_bit_int_and_float_greyscale(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 514, 65535]], np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(io.read_image(tmp_path / "i.tif"), _grey3([[0, 2, 255]]))
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "big.tif")
    with pytest.raises(SSAError, match=r"big.tif is I greyscale with values 0..70000"):
        io.read_image(tmp_path / "big.tif")
    # Float in [0, 1]: times 255 (0.5 -> 127.5 -> 128 by round-half-even); in [0, 255]: as is.
    Image.fromarray(np.array([[0.0, 0.5, 1.0, 0.2]], np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    np.testing.assert_array_equal(io.read_image(tmp_path / "f.tif"), _grey3([[0, 128, 255, 51]]))
    Image.fromarray(np.array([[0.0, 12.4, 254.6]], np.float32)).save(tmp_path / "f255.tif")
    np.testing.assert_array_equal(io.read_image(tmp_path / "f255.tif"), _grey3([[0, 12, 255]]))
    Image.fromarray(np.array([[0.0, 300.0]], np.float32)).save(tmp_path / "f300.tif")
    with pytest.raises(SSAError, match="outside"):
        io.read_image(tmp_path / "f300.tif")
    Image.fromarray(np.array([[0.0, np.nan]], np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(SSAError, match="NaN"):
        io.read_image(tmp_path / "nan.tif")


def test_la_palette_and_cmyk(tmp_path: Path) -> None:
    la = np.array([[[10, 0], [200, 255]]], np.uint8)  # alpha is dropped, grey kept
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "la.png"), _grey3([[10, 200]]))

    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 250, 20, 30, 5, 6, 7] + [0] * (256 * 3 - 9))
    pal.putpixel((0, 0), 1)
    pal.putpixel((1, 0), 2)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "p.png"), np.array([[[250, 20, 30], [5, 6, 7]]], np.uint8)
    )

    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (100, 50, 0, 30))
    cmyk.putpixel((1, 0), (255, 0, 200, 100))
    cmyk.save(tmp_path / "c.tif")
    # RGB = 255 (1 - C/255)(1 - K/255): 155 * 225 / 255 = 136.8 -> 137, 205 * 225 / 255 = 180.9
    # -> 181, 255 * 225 / 255 = 225; 0, 255 * 155 / 255 = 155, 55 * 155 / 255 = 33.4 -> 33.
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "c.tif"), np.array([[[137, 181, 225], [0, 155, 33]]], np.uint8)
    )


def test_multi_page_tiff_gives_its_first_page(tmp_path: Path) -> None:
    first = Image.fromarray(np.full((2, 3, 3), 40, np.uint8))
    second = Image.fromarray(np.full((2, 3, 3), 220, np.uint8))
    first.save(tmp_path / "pages.tif", save_all=True, append_images=[second])
    assert Image.open(tmp_path / "pages.tif").n_frames == 2
    np.testing.assert_array_equal(io.read_image(tmp_path / "pages.tif"), np.full((2, 3, 3), 40))


def test_decompression_bomb_is_one_line(tmp_path: Path, monkeypatch) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 64 // 2 - 1)  # 2x over: the error
    with pytest.raises(SSAError, match=r"bomb.png is too large to decode safely") as info:
        io.read_image(tmp_path / "bomb.png")
    assert "\n" not in str(info.value)


# --- RLE validation --------------------------------------------------------------------------


def _runs(mask: np.ndarray) -> list[int]:
    """Run lengths of a mask in column-major order, starting with a run of zeros (by hand)."""
    flat = mask.T.reshape(-1).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


def test_compressed_counts_match_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for shape in ((7, 5), (40, 33), (1, 1), (3, 200)):
        mask = rng.random(shape) < 0.4
        mask[0, 0] = shape[0] % 2 == 1  # runs starting with ones and with zeros
        rle = io.encode_rle(mask[None])[0]
        assert io.rle_runs(rle["counts"], "x").tolist() == _runs(mask)
        io.check_rle(rle, "x")  # a good RLE passes


@pytest.mark.parametrize("compressed", [True, False], ids=["string", "list"])
@pytest.mark.parametrize("delta", [1, -1], ids=["short", "long"])
def test_rle_short_or_long_fails_the_image(tmp_path: Path, compressed: bool, delta: int) -> None:
    from ssa.masks import JsonMasks

    height, width = 6, 5
    mask = np.zeros((height, width), bool)
    mask[1:4, 2:4] = True
    # The RLE of a mask one column narrower (short) or wider (long) than its size says.
    other = np.zeros((height, width - delta), bool)
    other[1:4, 2:4] = True
    rle = io.encode_rle(other[None])[0]
    if not compressed:
        rle["counts"] = _runs(other)
    rle["size"] = [height, width]
    folder = tmp_path / "masks"
    folder.mkdir()
    good = io.encode_rle(mask[None])[0]
    (folder / "im.json").write_text(json.dumps(
        {"annotations": [{"segmentation": good}, {"segmentation": rle}]}
    ))
    with pytest.raises(SSAError) as info:
        JsonMasks(folder).generate(np.zeros((height, width, 3), np.uint8), path=Path("im.png"))
    msg = str(info.value)
    assert "im.json" in msg and "annotation 1" in msg and "\n" not in msg
    covered = height * (width - delta)
    assert f"cover {covered} pixels but its size 6x5 has 30" in msg


@pytest.mark.parametrize(
    ("size", "counts", "match"),
    [
        ([2.5, 2], [4], "not \\[height, width\\]"),
        ([2, -1], [0], "not \\[height, width\\]"),
        (["2", "2"], [4], "not \\[height, width\\]"),
        ([2, 2], [5, -1], "negative"),
        ([2, 2], [1.5, 2.5], "string or a list of integers"),
        ([2, 2], "4\x7f", "not a COCO RLE character"),
        ([2, 2], "P", "ends inside a number"),  # 'P' = 48 + 0x20: "more follows", then none
    ],
)
def test_rle_bad_fields(size, counts, match) -> None:
    with pytest.raises(SSAError, match=match):
        io.check_rle({"size": size, "counts": counts}, "masks file m.json: annotation 0")


# --- config validation: one typed schema for YAML and flags ------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"overwrite": "false", "save_branch": "no", "save_vis": "off"},
         {"overwrite": False, "save_branch": False, "save_vis": False}),
        ({"overwrite": "true", "evaluate": "yes"}, {"overwrite": True, "evaluate": True}),
        ({"top_k": "3", "limit": "10", "min_vote_share": "0.25"},
         {"top_k": 3, "limit": 10, "min_vote_share": 0.25}),
        ({"out_dir": "o", "masks": "m"}, {"out_dir": Path("o"), "masks": "m"}),
        ({"min_vote_share": 1}, {"min_vote_share": 1.0}),
    ],
)
def test_config_values_are_parsed_by_type(values: dict, expected: dict) -> None:
    from ssa.config import build_config

    cfg = build_config(values, {})
    assert {k: getattr(cfg, k) for k in expected} == expected
    assert all(type(getattr(cfg, k)) is type(v) for k, v in expected.items())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"limit": "ten"}, "--limit 'ten' (config key limit): Input should be a valid integer"),
        ({"device": 7}, "--device 7 (config key device): Input should be a valid string"),
        ({"top_k": 0}, "--top-k 0 (config key top_k): Input should be greater than or equal to 1"),
        ({"top_k": 2.5}, "--top-k 2.5 (config key top_k)"),
        ({"limit": 0}, "--limit 0 (config key limit)"),
        ({"limit": True}, "--limit True (config key limit): a number, not a boolean"),
        ({"min_vote_share": 1.5},
         "--min-vote-share 1.5 (config key min_vote_share): Input should be less"),
        ({"min_vote_share": -0.1}, "--min-vote-share -0.1 (config key min_vote_share)"),
        ({"overwrite": "maybe"},
         "--overwrite 'maybe' (config key overwrite): Input should be a valid bool"),
        ({"save_branch": 2}, "--save-branch 2 (config key save_branch)"),
        ({"out_dir": 5}, "--out-dir 5 (config key out_dir)"),
        ({"segmentor": ["hf:x"]}, "--segmentor ['hf:x'] (config key segmentor)"),
    ],
)
def test_config_refuses_bad_values_in_one_line(values: dict, message: str) -> None:
    from ssa.config import build_config

    with pytest.raises(SSAError) as info:
        build_config(values, {})
    text = str(info.value)
    assert message in text and "expected" in text and "\n" not in text
    with pytest.raises(SSAError):  # the same from the command line's values
        build_config({}, values)


def test_yaml_words_and_engine_config(tmp_path: Path) -> None:
    from ssa.config import EngineConfig, build_config, load_yaml, validated

    path = tmp_path / "c.yaml"
    path.write_text('overwrite: "false"\nsave-branch: "no"\ntop-k: "3"\n')
    cfg = build_config(load_yaml(path), {})
    assert (cfg.overwrite, cfg.save_branch, cfg.top_k) == (False, False, 3)
    path.write_text("limit: ten\n")
    with pytest.raises(SSAError, match="--limit 'ten' \\(config key limit\\)"):
        build_config(load_yaml(path), {})

    cfg = validated(EngineConfig, {"top_k": "2", "out_dir": "o", "save_vis": "no"})
    assert (cfg.top_k, cfg.out_dir, cfg.save_vis) == (2, Path("o"), False)
    for bad in ({"batch_size": 0}, {"top_k": "x"}, {"device": 7}, {"light": "maybe"}):
        with pytest.raises(SSAError, match=f"config key {next(iter(bad))}\\)"):
            validated(EngineConfig, bad)
    with pytest.raises(SSAError, match="unknown config key 'topk'"):
        validated(EngineConfig, {"topk": 1})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--top-k", "0"], "--top-k 0 (config key top_k)"),
        (["run", "--min-vote-share", "2"], "--min-vote-share 2.0 (config key min_vote_share)"),
        (["run", "--limit", "0"], "--limit 0 (config key limit)"),
        (["engine", "--top-k", "0"], "--top-k 0 (config key top_k)"),
        (["engine", "--batch-size", "0"], "--batch-size 0 (config key batch_size)"),
    ],
)
def test_cli_flags_go_through_the_schema(tmp_path: Path, args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from ssa.cli.commands import app

    (tmp_path / "d").mkdir()
    result = CliRunner().invoke(
        app, [*args, "--data-dir", str(tmp_path / "d"), "--out-dir", str(tmp_path / "o")]
    )
    assert result.exit_code == 2  # a usage error
    out = " ".join(result.output.split())  # rich may wrap
    assert message in out, out


# --- one line, not a traceback -----------------------------------------------------------------


def test_binary_classes_label_map_and_config_files(tmp_path: Path) -> None:
    from ssa.config import load_yaml
    from ssa.specs.segmentors import read_classes_file, read_label_map_file

    binary = tmp_path / "classes.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    (tmp_path / "nul.txt").write_bytes(b"sky\x00tree\n")
    with pytest.raises(SSAError, match="--classes .*classes.bin is not UTF-8 text"):
        read_classes_file(binary)
    with pytest.raises(SSAError, match="holds NUL bytes"):
        read_classes_file(tmp_path / "nul.txt")
    with pytest.raises(SSAError, match="--label-map .*classes.bin is not UTF-8 text"):
        read_label_map_file(binary, ["sky"])
    with pytest.raises(SSAError, match="--config .* is not UTF-8 text"):
        load_yaml(binary)


def test_malicious_pickle_in_a_hf_folder_is_refused_in_one_line(tmp_path: Path, monkeypatch):
    import os

    import torch
    from conftest import save_segformer

    from ssa.specs.segmentors import load_segmentor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save_segformer(tmp_path / "seg", ["a", "b"])
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "code_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"decode_head.classifier.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(SSAError) as info:
        load_segmentor(f"hf:{folder}", device="cpu")
    assert "pickled weights (.bin)" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_remote_code_in_a_local_folder_is_refused_without_a_cache_hint(tmp_path, monkeypatch):
    from ssa.specs.segmentors import load_segmentor

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "xyz", "auto_map": {"AutoConfig": "configuration_xyz.XyzConfig"}}
    ))
    marker = tmp_path / "code_ran"
    (folder / "configuration_xyz.py").write_text(f"open({str(marker)!r}, 'w')\n")
    with pytest.raises(SSAError) as info:
        load_segmentor(f"hf:{folder}", device="cpu")
    msg = str(info.value)
    assert "trust_remote_code" in msg and "cache" not in msg and "\n" not in msg
    assert not marker.exists()
    with pytest.raises(SSAError, match="needs config.json"):  # a folder, not a hub id
        load_segmentor(f"hf:{tmp_path}", device="cpu")
