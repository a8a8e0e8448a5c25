"""`ssa export --format hf-dataset`, read back with `datasets` (load_from_disk, parquet)."""

from __future__ import annotations

import numpy as np
import pytest
from export_run import CLASSES, RELS, invoke, make_run, run_label_map
from PIL import Image

datasets = pytest.importorskip(
    "datasets", reason="--format hf-dataset is read back with the optional datasets package")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_hf")
    data, out = make_run(tmp)
    return tmp, data, out


def check_rows(ds, data, out):
    assert ds.num_rows == len(RELS)
    assert ds.features["classes"].feature.names == CLASSES
    for row, rel in zip(ds, RELS):
        assert row["file_name"] == rel.as_posix()
        label = np.asarray(row["label"])
        np.testing.assert_array_equal(label, run_label_map(out, rel))
        with Image.open(data / rel) as pil:
            np.testing.assert_array_equal(np.asarray(row["image"].convert("RGB")),
                                          np.asarray(pil.convert("RGB")))
        present = sorted(int(c) for c in np.unique(label) if c < len(CLASSES))
        assert row["classes"] == present


def test_load_from_disk(run):
    tmp, data, out = run
    folder = tmp / "hf"
    result = invoke("export", "--format", "hf-dataset", "--pred-dir", out, "--out", folder,
                    "--data-dir", data)  # fmt: skip
    assert result.exit_code == 0, result.output
    check_rows(datasets.load_from_disk(str(folder)), data, out)


def test_parquet(run):
    tmp, data, out = run
    path = tmp / "run.parquet"
    result = invoke("export", "--format", "hf-dataset", "--pred-dir", out, "--out", path,
                    "--data-dir", data)  # fmt: skip
    assert result.exit_code == 0, result.output
    ds = datasets.load_dataset("parquet", data_files=str(path), cache_dir=str(tmp / "cache"),
                               split="train")  # fmt: skip
    check_rows(ds, data, out)
