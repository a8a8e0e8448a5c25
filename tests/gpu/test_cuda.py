"""The CUDA paths, on a CUDA device (`pytest -m cuda tests/gpu`; skipped without one).

References: segment-anything's stock generator on the same device (fast == stock in fp32),
the fp32 masks (bf16 agreement), brute-force counts on the CPU (`_int_mm` votes), the
confusion matrix before the reduction (nccl on one rank), the run's own failures.jsonl.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CITY_STEM, CITYSCAPES, KEEP_ALL, make_image, need

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _city() -> np.ndarray:
    from PIL import Image

    path = need(CITYSCAPES / f"{CITY_STEM}_leftImg8bit.png")
    return np.asarray(Image.open(path).convert("RGB"))


def _sam(checkpoint: Path, sharp: bool = False):
    from ssa.masks import load_sam

    sam = load_sam("vit_b", checkpoint, "cuda")
    if sharp:
        with torch.no_grad():
            for mlp in sam.mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight *= 30
    return sam


def _matched_iou(ref: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    a, b = ref.flatten(1).float(), other.flatten(1).float()
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return (inter / union.clamp_min(1)).max(1).values


CASES = {
    "nms_off": (False, {**KEEP_ALL, "points_per_side": 4}),
    "nms_and_stability": (True, {"points_per_side": 4, "pred_iou_thresh": 0.0,
                                 "stability_score_thresh": 0.3, "box_nms_thresh": 0.7}),
    "crops": (True, {"points_per_side": 2, "pred_iou_thresh": 0.0,
                     "stability_score_thresh": 0.0, "box_nms_thresh": 0.9, "crop_n_layers": 1,
                     "crop_n_points_downscale_factor": 2}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_matches_stock_on_cuda_fp32(case: str, sam_checkpoint: Path) -> None:
    """Stock attention in both (sdpa off): the masks are the stock ones on the device too."""
    from segment_anything import SamAutomaticMaskGenerator
    from test_fast_amg import assert_same_records

    from ssa.masks.fast_amg import FastMaskGenerator

    sharp, settings = CASES[case]
    image = _city()
    sam = _sam(sam_checkpoint, sharp)
    with torch.inference_mode():
        stock = SamAutomaticMaskGenerator(sam, **settings).generate(image)
        fast = FastMaskGenerator(sam, sdpa=False, **settings).generate(image)
    assert stock
    assert_same_records(stock, fast)


def test_sdpa_and_bf16_agree_with_fp32_on_cuda(sam_checkpoint: Path) -> None:
    from ssa.masks.fast_amg import FastMaskGenerator

    image = _city()
    settings = {**KEEP_ALL, "points_per_side": 8}
    with torch.inference_mode():
        ref = FastMaskGenerator(_sam(sam_checkpoint), sdpa=False, **settings).generate_masks(image)
        sdpa = FastMaskGenerator(_sam(sam_checkpoint), sdpa=True, **settings).generate_masks(image)
        bf16 = FastMaskGenerator(_sam(sam_checkpoint), precision="bf16",
                                 **settings).generate_masks(image)
    assert len(ref.records) == 192
    assert float((_matched_iou(ref.masks, sdpa.masks) >= 0.99).float().mean()) >= 0.99
    assert float((_matched_iou(ref.masks, bf16.masks) >= 0.98).float().mean()) >= 0.95


def test_prompt_batch_is_sized_from_free_memory(sam_checkpoint: Path) -> None:
    from ssa.masks.fast_amg import FastMaskGenerator

    gen = FastMaskGenerator(_sam(sam_checkpoint), **{**KEEP_ALL, "points_per_side": 8},
                            max_gpu_memory=0.5)
    with torch.inference_mode():
        gen.generate_masks(_city())
    assert gen.auto_prompt_batch and 16 <= gen.prompt_batch <= 1024


@pytest.mark.parametrize("num_masks", [1, 5, 16, 17, 40])
@pytest.mark.parametrize("shape", [(37, 53), (64, 64), (33, 1)])
def test_int_mm_votes_exact_on_cuda(num_masks: int, shape: tuple[int, int], caplog) -> None:
    """Vote counts through `torch._int_mm` on CUDA (padded to its shape rules) equal brute force,
    for <= 16 masks and odd pixel counts, and nothing falls back."""
    from ssa import voting

    g = torch.Generator().manual_seed(num_masks * 1000 + shape[0])
    masks = torch.rand(num_masks, *shape, generator=g) < 0.4
    labels = torch.randint(0, 45, shape, generator=g)
    labels[torch.rand(shape, generator=g) < 0.1] = 255
    flat_m, flat_l = masks.flatten(1), labels.flatten()
    brute = torch.zeros(num_masks, 45)
    for c in range(45):
        brute[:, c] = (flat_m & (flat_l == c)).sum(1).float()
    voting._warned.clear()
    with caplog.at_level(logging.WARNING, logger="ssa.voting"):
        got = voting.hard_vote_counts(masks.cuda(), labels.cuda(), 45)
        column_major = masks.transpose(1, 2).contiguous().transpose(1, 2).cuda()
        got_cm = voting.hard_vote_counts(column_major, labels.cuda(), 45)
    assert torch.equal(got.cpu(), brute) and torch.equal(got_cm.cpu(), brute)
    assert not [r for r in caplog.records if "bincount" in r.getMessage()]


def test_confusion_matrix_all_reduce_nccl_one_rank(tmp_path: Path) -> None:
    import torch.distributed as dist

    from ssa.evaluation.metrics import ConfusionMatrix

    if not dist.is_nccl_available():
        pytest.skip("this torch build has no nccl")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rdv'}", rank=0,
                            world_size=1)
    try:
        cm = ConfusionMatrix(4)
        pred = torch.tensor([[0, 1, 2, 3], [3, 3, 1, 0]])
        gt = torch.tensor([[0, 1, 1, 3], [3, 2, 1, 255]])
        cm.update(pred, gt)
        before = cm.mat.clone()
        cm.all_reduce()
        assert cm.mat.device.type == "cpu" and torch.equal(cm.mat, before)
        assert int(before.sum()) == 7
    finally:
        dist.destroy_process_group()


OOM_PLUGIN = textwrap.dedent(
    """
    import numpy as np
    import torch

    class OomOnWide:
        '''Labels everything class 0; on a 50-pixel-wide image asks CUDA for more than is free,
        so the allocator raises a real torch.cuda.OutOfMemoryError.'''

        classes = ["sky", "tree"]

        def __call__(self, image):
            h, w = image.shape[:2]
            if w == 50:
                free, _ = torch.cuda.mem_get_info()
                torch.empty(free + (1 << 30), dtype=torch.uint8, device="cuda")
            probs = np.zeros((2, h, w), dtype=np.float32)
            probs[0] = 1
            return probs

    def make():
        return OomOnWide()
    """
)


def test_out_of_memory_image_is_recorded_and_the_next_labelled(tmp_path: Path,
                                                             sam_checkpoint: Path) -> None:
    from ssa.config import RunConfig
    from ssa.plan import plan_run
    from ssa.run.runner import label_dataset

    plugin = tmp_path / "oom.py"
    plugin.write_text(OOM_PLUGIN)
    data, out = tmp_path / "data", tmp_path / "out"
    for name, width in (("a.png", 40), ("b.png", 50), ("c.png", 60)):
        make_image(data / name, width=width, height=30)
    cfg = RunConfig(dataset="folder", data_dir=data, out_dir=out, device="cuda",
                    sam_model="vit_b", sam_checkpoint=sam_checkpoint, amg_preset="default",
                    amg={**KEEP_ALL, "points_per_side": 2}, segmentor=f"py:{plugin}:make")
    summary = label_dataset(plan_run(cfg))
    failures = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["path"] for f in failures] == ["b.png"]
    assert "CUDA out of memory" in failures[0]["error"]
    assert (out / "a_semantic.json").is_file() and (out / "c_semantic.json").is_file()
    assert summary.num_masks > 0
