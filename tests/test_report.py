"""`ssa report`: the static HTML report of a run, opened in a real headless browser (Debian's
chromium driven by Playwright): no console error, no request outside the report folder, every
image loads, every link resolves, the IoU column is `ssa eval --json`'s, user text is text.
Runs are built as `tests/export_run.py` builds them (saved masks, precomputed labels, no model);
one more on the real Cityscapes fixture frame when it is here."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from conftest import CITY_STEM, CITYSCAPES, need
from export_run import RELS, invoke, make_inputs, write_masks_json
from PIL import Image

pytest.importorskip("jinja2", reason="ssa report needs jinja2 (the report extra)")
pytest.importorskip("matplotlib", reason="ssa report needs matplotlib (the report extra)")

SCRIPT = "<script>alert(1)</script>"
CLASSES = ["sky", "tree", "road", SCRIPT, "person"]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def run_folder(tmp: Path, *extra: str, classes: list[str] = CLASSES, gt: bool = True,
               corrupt: Path | None = None) -> dict[str, Path]:
    """Inputs, `ssa run` (exit code checked: 1 when `corrupt` names an image made unreadable),
    and a ground-truth folder: the branch labels moved down 3 rows (so scores are neither 0
    nor 100)."""
    data, masks_dir, labels_dir, class_file = make_inputs(tmp)
    class_file.write_text("\n".join(classes) + "\n")
    if corrupt is not None:
        (data / corrupt).write_bytes(b"not an image")
    out = tmp / "run"
    result = invoke("run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
                    "--segmentor", f"labels:{labels_dir}", "--classes", class_file,
                    "--device", "cpu", *extra)  # fmt: skip
    assert result.exit_code == (1 if corrupt else 0), result.output
    paths = {"data": data, "out": out, "classes": class_file}
    if gt:
        gt_dir = tmp / "gt"
        for rel in RELS:
            labels = np.asarray(Image.open(labels_dir / rel.parent / f"{rel.stem}.png"))
            (gt_dir / rel.parent).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.roll(labels, 3, axis=0)).save(gt_dir / rel.parent / f"{rel.stem}.png")
        paths["gt"] = gt_dir
    return paths


def report(*args) -> Path:
    result = invoke("report", *args)
    assert result.exit_code == 0, result.output
    url = result.output.strip().splitlines()[-1]
    assert url.startswith("file://") and url.endswith("/index.html")
    return Path(unquote(urlsplit(url).path))


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A run with branch maps and ground truth, `ssa eval --json`, and its report."""
    tmp = tmp_path_factory.mktemp("report_scored")
    p = run_folder(tmp, "--save-branch")
    eval_json = tmp / "eval.json"
    result = invoke("eval", "--dataset", "folder", "--data-dir", p["data"], "--gt-dir", p["gt"],
                    "--pred-dir", p["out"], "--json", eval_json)
    assert result.exit_code == 0, result.output
    index = report("--pred-dir", p["out"], "--dataset", "folder", "--data-dir", p["data"],
                   "--gt-dir", p["gt"], "--page-size", "2", "--review", "2")
    return {**p, "index": index, "eval": json.loads(eval_json.read_text())}


# --- a real browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright")
    if not CHROMIUM.is_file():
        pytest.skip(f"browser tests need chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield chromium
        chromium.close()


LOAD_IMAGES = """async () => {
  const imgs = Array.from(document.images);
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => {
    i.addEventListener("load", r); i.addEventListener("error", r); })));
  return imgs.map(i => [i.getAttribute("src"), i.naturalWidth]);
}"""


def crawl(browser, index: Path, limit: int = 400) -> dict[str, object]:
    """Open index.html and every page linked from it (within the report), in one browser page.

    Returns the pages visited; fails on a console error, an uncaught exception, a dialog (an
    injected script would open one), a request outside the folder, an image that does not
    load, a link whose file does not exist or lies outside the folder."""
    folder = index.parent.resolve()
    problems: list[str] = []
    page = browser.new_page()
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))

    def outside(request) -> None:
        parts = urlsplit(request.url)
        path = Path(unquote(parts.path)).resolve()
        if parts.scheme != "file" or not path.is_relative_to(folder):
            problems.append(f"request outside the report: {request.url}")

    page.on("request", outside)
    todo, seen = [index.resolve().as_uri()], set()
    while todo and len(seen) < limit:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        page.goto(url)
        page.wait_for_load_state("load")
        if "#c=" in url:  # the class filter renders from a data script
            page.wait_for_selector("#class-cards .card")
        for src, width in page.evaluate(LOAD_IMAGES):
            if not width:
                problems.append(f"{url}: image {src} did not load")
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            parts = urlsplit(href)
            target = Path(unquote(parts.path))
            if parts.scheme != "file" or not target.resolve().is_relative_to(folder):
                problems.append(f"{url}: link {href} leaves the report")
            elif not target.is_file():
                problems.append(f"{url}: link {href} does not resolve")
            elif target.suffix == ".html":
                todo.append(href.split("#")[0] + ("#" + parts.fragment if parts.fragment else ""))
    page.close()
    assert not problems, "\n".join(problems[:20])
    return {"pages": seen}


def test_scored_report_in_browser(browser, scored):
    visited = crawl(browser, scored["index"])["pages"]
    names = {Path(urlsplit(u).path).name + ("#" + urlsplit(u).fragment if "#" in u else "")
             for u in visited}
    # Two pages of two thumbnails, every image page, the class filter with its pages, review.
    assert {"index.html", "gallery-1.html", "gallery-2.html", "review.html",
            "000000.html", "000001.html", "000002.html"} <= names
    assert any(n.startswith("class.html#c=") for n in names)


def test_iou_column_equals_ssa_eval_json(browser, scored):
    page = browser.new_page()
    page.goto(scored["index"].as_uri())
    rows = page.eval_on_selector_all("#classes tbody tr", """rows => rows.map(r => ({
        name: r.querySelector(".label").textContent,
        iou: JSON.parse(r.querySelector("td.iou").dataset.value),
        iouText: r.querySelector("td.iou").textContent,
        acc: JSON.parse(r.querySelector("td.acc").dataset.value),
        branch: JSON.parse(r.querySelector("td.branch-iou").dataset.value)}))""")
    miou = page.text_content("#miou")
    page.close()
    expected = scored["eval"]
    shown = {r["name"]: r for r in rows}
    scored_classes = {n for n, s in expected["per_class"].items() if s["iou"] is not None}
    assert scored_classes <= set(shown) and scored_classes
    for name, s in expected["per_class"].items():
        if name in shown:
            assert shown[name]["iou"] == s["iou"]  # the same float, not a rounding of it
            assert shown[name]["acc"] == s["acc"]
            assert shown[name]["branch"] == expected["branch"]["per_class"][name]["iou"]
            assert shown[name]["iouText"] == ("—" if s["iou"] is None else f"{s['iou']:.2f}")
    assert miou == f"{expected['miou']:.2f}"


def test_class_named_script_is_text(browser, scored):
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(scored["index"].as_uri())
    labels = page.eval_on_selector_all("#classes .label", "els => els.map(e => e.textContent)")
    assert SCRIPT in labels
    assert page.evaluate("document.querySelectorAll('main script').length") == 0
    class_id = CLASSES.index(SCRIPT)
    page.goto(scored["index"].with_name("class.html").as_uri() + f"#c={class_id}&p=1")
    option = page.text_content(f"#class-filter option[value='{class_id}']")
    assert option.startswith(SCRIPT)
    page.wait_for_selector("#class-cards .card")
    page.goto(scored["index"].with_name("images").joinpath("000000.html").as_uri())
    page_text = page.text_content("main")
    page.close()
    assert SCRIPT in page_text and not dialogs
    raw = scored["index"].read_text()
    assert SCRIPT not in raw and "&lt;script&gt;alert(1)&lt;/script&gt;" in raw


def test_gallery_is_worst_first_by_image_miou(scored):
    """The gallery's order is per-image mIoU ascending, each computed independently here."""
    from ssa.evaluation.metrics import ConfusionMatrix

    out, gt_dir = scored["out"], scored["gt"]
    mious = {}
    for rel in RELS:
        cm = ConfusionMatrix(len(CLASSES))
        pred = np.asarray(Image.open(out / rel.parent / f"{rel.stem}_semantic.png"))
        gt = np.asarray(Image.open(gt_dir / rel.parent / f"{rel.stem}.png"))
        mious[rel.as_posix()] = 100 * cm.update(pred, gt).compute()["miou"]
    expected = sorted(mious, key=mious.get)
    folder = scored["index"].parent
    review = (folder / "review.txt").read_text().split()
    assert review == expected[:2]
    html = (folder / "gallery-1.html").read_text() + (folder / "gallery-2.html").read_text()
    positions = [html.index(f">{name}</span>") for name in expected]
    assert positions == sorted(positions)


@pytest.fixture(scope="module")
def odd_runs(tmp_path_factory):
    """Runs that still give a report: one with a failed image, one without ground truth (and
    no branch maps), one of a single image."""
    tmp = tmp_path_factory.mktemp("report_odd")
    failed = run_folder(tmp / "failed", "--save-branch", corrupt=RELS[1])
    no_gt = run_folder(tmp / "no_gt", gt=False)
    one = run_folder(tmp / "one", "--limit", "1", "--save-vis", gt=False)
    return {
        "failed": (failed, report("--pred-dir", failed["out"], "--data-dir", failed["data"],
                                  "--dataset", "folder", "--gt-dir", failed["gt"])),
        "no_gt": (no_gt, report("--pred-dir", no_gt["out"])),
        "one": (one, report("--pred-dir", one["out"], "--out", tmp / "one_report")),
    }


@pytest.mark.parametrize("kind", ["failed", "no_gt", "one"])
def test_odd_runs_open(browser, odd_runs, kind):
    paths, index = odd_runs[kind]
    crawl(browser, index)
    page = browser.new_page()
    page.goto(index.as_uri())
    text = page.text_content("main")
    page.close()
    if kind == "failed":
        assert "failed" in text and RELS[1].as_posix() in text and "read" in text
        assert "as with `ssa eval --allow-missing`" in text
    elif kind == "no_gt":
        assert "No scores" in text and "low confidence" in text
    else:
        assert " ".join(text.split()).startswith(f"Run {paths['out']}")
        assert "1 labelled" in " ".join(text.split())
        gallery = (index.parent / "gallery-1.html").read_text()
        assert gallery.count('class="card"') == 1 and "image 1 of 1" in (
            index.parent / "images" / "000000.html").read_text()


def test_failed_images_count_as_all_wrong(odd_runs, tmp_path):
    """With a failed image, the scores are `ssa eval --allow-missing`'s over the same images."""
    paths, index = odd_runs["failed"]
    eval_json = tmp_path / "eval.json"
    result = invoke("eval", "--dataset", "folder", "--data-dir", paths["data"], "--gt-dir",
                    paths["gt"], "--pred-dir", paths["out"], "--json", eval_json,
                    "--allow-missing")
    assert result.exit_code == 0, result.output
    expected = json.loads(eval_json.read_text())
    html = index.read_text()
    for s in expected["per_class"].values():
        if s["iou"] is not None:
            assert f'data-value="{json.dumps(s["iou"])}"' in html


# --- the report folder is ssa's own output -----------------------------------------------------


def test_ownership_refusals_and_stale_files(tmp_path):
    p = run_folder(tmp_path, gt=False)
    out = p["out"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    for args, words in [
        (("--out", user), "did not write"),
        (("--out", out), "holds --pred-dir"),
        (("--out", tmp_path), "holds --pred-dir"),
        (("--out", p["data"] / "rep", "--data-dir", p["data"]), "inside the image folder"),
        (("--out", p["classes"]), "is a file"),
        (("--dataset", "nope"), "unknown --dataset"),
        (("--page-size", "0"), "--page-size 0"),
    ]:
        result = invoke("report", "--pred-dir", out, *args)
        assert result.exit_code == 1, result.output
        assert words in result.output and len(result.output.strip().splitlines()) == 1
    assert (user / "notes.txt").read_text() == "keep" and len(list(user.iterdir())) == 1
    result = invoke("report", "--pred-dir", tmp_path / "nowhere")
    assert result.exit_code == 1 and "is not a folder" in result.output

    folder = report("--pred-dir", out).parent
    (folder / "notes.txt").write_text("mine")  # a user's file in the report folder stays
    stale = folder / "images" / "000099.html"  # a page of ours from a bigger earlier run goes
    stale.write_text("old")
    (folder / "media" / "holiday.jpg").write_bytes(b"x")  # not a name of ours: stays
    before = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    report("--pred-dir", out)
    after = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert (folder / "notes.txt").read_text() == "mine" and (folder / "media/holiday.jpg").exists()
    assert not stale.exists() and set(after) == set(before) - {stale.relative_to(folder)}
    # An empty folder is taken; a report folder whose marker is a symlink is not ssa's.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report("--pred-dir", out, "--out", empty).parent == empty
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "x.txt").write_text("x")
    os.symlink(folder / ".ssa-report.json", fake / ".ssa-report.json")
    result = invoke("report", "--pred-dir", out, "--out", fake)
    assert result.exit_code == 1 and "did not write" in result.output


def test_run_and_eval_report_flags(tmp_path):
    data, masks_dir, labels_dir, class_file = make_inputs(tmp_path)
    out = tmp_path / "run"
    result = invoke("run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
                    "--segmentor", f"labels:{labels_dir}", "--classes", class_file,
                    "--device", "cpu", "--report")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (out / "report" / "index.html").is_file()
    assert (out / "report" / "index.html").as_uri() in result.output
    gt = tmp_path / "gt"
    shutil.copytree(labels_dir, gt)
    result = invoke("eval", "--dataset", "folder", "--data-dir", data, "--gt-dir", gt,
                    "--pred-dir", out, "--report")
    assert result.exit_code == 0, result.output
    assert 'id="miou"' in (out / "report" / "index.html").read_text()
    # A run with a failed image exits 1 and still writes its report, the failure listed.
    (data / RELS[1]).write_bytes(b"not an image")
    result = invoke("run", "--data-dir", data, "--out-dir", tmp_path / "run2", "--masks",
                    masks_dir, "--segmentor", f"labels:{labels_dir}", "--classes", class_file,
                    "--device", "cpu", "--report")  # fmt: skip
    assert result.exit_code == 1, result.output
    index = (tmp_path / "run2" / "report" / "index.html").read_text()
    assert "Failed images" in index and RELS[1].as_posix() in index


def test_real_cityscapes_frame(browser, tmp_path):
    """The real Cityscapes frame: its instance masks as the mask branch, its train ids moved 4
    pixels right as the semantic branch; the report's IoU column is `ssa eval`'s."""
    # ../shared/fixtures from the project root (CI), else $SSA_FIXTURES (a git worktree).
    src = CITYSCAPES
    if not src.exists() and os.environ.get("SSA_FIXTURES"):
        src = Path(os.environ["SSA_FIXTURES"]) / CITYSCAPES.name
    src = need(src)
    data = tmp_path / "cityscapes"
    img_dir, gt_dir = data / "leftImg8bit" / "val" / "frankfurt", data / "gtFine" / "val" / "frankfurt"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    shutil.copy(src / f"{CITY_STEM}_leftImg8bit.png", img_dir)
    shutil.copy(src / f"{CITY_STEM}_gtFine_labelTrainIds.png", gt_dir)
    instances = np.asarray(Image.open(src / f"{CITY_STEM}_gtFine_instanceIds.png"))
    masks = np.stack([instances == v for v in np.unique(instances)])
    rng = np.random.default_rng(0)
    write_masks_json(tmp_path / "masks" / "frankfurt" / f"{CITY_STEM}_leftImg8bit.json", masks, rng)
    train = np.asarray(Image.open(src / f"{CITY_STEM}_gtFine_labelTrainIds.png"))
    labels = tmp_path / "labels" / "frankfurt"
    labels.mkdir(parents=True)
    Image.fromarray(np.roll(train, 4, axis=1)).save(labels / f"{CITY_STEM}_leftImg8bit.png")
    out = tmp_path / "run"
    result = invoke("run", "--dataset", "cityscapes", "--data-dir", data, "--out-dir", out,
                    "--masks", tmp_path / "masks", "--segmentor", f"labels:{tmp_path / 'labels'}",
                    "--save-branch", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    eval_json = tmp_path / "eval.json"
    result = invoke("eval", "--dataset", "cityscapes", "--data-dir", data, "--pred-dir", out,
                    "--json", eval_json)
    assert result.exit_code == 0, result.output
    index = report("--pred-dir", out, "--dataset", "cityscapes", "--data-dir", data)
    crawl(browser, index)
    expected = json.loads(eval_json.read_text())
    page = browser.new_page()
    page.goto(index.as_uri())
    rows = page.eval_on_selector_all("#classes tbody tr", """rows => rows.map(r => [
        r.querySelector(".label").textContent, JSON.parse(r.querySelector("td.iou").dataset.value)])""")
    page.close()
    shown = dict(rows)
    scored = {n: s["iou"] for n, s in expected["per_class"].items() if s["iou"] is not None}
    assert scored and all(shown[n] == v for n, v in scored.items())
