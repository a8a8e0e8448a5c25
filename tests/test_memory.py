"""Memory of the semantic branch: scores stay at the segmentor's resolution, full-resolution
scores exist only in bands of rows, and the results equal the full-resolution computation that
`ssa run` did before (kept here as the brute-force reference).

Tolerances (stated in README "Memory"): labels equal wherever the reference's best two classes
differ by more than 1e-5 in probability (float32 rounding of the interpolation weights can
flip exact near-ties); mean soft-vote probabilities within 1e-5; proposals equal.
"""

from __future__ import annotations

import json
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ADE20K_FULL, CITY_STEM, CITYSCAPES, need, save_segformer
from PIL import Image
from test_voting import _ade_instances
from test_voting_policies import brute_force
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from typer.testing import CliRunner

from ssa import io, voting
from ssa.cli.commands import app
from ssa.run.labeller import Labeller
from ssa.run.outputs import semantic_mask_rles
from ssa.segmentors.base import BranchOutput
from ssa.segmentors.hf import HFSegmentor

NUM_CLASSES = 150
_FACTORIES = {"zeros", "empty", "ones", "full", "rand", "randn"}
_NEW = {"new_zeros", "new_empty", "new_ones", "new_full", "empty_strided"}


class AllocationGuard(TorchDispatchMode):
    """Records the largest storage any torch op creates; refuses (MemoryError, before the
    allocation) factory and upsampling calls that would create more than `limit` bytes."""

    def __init__(self, limit: int | None = None) -> None:
        super().__init__()
        self.limit = limit
        self.largest = 0
        self.largest_op = ""

    def _requested(self, func, args, kwargs) -> int:
        name = func.overloadpacket.__name__
        if name in _FACTORIES or name in _NEW:
            size = args[0] if name in _FACTORIES else args[1]
            dtype = kwargs.get("dtype") or (
                args[0].dtype if name in _NEW else torch.get_default_dtype()
            )
            return int(np.prod(list(size), dtype=np.int64)) * torch.empty(0, dtype=dtype).element_size()
        if name.startswith("upsample_") and len(args) > 1 and args[1] is not None:
            inp = args[0]
            return int(np.prod([*inp.shape[:2], *args[1]], dtype=np.int64)) * inp.element_size()
        return 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        requested = self._requested(func, args, kwargs)
        if self.limit is not None and requested > self.limit:
            raise MemoryError(f"{func} would allocate {requested} bytes")
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if torch.is_tensor(leaf):
                nbytes = leaf.untyped_storage().nbytes()
                if nbytes > self.largest:
                    self.largest, self.largest_op = nbytes, str(func)
        return out


@pytest.fixture(scope="module")
def segformer150(tmp_path_factory) -> Path:
    names = [f"class{i}" for i in range(NUM_CLASSES)]
    return save_segformer(tmp_path_factory.mktemp("segformer150"), names, seed=3, size=128)


class ListMasks:
    """A mask source of fixed `HW bool` masks (what `ssa.masks.JsonMasks` hands over)."""

    masks_at_original_size = True  # fixed masks, made for the image as read

    def __init__(self, masks: np.ndarray) -> None:
        self.masks = masks

    def generate(self, image: np.ndarray, *, path=None):
        from ssa.masks.base import result_from_records

        return result_from_records(
            [{"segmentation": m, "area": int(m.sum()), "bbox": [0, 0, 1, 1]} for m in self.masks],
            self.masks.shape[1:],
        )


def _ellipses(height: int, width: int, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[:height, :width]
    out = []
    for _ in range(count):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(0.1, 0.5) * width, rng.uniform(0.1, 0.5) * height
        out.append(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1)
    return np.stack(out)


def _smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
    return np.array(small.resize((width, height), Image.BILINEAR))


def _fixture_case(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A real image and real object masks: an ADE20K sample at quarter resolution (its object
    instances), or the Cityscapes frame (every id of its instanceIds map)."""
    if name == "ade20k":
        folder = need(ADE20K_FULL)
        image = np.asarray(Image.open(folder / "ADE_train_00016964.jpg").convert("RGB"))[::4, ::4]
        _, instances = _ade_instances(folder / "ADE_train_00016964_seg.png")
        instances = instances[::4, ::4]
        masks = np.stack([instances == i for i in np.unique(instances) if i != 0])
    else:
        folder = need(CITYSCAPES)
        image = np.asarray(Image.open(folder / f"{CITY_STEM}_leftImg8bit.png").convert("RGB"))
        ids = np.asarray(Image.open(folder / f"{CITY_STEM}_gtFine_instanceIds.png"))
        masks = np.stack([ids == i for i in np.unique(ids)])
    return np.array(image), masks


def _reference(raw: torch.Tensor, size: tuple[int, int], kind: str) -> torch.Tensor:
    """The computation before this change: the whole `(C, H, W)` map upsampled at once, then
    softmaxed (logits) or divided by its per-pixel sum (class mass)."""
    full = F.interpolate(raw[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    if kind == "logits":
        return full.softmax(dim=0)
    return full / full.sum(dim=0, keepdim=True).clamp_min(1e-12)


def _check_labels(labels: torch.Tensor, probs: torch.Tensor) -> None:
    ref = probs.argmax(dim=0)
    top2 = probs.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 1e-5
    assert torch.equal(labels.long()[clear], ref[clear])
    assert (labels.long() != ref).float().mean() < 1e-4


@pytest.mark.parametrize("case", ["ade20k", "cityscapes"])
@pytest.mark.parametrize("noise", [0.0, 2.0])
def test_branch_and_votes_equal_full_resolution_reference(segformer150, case, noise):
    """The tiny model's own scores, and the same with noise (so that many classes compete
    at every pixel), on real images and real object masks."""
    image, masks_np = _fixture_case(case)
    size = image.shape[:2]
    seg = HFSegmentor(str(segformer150), crop_size=64)
    raw = seg(image)
    assert raw.shape[1] == 64  # the working resolution (short side = crop), not the image's
    raw = raw + noise * torch.randn(raw.shape, generator=torch.Generator().manual_seed(0))
    branch = BranchOutput.from_raw(raw, NUM_CLASSES, size, kind=seg.scores_kind)
    probs = _reference(raw, size, "logits")
    _check_labels(branch.labels, probs)
    masks = torch.from_numpy(masks_np)
    area = masks.flatten(1).sum(dim=1, keepdim=True).float()
    soft = voting.soft_vote_counts(masks, branch)  # band by band
    ref_soft = masks.flatten(1).float() @ probs.flatten(1).T  # the whole map, brute force
    torch.testing.assert_close(soft / area, ref_soft / area, rtol=0, atol=1e-5)
    got = voting.vote(masks, branch.labels, NUM_CLASSES, top_k=3, scores=branch, policy="soft")
    _, ref_proposals, _ = voting.rank_votes(ref_soft, 3)
    assert torch.equal(got.proposals, ref_proposals)
    hard = voting.vote(masks, branch.labels, NUM_CLASSES, top_k=3)
    ref_labels = probs.argmax(dim=0).numpy()
    ref_hard = np.stack([np.bincount(ref_labels[m], minlength=NUM_CLASSES) for m in masks_np])
    _, ref_hard_proposals, _ = voting.rank_votes(torch.from_numpy(ref_hard).float(), 3)
    assert torch.equal(hard.proposals, ref_hard_proposals)
    assert len(masks_np) > 10
    assert len(np.unique(branch.labels)) >= (100 if noise else 2)


def test_mass_and_probability_scores_equal_reference():
    """Class mass (universal models) normalised after upsampling; probabilities given at full
    resolution kept as they are (the old path exactly)."""
    rng = torch.Generator().manual_seed(0)
    mass = torch.rand(7, 9, 13, generator=rng) ** 4
    branch = BranchOutput.from_raw(mass, 7, (40, 57), kind="mass")
    torch.testing.assert_close(branch.probabilities(), _reference(mass, (40, 57), "mass"),
                               rtol=0, atol=1e-5)
    probs = torch.rand(7, 40, 57, generator=rng).softmax(dim=0)
    full = BranchOutput.from_raw(probs, 7, (40, 57))
    assert torch.equal(full.probabilities(), probs)
    assert torch.equal(full.labels.long(), probs.argmax(dim=0))
    masks = torch.from_numpy(_ellipses(40, 57, 5))
    torch.testing.assert_close(voting.soft_vote_counts(masks, full),
                               voting.soft_vote_counts(masks, probs), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("policy", ["hard", "soft"])
def test_peak_allocation_does_not_scale_with_classes(segformer150, policy, tmp_path):
    """A 1200x900 image, 150 classes: one float per class per pixel would be 600 bytes per
    pixel (648 MB); no torch tensor and no numpy peak comes near it (limit: 64 bytes per pixel,
    so the test also fails on any stack of per-class masks)."""
    height, width = 900, 1200
    image = _smooth_image(height, width)
    labeller = Labeller(ListMasks(_ellipses(height, width, 6)), HFSegmentor(str(segformer150)),
                        [f"class{i}" for i in range(NUM_CLASSES)],
                        np.zeros((NUM_CLASSES, 3), np.uint8), vote_policy=policy)
    guard = AllocationGuard()
    tracemalloc.start()
    try:
        with guard:
            out = labeller.label(image)
        paths = {k: tmp_path / f"x.{k}" for k in ("semantic", "label", "branch", "vis")}
        labeller.save_branch = True
        labeller.write(out, paths, image)
        _, numpy_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = 64 * height * width
    assert guard.largest < limit, (guard.largest, guard.largest_op)
    assert numpy_peak < limit
    assert out["branch"].labels.dtype == torch.uint8 and out["votes"].label_map.dtype == torch.uint8
    assert len(json.loads(paths["semantic"].read_text())["semantic_mask"]) > 5


def test_strip_runs_within_bounded_memory(segformer150):
    """A 2x4000 strip: before, its short side went to 128 (the crop), asking for 150 x 128 x
    256000 floats (19.7 GB here, 78.6 GB at a 512 crop). Now no torch allocation over 64 MB
    is even attempted, and the strip is labelled whole."""
    image = _smooth_image(2, 4000)
    seg = HFSegmentor(str(segformer150), batch_size=64)  # ~130 windows: few batches
    masks = np.zeros((2, 2, 4000), bool)
    masks[0, :, :1000] = masks[1, :, 2500:] = True
    labeller = Labeller(ListMasks(masks), seg, [f"class{i}" for i in range(NUM_CLASSES)],
                        np.zeros((NUM_CLASSES, 3), np.uint8), vote_policy="soft")
    with AllocationGuard(limit=64 << 20):
        out = labeller.label(image)
    raw_h, raw_w = out["branch"].scores.shape[1:]
    assert raw_h * raw_w <= 1.1 * 4 * 128 * 128 and raw_w > 1000 * raw_h  # along the long side
    assert out["votes"].label_map.shape == (2, 4000)
    assert (out["votes"].classes >= 0).all()


def test_semantic_mask_rles_equal_pycocotools_per_class():
    """The run-length pass gives pycocotools' own RLE of each class's bool mask."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 150, (11, 17))
    label_map = np.kron(blocks, np.ones((5, 7), np.int64))[:53, :113]
    label_map[rng.random(label_map.shape) < 0.01] = 255
    for labels, num_classes in ((label_map, 150), (label_map.astype(np.uint8), 150),
                                (np.full((4, 6), 2), 3), (np.full((4, 6), 255), 3)):
        present = [c for c in np.unique(labels) if 0 <= c < num_classes]
        rles = io.encode_rle(np.stack([labels == c for c in present])) if present else []
        assert semantic_mask_rles(labels, num_classes) == {
            str(c): r for c, r in zip(present, rles)
        }


# ----------------------------------------------------------------------- ssa run, --max-pixels

runner = CliRunner()

PLUGIN = textwrap.dedent(
    """
    import numpy as np

    class Greedy:
        '''Class 0 on the left half, class 1 on the right; runs out of memory above LIMIT
        pixels (as the allocator does on a photo too large for the machine).'''

        classes = ["left", "right"]

        def __init__(self, limit=10**9, error="memory"):
            self.limit, self.error = int(limit), error

        def __call__(self, image):
            h, w = image.shape[:2]
            if h * w > self.limit:
                if self.error == "memory":
                    raise MemoryError(
                        f"Unable to allocate 14.4 GiB for an array with shape (150, {h}, {w})")
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                   "can't allocate memory: you tried to allocate 15466496000 bytes")
            scores = np.zeros((2, h, w), np.float32)
            scores[0, :, : w // 2] = scores[1, :, w // 2 :] = 1.0
            return scores

    def make(limit: int = 10**9, error: str = "memory"):
        return Greedy(limit, error)
    """
)


@pytest.fixture()
def two_sizes(tmp_path):
    """big.png 96x64 and small.png 40x30, with one whole-image mask and one left-quarter mask
    each as SA-1B JSON."""
    from test_plugins_run import write_masks_json

    plugin = tmp_path / "greedy.py"
    plugin.write_text(PLUGIN)
    data, masks_dir = tmp_path / "images", tmp_path / "masks"
    data.mkdir()
    for name, (height, width) in {"big": (64, 96), "small": (30, 40)}.items():
        Image.fromarray(_smooth_image(height, width)).save(data / f"{name}.png")
        masks = np.zeros((2, height, width), bool)
        masks[0] = True
        masks[1, :, : width // 4] = True
        write_masks_json(masks_dir / f"{name}.json", masks)
    return plugin, data, masks_dir


def _run(plugin, data, masks_dir, out, *extra):
    args = ["run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir,
            "--segmentor", f"py:{plugin}:make", "--device", "cpu", "--save-branch", *extra]
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("error", ["memory", "allocator"])
def test_out_of_memory_image_fails_alone_in_one_line(two_sizes, tmp_path, error):
    plugin, data, masks_dir = two_sizes
    out = tmp_path / "out"
    result = _run(plugin, data, masks_dir, out, "--segmentor-arg", "limit=2000",
                  "--segmentor-arg", f"error={error}")
    assert result.exit_code == 1, result.output
    lines = (out / "failures.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["path"] == "big.png" and record["stage"] == "label"
    assert "96x64 pixels" in record["error"] and "--max-pixels" in record["error"]
    assert "\n" not in record["error"] and "Traceback" not in result.output
    assert (out / "small_semantic.json").is_file()  # the next image is labelled


def test_max_pixels_downsizes_both_branches(two_sizes, tmp_path):
    """--max-pixels 1536: big.png (6144 px) is labelled at 48x32, small.png (1200 px) as it
    is; the segmentor that fails above 2000 pixels now labels both."""
    plugin, data, masks_dir = two_sizes
    out = tmp_path / "out"
    result = _run(plugin, data, masks_dir, out, "--segmentor-arg", "limit=2000",
                  "--max-pixels", 1536)
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "big_semantic.json").read_text())
    assert doc["image"] == {"height": 32, "width": 48, "original_height": 64,
                            "original_width": 96}
    masks = np.stack([io.decode_rle(a["segmentation"]) for a in doc["annotations"]])
    assert masks.shape == (2, 32, 48) and masks[0].all() and masks[1][:, :12].all()
    assert [a["area"] for a in doc["annotations"]] == [int(m.sum()) for m in masks]
    branch = np.asarray(Image.open(out / "big_branch.png"))
    assert branch.shape == (32, 48) and (branch[:, :24] == 0).all() and (branch[:, 24:] == 1).all()
    _, _, ref_map = brute_force(masks, branch.astype(np.int64), 2)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "big_semantic.png")), ref_map)
    small = json.loads((out / "small_semantic.json").read_text())
    assert small["image"] == {"height": 30, "width": 40}


def test_max_pixels_must_be_positive(two_sizes, tmp_path):
    plugin, data, masks_dir = two_sizes
    result = _run(plugin, data, masks_dir, tmp_path / "out", "--max-pixels", 0)
    assert result.exit_code == 2
    assert "--max-pixels 0" in result.output and "int >= 1" in result.output  # with the options


@pytest.mark.parametrize("column_major", [False, True])
def test_pixel_chunked_hard_votes_and_narrow_paint_equal_brute_force(monkeypatch, column_major):
    """Hard votes over chunks of 37 pixels (chunk edges inside rows and masks), and painting
    in uint8, against per-mask numpy counts and the int64 painting of the same labels."""
    monkeypatch.setattr(voting, "_PIXELS_PER_PASS", 37)
    rng = np.random.default_rng(5)
    masks_np = rng.random((9, 23, 31)) < rng.random((9, 1, 1))
    labels_np = rng.integers(0, 12, (23, 31))
    labels_np[rng.random(labels_np.shape) < 0.1] = 255
    masks = torch.from_numpy(masks_np)
    if column_major:  # the layout ssa.masks.fast_amg builds: a transposed view of (N, W, H)
        masks = torch.from_numpy(np.ascontiguousarray(masks_np.transpose(0, 2, 1))).transpose(1, 2)
    labels = torch.from_numpy(labels_np.astype(np.uint8))
    counts = voting.hard_vote_counts(masks, labels, 12)
    valid = labels_np < 12
    expected = np.stack([np.bincount(labels_np[m & valid], minlength=12) for m in masks_np])
    np.testing.assert_array_equal(counts.numpy(), expected)
    result = voting.vote(masks, labels, 12, min_vote_share=0.3)
    wide = voting.vote(masks, torch.from_numpy(labels_np), 12, min_vote_share=0.3)
    assert result.label_map.dtype == torch.uint8 and wide.label_map.dtype == torch.int64
    np.testing.assert_array_equal(result.label_map.numpy(), wide.label_map.numpy())
    _, _, ref_map = brute_force(masks_np, labels_np, 12, min_share=0.3)
    np.testing.assert_array_equal(result.label_map.numpy(), ref_map)


def test_max_pixels_with_sam_labels_the_downsized_image(tmp_path, sam_checkpoint, segformer_5):
    """SAM and the segmentor both see the downsized image: a 96x64 image under
    --max-pixels 1536 gives 48x32 outputs, consistent with each other (test_run's checks)."""
    from conftest import make_image
    from test_run import TINY, check_outputs

    make_image(tmp_path / "data" / "a.png", width=96, height=64)
    out = tmp_path / "out"
    args = ["run", "--data-dir", tmp_path / "data", "--out-dir", out, "--sam-model", "vit_b",
            "--sam-checkpoint", sam_checkpoint, "--segmentor", f"hf:{segformer_5}",
            "--device", "cpu", "--amg-preset", "default", *TINY, "--max-pixels", 1536]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    data, _ = check_outputs(out / "a_semantic.json", (32, 48),
                            ["sky", "tree", "road", "car", "person"])
    assert data["image"]["original_width"] == 96 and data["image"]["original_height"] == 64


def test_max_pixels_resizes_precomputed_labels_like_the_masks(tmp_path):
    """labels: predictions at the original size are resized (nearest) as the masks are, so
    a mask and the labels under it stay aligned: here the label map equals the masks' class."""
    from test_plugins_run import write_masks_json

    data, masks_dir, labels_dir = tmp_path / "images", tmp_path / "masks", tmp_path / "labels"
    for folder in (data, labels_dir):
        folder.mkdir()
    Image.fromarray(_smooth_image(30, 40)).save(data / "a.png")
    labels = np.zeros((30, 40), np.uint8)
    labels[:, 20:] = 1
    labels[1::2] = 255  # odd rows carry no label: a nearest resize by 2 keeps only them
    Image.fromarray(labels).save(labels_dir / "a.png")
    masks = np.zeros((1, 30, 40), bool)
    masks[0, :, 20:] = True
    write_masks_json(masks_dir / "a.json", masks)
    (tmp_path / "classes.txt").write_text("left\nright\n")
    out = tmp_path / "out"
    args = ["run", "--data-dir", data, "--out-dir", out, "--masks", masks_dir, "--segmentor",
            f"labels:{labels_dir}", "--classes", tmp_path / "classes.txt", "--device", "cpu",
            "--save-branch", "--max-pixels", 300]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    branch = np.asarray(Image.open(out / "a_branch.png"))
    np.testing.assert_array_equal(branch, labels[1::2, 1::2])  # PIL's nearest: odd pixels
    doc = json.loads((out / "a_semantic.json").read_text())
    small_mask = io.decode_rle(doc["annotations"][0]["segmentation"])
    np.testing.assert_array_equal(small_mask, masks[0][1::2, 1::2])
    assert doc["annotations"][0]["class_name"] is None  # only no-label pixels under it
