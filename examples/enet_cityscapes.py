"""A `py:` plug-in for a real segmentor outside the Hugging Face world: ENet trained on
Cityscapes (Torch7 format, e-Lab), run with OpenCV's DNN module.

    pip install "ssa[enet]"          # opencv-python-headless<5 (OpenCV 5 dropped Torch7 import)
    ssa run --dataset cityscapes --data-dir data/cityscapes --out-dir outputs/enet \\
        --segmentor py:examples/enet_cityscapes.py:make \\
        --segmentor-arg model=path/to/enet-model.net

The network takes `blobFromImage(rgb, 1/255, (1024, 512), swapRB=False)` and returns 20 score
channels at 1024x512: `Unlabeled`, then the 19 Cityscapes trainIds in order. The plug-in drops
the `Unlabeled` channel, upsamples the 19 channels to the image's resolution and returns their
softmax, `(19, H, W) float32` probabilities: `--vote hard` and `--vote soft` both work.
Nothing in ssa is edited: this file only follows the `Segmentor` protocol
(`ssa/segmentors/base.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ssa.datasets import CITYSCAPES_CLASSES
from ssa.errors import SSAError

INPUT_SIZE = (1024, 512)  # (width, height), the size ENet was trained at


class ENetCityscapes:
    """image: `HWC uint8 RGB` -> `(19, H, W) float32` trainId probabilities."""

    classes: ClassVar[list[str]] = list(CITYSCAPES_CLASSES)

    def __init__(self, model: str | Path, threads: int | None = None) -> None:
        try:
            import cv2
        except ImportError:
            raise SSAError(
                'the ENet example needs OpenCV: pip install "opencv-python-headless<5"'
            ) from None
        path = Path(model).expanduser()
        if not path.is_file():
            raise SSAError(f"ENet model {path} does not exist; pass model=<path to enet-model.net>")
        if not hasattr(cv2.dnn, "readNetFromTorch"):
            raise SSAError(
                f"OpenCV {cv2.__version__} cannot read Torch7 models; "
                f'pip install "opencv-python-headless<5"'
            )
        if threads is not None:
            cv2.setNumThreads(int(threads))
        self._cv2 = cv2
        self.net = cv2.dnn.readNetFromTorch(str(path))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        height, width = image.shape[:2]
        # The image is RGB already, which is what this ENet was trained on: no channel swap.
        blob = cv2.dnn.blobFromImage(image, 1 / 255.0, INPUT_SIZE, swapRB=False, crop=False)
        self.net.setInput(blob)
        scores = self.net.forward()[0, 1:]  # (19, 512, 1024): drop `Unlabeled`
        # cv2.resize takes at most 512 channels as HWC; 19 is fine.
        full = cv2.resize(
            np.ascontiguousarray(scores.transpose(1, 2, 0)), (width, height),
            interpolation=cv2.INTER_LINEAR,
        ).reshape(height, width, -1)
        full = full.transpose(2, 0, 1)
        full = np.exp(full - full.max(axis=0, keepdims=True))
        return (full / full.sum(axis=0, keepdims=True)).astype(np.float32)


def make(model: str, threads: int | None = None) -> ENetCityscapes:
    """The factory `--segmentor py:examples/enet_cityscapes.py:make` calls.

    model: the Torch7 file (`enet-model.net`); threads: OpenCV's thread count (default: its own).
    """
    return ENetCityscapes(model, threads)
