"""`ssa export --images FILE`: exactly the listed images (the review queue of `ssa report`),
read back from the Label Studio tasks; names outside the run refused in one line."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from export_run import RELS, invoke, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export_images")
    data, out = make_run(tmp)
    return tmp, data, out


def tasks_of(folder) -> list[str]:
    return [t["data"]["image"] for t in json.loads((folder / "tasks.json").read_text())]


def test_images_file_selects_exactly_those(run):
    tmp, data, out = run
    listing = tmp / "pick.txt"
    # With and without the extension, a comment and a blank line; the run's order is kept.
    listing.write_text(f"# review\n{RELS[2].as_posix()}\n\n{RELS[0].with_suffix('').as_posix()}\n")
    folder = tmp / "ls"
    result = invoke("export", "--format", "label-studio", "--pred-dir", out, "--out", folder,
                    "--data-dir", data, "--images", listing, "--image-root-url", "r/")
    assert result.exit_code == 0, result.output
    assert tasks_of(folder) == [f"r/{RELS[0].as_posix()}", f"r/{RELS[2].as_posix()}"]


@pytest.mark.parametrize("text, words", [
    ("nope.png\n", "does not hold: nope.png"),
    ("\n# only a comment\n", "lists no image"),
])
def test_images_file_refusals(run, text, words):
    tmp, data, out = run
    listing = tmp / "bad.txt"
    listing.write_text(text)
    result = invoke("export", "--format", "label-studio", "--pred-dir", out, "--out",
                    tmp / "never", "--data-dir", data, "--images", listing)
    assert result.exit_code == 2 and words in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp / "never").exists()


def test_review_queue_command_exports_the_queue(run):
    """The command printed on review.html, run as printed, exports the review.txt images."""
    pytest.importorskip("jinja2", reason="ssa report needs jinja2 (the report extra)")
    pytest.importorskip("matplotlib", reason="ssa report needs matplotlib (the report extra)")
    import html

    tmp, data, out = run
    result = invoke("report", "--pred-dir", out, "--data-dir", data, "--review", "2",
                    "--out", tmp / "report")
    assert result.exit_code == 0, result.output
    page = (tmp / "report" / "review.html").read_text()
    command = html.unescape(page.split('id="export-command">')[1].split("</pre>")[0])
    args = shlex.split(command)
    assert args[:4] == ["ssa", "export", "--format", "label-studio"]
    result = invoke(*args[1:])
    assert result.exit_code == 0, result.output
    queue = (tmp / "report" / "review.txt").read_text().split()
    assert len(queue) == 2
    target = args[args.index("--out") + 1]
    exported = [u.removeprefix("/data/local-files/?d=") for u in tasks_of(Path(target))]
    assert sorted(exported) == sorted(queue)
