"""Every command in README.md and docs/ runs: the shell blocks marked runnable are run, in order,
in a fresh copy of the checkout, and must exit 0.

The marker is an HTML comment on the line before a shell fence (GitHub and MkDocs show neither):

    <!-- runnable -->                          run this block
    <!-- runnable: skip (why it cannot run) --> listed as a skipped test, with the reason

A file with at least one marker must mark every shell block (bash, sh, shell, console): a new
unmarked command there fails `test_every_shell_block_is_marked`. Blocks run with `bash -e -o
pipefail` in the copy's root, one test per block; the blocks of a file share that copy and run
in the file's order (a block's test runs the earlier ones first when they have not run). `ssa`
and `python` are the copy's (`PYTHONPATH`, as an editable install of it), and the hub is off (`HF_HUB_OFFLINE=1`,
`SSA_OFFLINE=1`): a runnable block never downloads. Real weights and datasets are swapped for
tiny models and fixtures by `SUBSTITUTIONS` (a block that uses one gets the tiny models under
`.docs-fixtures/` in its copy, made by `scripts/tiny_models.py`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^\s*<!--\s*runnable(?:\s*:\s*skip\s*\((?P<reason>.*)\))?\s*-->\s*$")
SHELL_FENCE = re.compile(r"^\s*```\s*(bash|sh|shell|console|zsh)\b.*$")
FENCE = re.compile(r"^\s*```")
BLOCK_TIMEOUT_S = 55
FIXTURES_DIR = ".docs-fixtures"
TINY = f"{FIXTURES_DIR}/tiny"
SAMPLE = f"{FIXTURES_DIR}/sample"

# Real weights and data in a runnable block -> tiny stand-ins (regex, replacement), in order.
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"hf:nvidia/segformer-[\w.-]+", f"hf:{TINY}/segformer"),
    (r"sam:vit_[hlb]:ckp/sam_vit_[hlb]_\w+\.pth", f"sam:vit_b:{TINY}/sam_vit_b_tiny.pth"),
]


@dataclass(frozen=True)
class Block:
    """One marked shell block: its file (relative to the checkout), the line of its fence, its
    text, and the skip reason (None: runnable)."""

    file: str
    line: int
    text: str
    skip: str | None


def doc_files(root: Path = ROOT) -> list[Path]:
    """README.md and every page under docs/, sorted."""
    files = [root / "README.md"] if (root / "README.md").is_file() else []
    return files + sorted((root / "docs").rglob("*.md")) if (root / "docs").is_dir() else files


def parse_blocks(text: str, file: str) -> tuple[list[Block], list[int]]:
    """The marked shell blocks of a markdown text, and the fence lines (1-based) of unmarked
    shell blocks. A marker not followed by a shell fence is a ValueError."""
    lines = text.splitlines()
    blocks, unmarked = [], []
    i, pending = 0, None
    while i < len(lines):
        line = lines[i]
        marker = MARKER.match(line)
        if marker:
            pending = (i + 1, marker.group("reason"))
            i += 1
            continue
        if FENCE.match(line):
            shell = SHELL_FENCE.match(line) is not None
            body, j = [], i + 1
            while j < len(lines) and not FENCE.match(lines[j]):
                body.append(lines[j])
                j += 1
            if pending is not None and not shell:
                raise ValueError(f"{file}:{pending[0]}: a runnable marker before a non-shell block")
            if shell and pending is not None:
                reason = pending[1]
                blocks.append(Block(file, i + 1, "\n".join(body), reason.strip() if reason
                                    is not None else None))
            elif shell:
                unmarked.append(i + 1)
            pending = None
            i = j + 1
            continue
        if pending is not None and line.strip():
            raise ValueError(f"{file}:{pending[0]}: a runnable marker not right before a fence")
        i += 1
    if pending is not None:
        raise ValueError(f"{file}:{pending[0]}: a runnable marker at the end of the file")
    return blocks, unmarked


def substitute(text: str) -> tuple[str, bool]:
    """`text` with `SUBSTITUTIONS` applied, and whether any applied."""
    used = False
    for pattern, replacement in SUBSTITUTIONS:
        text, n = re.subn(pattern, replacement, text)
        used = used or n > 0
    return text, used


def _all_blocks() -> list[Block]:
    out = []
    for path in doc_files():
        out += parse_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())[0]
    return out


BLOCKS = _all_blocks()


# --- running -------------------------------------------------------------------------------


def _checkout_files(root: Path) -> list[str]:
    """The files a fresh clone holds (tracked) and new ones not ignored, as git lists them."""
    proc = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                          cwd=root, capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip("git is not available to list the checkout's files")
    return [f for f in proc.stdout.decode().split("\0") if f and (root / f).is_file()]


def fresh_copy(dest: Path) -> Path:
    """A copy of the checkout's files (as a clone has them, no build outputs) at `dest`."""
    for rel in _checkout_files(ROOT):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    return dest


def _package_root() -> Path:
    """The folder holding the `ssa` this test imports (the checkout's, with PYTHONPATH set)."""
    import ssa

    return Path(ssa.__file__).resolve().parents[1]


def _env(first: Path | None = None) -> dict[str, str]:
    """The environment of a block: `first` (the copy's root: its own `ssa`, as in an editable
    install of that checkout), then the `ssa` this test imports, on PYTHONPATH; the hub off."""
    env = dict(os.environ)
    paths = [str(p) for p in (first, _package_root()) if p is not None]
    env.update({
        "PYTHONPATH": os.pathsep.join([*paths, env.get("PYTHONPATH", "")]),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
        "HF_HUB_OFFLINE": "1",
        "SSA_OFFLINE": "1",
        "SSA_DOCS_PYTHON": sys.executable,
    })
    return env


# `ssa` as this checkout's package, whatever an installed entry point points at.
PRELUDE = 'python() { "$SSA_DOCS_PYTHON" "$@"; }\nssa() { "$SSA_DOCS_PYTHON" -m ssa "$@"; }\n'


def run_block(text: str, cwd: Path, timeout: float = BLOCK_TIMEOUT_S) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", PRELUDE + text], cwd=cwd,
                          env=_env(cwd), capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.fixture(scope="session")
def tiny_fixtures(tmp_path_factory) -> Path:
    """The tiny models and sample images, made once by scripts/tiny_models.py."""
    where = tmp_path_factory.mktemp("docs_fixtures")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "tiny_models.py"), str(where / "tiny"),
         "--images", str(where / "sample")], env=_env(), capture_output=True, text=True,
        timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return where


class _Copies:
    """One fresh copy per doc file, and how many of its blocks ran there."""

    def __init__(self, base: Path) -> None:
        self.base, self.dirs, self.ran, self.failed = base, {}, {}, {}

    def run_upto(self, block: Block, fixtures) -> subprocess.CompletedProcess | None:
        """Run `block`'s file's runnable blocks up to and including `block`, in order."""
        if block.file not in self.dirs:
            name = re.sub(r"\W", "_", block.file)
            self.dirs[block.file] = fresh_copy(self.base / name)
            self.ran[block.file] = set()
        cwd = self.dirs[block.file]
        mine = [b for b in BLOCKS if b.file == block.file and b.skip is None]
        last = None
        for earlier in mine[: mine.index(block) + 1]:
            if earlier.line in self.ran[block.file]:
                continue
            if block.file in self.failed:
                pytest.fail(f"an earlier block of {block.file} failed: {self.failed[block.file]}")
            text, used = substitute(earlier.text)
            if used and not (cwd / FIXTURES_DIR).exists():
                shutil.copytree(fixtures(), cwd / FIXTURES_DIR)
            last = run_block(text, cwd)
            self.ran[block.file].add(earlier.line)
            if last.returncode != 0:
                self.failed[block.file] = f"line {earlier.line}"
                return last
        return last

    def cwd(self, file: str) -> Path:
        return self.dirs[file]


@pytest.fixture(scope="session")
def copies(tmp_path_factory) -> _Copies:
    return _Copies(tmp_path_factory.mktemp("docs_copies"))


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.file}:{b.line}" for b in BLOCKS])
def test_block_runs(block: Block, copies: _Copies, request) -> None:
    if block.skip is not None:
        pytest.skip(block.skip)
    proc = copies.run_upto(block, lambda: request.getfixturevalue("tiny_fixtures"))
    if proc is not None:
        assert proc.returncode == 0, (
            f"{block.file}:{block.line} exited {proc.returncode}\n$ {block.text}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )


def test_quickstart_gives_a_labelled_run(copies: _Copies, request) -> None:
    """docs/quickstart.md's blocks, as written, give masks with classes: every image has a
    `_semantic.json` whose masks decode (pycocotools) to their `area`, each with a class."""
    from pycocotools import mask as mask_utils

    mine = [b for b in BLOCKS if b.file == "docs/quickstart.md" and b.skip is None]
    assert len(mine) >= 2, "docs/quickstart.md lost its runnable blocks"
    proc = copies.run_upto(mine[-1], lambda: request.getfixturevalue("tiny_fixtures"))
    assert proc is None or proc.returncode == 0, proc.stderr[-3000:]
    assert "docs/quickstart.md" not in copies.failed, copies.failed
    out = copies.cwd("docs/quickstart.md") / "outputs" / "quickstart"
    docs = sorted(out.rglob("*_semantic.json"))
    assert len(docs) == 3
    for path in docs:
        annotations = json.loads(path.read_text())["annotations"]
        assert annotations, f"{path.name} has no masks"
        for ann in annotations[:20]:
            assert int(mask_utils.area(ann["segmentation"])) == ann["area"]
            assert ann["class_name"]


# --- the extractor itself ------------------------------------------------------------------


def test_parse_blocks_reads_markers_and_unmarked_blocks() -> None:
    lines = ["# Title", "", "<!-- runnable -->", "```bash", "echo one", "echo two", "```", "",
             "<!-- runnable: skip (needs 8 GPUs) -->", "```sh", "torchrun x", "```", "",
             "```bash", "echo unmarked", "```", "", "```text", "not shell", "```"]
    text = "\n".join(lines)
    blocks, unmarked = parse_blocks(text, "x.md")
    assert blocks == [Block("x.md", 4, "echo one\necho two", None),
                      Block("x.md", 10, "torchrun x", "needs 8 GPUs")]
    assert unmarked == [14]
    with pytest.raises(ValueError, match="not right before a fence"):
        parse_blocks("<!-- runnable -->\ntext\n```bash\nx\n```", "y.md")
    with pytest.raises(ValueError, match="non-shell"):
        parse_blocks("<!-- runnable -->\n```python\nx\n```", "y.md")


def test_substitute_swaps_real_weights_for_tiny_ones() -> None:
    text, used = substitute("ssa run --segmentor hf:nvidia/segformer-b0-finetuned-ade-512-512 x")
    assert used and text == f"ssa run --segmentor hf:{TINY}/segformer x"
    assert substitute("ssa run --segmentor hf:ckp/tiny/segformer") == (
        "ssa run --segmentor hf:ckp/tiny/segformer", False)


def test_run_block_fails_on_a_failing_line(tmp_path) -> None:
    assert run_block("true\nfalse\ntrue", tmp_path).returncode != 0
    where = "cd / && python -c 'import ssa; print(ssa.__file__)'"
    assert run_block(where, tmp_path).stdout.startswith(str(_package_root()))
    (tmp_path / "ssa").mkdir()  # a copy's own package comes first
    (tmp_path / "ssa" / "__init__.py").write_text("")
    assert run_block(where, tmp_path).stdout.strip() == str(tmp_path / "ssa" / "__init__.py")


def test_every_shell_block_is_marked() -> None:
    """In every doc file that uses the markers, each shell block carries one (a new command
    there is either run or skipped with a reason); quickstart.md uses them."""
    problems = []
    files = doc_files()
    assert ROOT / "docs" / "quickstart.md" in files
    for path in files:
        blocks, unmarked = parse_blocks(path.read_text(encoding="utf-8"), path.name)
        if blocks and unmarked:
            problems += [f"{path.relative_to(ROOT)}:{line}" for line in unmarked]
    assert not problems, f"shell blocks without a runnable marker: {problems}"
