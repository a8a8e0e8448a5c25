"""SAM 3 as a semantic branch with no trained segmentor: every class name is a text prompt.

`--segmentor hf:<SAM 3 hub id or folder>` (a config of model type `sam3` or `sam3_video`, e.g.
`facebook/sam3`) is dispatched here by `ssa.segmentors.hf.hf_factory`. The class names come from
the dataset (ADE20K 150, Cityscapes 19) or `--classes FILE`; `--prompts FILE` maps a class to
one or more phrases (`read_prompts_file`); classes it leaves out are prompted with their name.

Per image:
1. the vision backbone runs once (`Sam3Model.get_vision_features`); the text encoder ran once
   for all phrases when the segmentor was built (text features do not depend on the image);
2. the phrases run in batches of `prompt_batch` against the cached vision features (the DETR
   encoder/decoder and the mask decoder, `Sam3Model.forward(vision_embeds=..., text_embeds=...)`,
   the vision features expanded to the batch as views, not copies);
3. each phrase's semantic head (`semantic_seg`, a sigmoid) gives a per-pixel probability that
   the pixel belongs to the concept at the model's working resolution (288 x 288 for the 1008 x
   1008 input of `facebook/sam3`): `Sam3Processor.post_process_semantic_segmentation`'s
   `segmentation_scores`. A class's score is the max over its phrases (`scores`).

Instance masks are not used: the semantic head is SAM 3's own per-pixel output for a concept
("stuff" such as sky and road as well as things), as the SAM 3 paper uses it for semantic
segmentation; instance masks cover things only, and weighting them by their detection scores
would add a second threshold with no ground truth here to tune it.

The "no label" rule, applied at the image's resolution after a bilinear
upsampling of the working-resolution scores (as `post_process_semantic_segmentation` with
`target_sizes` does): a class *claims* a pixel when its probability is above `threshold`
(default 0.5, the post-processor's own; `--segmentor-arg threshold=0.3`). A pixel no class
claims gets no label. A claimed pixel gets the claiming class with the highest probability.
What the segmentor returns are the claims as per-pixel probabilities: `p_c = s_c / sum s` over
the claiming classes, 0 for the others, and all zeros at a pixel no class claims; the semantic
branch reads a pixel no class claims as "no label" (`BranchOutput.from_raw`),
so hard voting skips it, and soft voting (mean of `p` over a mask) gets nothing from it.
The segmentor returns the working-resolution probabilities with `scores_kind = "claims"`;
`ssa.segmentors.base.BranchOutput` upsamples them and applies the rule in bands of rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ssa.errors import SSAError, first_line
from ssa.words import did_you_mean

SAM3_TYPES = {"sam3", "sam3_video"}
DEFAULT_PROMPT_BATCH = 16
DEFAULT_THRESHOLD = 0.5
TEXT_LENGTH = 32  # Sam3Processor pads every prompt to 32 tokens


def read_prompts_file(path: str | Path, classes: Sequence[str]) -> dict[str, list[str]]:
    """`--prompts FILE`: YAML or JSON `{class name: phrase or [phrases]}` -> `{name: [phrases]}`.

    Every key must be one of `classes`; every phrase a non-empty string.
    """
    from ssa.userfiles import read_user_yaml

    path = Path(path)
    data = read_user_yaml(path, "--prompts")  # YAML reads JSON too; aliases, twice-given keys refused
    if not isinstance(data, dict) or not data:
        raise SSAError(f"--prompts {path} must map class names to a phrase or a list of phrases")
    known = set(classes)
    unknown = [str(k) for k in data if str(k) not in known]
    if unknown:
        raise SSAError(
            f"--prompts {path} names {len(unknown)} unknown class(es) ({', '.join(unknown[:5])})"
            f"{did_you_mean(unknown[0], classes)}; use the run's class names (the dataset's or "
            f"--classes)"
        )
    out: dict[str, list[str]] = {}
    for key, value in data.items():
        phrases = [value] if isinstance(value, str) else value
        if (
            not isinstance(phrases, list)
            or not phrases
            or not all(isinstance(p, str) and p.strip() for p in phrases)
        ):
            raise SSAError(
                f"--prompts {path}: {key!r} must map to a phrase or a non-empty list of phrases"
            )
        out[str(key)] = [p.strip() for p in phrases]
    return out


def prompt_table(
    classes: Sequence[str], prompts: Mapping[str, Sequence[str]] | None = None
) -> tuple[list[str], list[int]]:
    """The phrases to run and the class index of each (a class without prompts: its name)."""
    phrases: list[str] = []
    owner: list[int] = []
    prompts = prompts or {}
    for index, name in enumerate(classes):
        for phrase in prompts.get(name) or [name]:
            phrases.append(phrase)
            owner.append(index)
    return phrases, owner


class Sam3Segmentor:
    """SAM 3 prompted with class names: image -> per-class scores (see the module docstring).

    model_id: hub id or `save_pretrained` folder holding `Sam3Model` weights and a
    `Sam3Processor` (image processor + CLIP tokenizer). classes: the class names, in index
    order; prompts: `{class name: [phrases]}` (default: each class's name); prompt_batch:
    phrases per forward pass; threshold: the "no label" probability (module docstring).
    """

    def __init__(
        self,
        model_id: str,
        classes: Sequence[str] | None = None,
        prompts: Mapping[str, Sequence[str]] | None = None,
        prompt_batch: int = DEFAULT_PROMPT_BATCH,
        threshold: float = DEFAULT_THRESHOLD,
        device: str = "cpu",
    ) -> None:
        if classes is None or len(classes) == 0:
            raise SSAError(
                f"segmentor hf:{model_id} (SAM 3) needs class names to prompt: pass --classes "
                f"FILE (one name per line) or a --dataset with classes"
            )
        if len(set(classes)) != len(classes):
            raise SSAError(f"segmentor hf:{model_id} (SAM 3): a class name appears twice")
        if isinstance(prompt_batch, bool) or not isinstance(prompt_batch, int) or prompt_batch < 1:
            raise SSAError(f"--prompt-batch {prompt_batch!r} must be a whole number >= 1")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not (
            0 <= threshold < 1
        ):
            raise SSAError(f"SAM 3 threshold {threshold!r} must be a number in [0, 1)")
        unknown = sorted(set(prompts or {}) - set(classes))
        if unknown:
            raise SSAError(
                f"prompts name unknown class(es) {', '.join(unknown[:5])}; use the run's "
                f"class names"
            )
        self.model_id = model_id
        self.classes = [str(c) for c in classes]
        self.prompt_batch = prompt_batch
        self.threshold = float(threshold)
        self.device = torch.device(device)
        self.phrases, owner = prompt_table(self.classes, prompts)
        self.owner = torch.tensor(owner, device=self.device)
        self._load()
        self._encode_text()

    def _load(self) -> None:
        from transformers import Sam3Model, Sam3Processor

        from ssa.hub import offline_kwargs

        local = offline_kwargs(self.model_id)  # goes offline first when the hub is unreachable
        try:
            self.model = Sam3Model.from_pretrained(self.model_id, **local)
            self.processor = Sam3Processor.from_pretrained(self.model_id, **local)
        except (OSError, ValueError) as exc:
            first = first_line(exc)
            raise SSAError(
                f"cannot load SAM 3 segmentor hf:{self.model_id} ({first}); pass a folder with "
                f"the model and its Sam3Processor (save_pretrained both)"
            ) from None
        self.model.to(self.device).eval()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @torch.inference_mode()
    def _encode_text(self) -> None:
        """Every phrase through the text encoder once, in batches: `(P, 32, D)` features."""
        tokens = self.processor.tokenizer(
            self.phrases, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        ids = tokens["input_ids"].to(self.device)
        mask = tokens["attention_mask"].to(self.device)
        parts = []
        for i in range(0, len(self.phrases), self.prompt_batch):
            out = self.model.get_text_features(
                input_ids=ids[i : i + self.prompt_batch],
                attention_mask=mask[i : i + self.prompt_batch],
            )
            parts.append(out.pooler_output)
        self.text_features = torch.cat(parts)
        self.text_mask = mask

    def pixel_values(self, image: np.ndarray) -> torch.Tensor:
        """image: `HWC uint8 RGB` -> `(1, 3, S, S)` float32, as `Sam3Processor` prepares it."""
        inputs = self.processor.image_processor(images=image, return_tensors="pt")
        return inputs["pixel_values"].to(self.device)

    @torch.inference_mode()
    def phrase_scores(self, image: np.ndarray) -> torch.Tensor:
        """image: `HWC uint8 RGB` -> `(P, h, w) float32` semantic-head probabilities per phrase
        at the working resolution (vision backbone once, phrases in batches)."""
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        vision = self.model.get_vision_features(pixel_values=self.pixel_values(image))
        out = []
        for i in range(0, len(self.phrases), self.prompt_batch):
            text = self.text_features[i : i + self.prompt_batch]
            n = text.shape[0]
            batch = Sam3VisionEncoderOutput(  # views of the one image's features, no copies
                fpn_hidden_states=tuple(_expand(t, n) for t in vision.fpn_hidden_states),
                fpn_position_encoding=tuple(_expand(t, n) for t in vision.fpn_position_encoding),
            )
            result = self.model(
                vision_embeds=batch,
                text_embeds=BaseModelOutputWithPooling(pooler_output=text),
                attention_mask=self.text_mask[i : i + self.prompt_batch],
            )
            out.append(result.semantic_seg[:, 0].float().sigmoid())
        return torch.cat(out)

    @torch.inference_mode()
    def scores(self, image: np.ndarray) -> torch.Tensor:
        """image: `HWC uint8 RGB` -> `(C, h, w) float32` class probabilities at the working
        resolution: the max over each class's phrases."""
        per_phrase = self.phrase_scores(image)
        if len(self.phrases) == self.num_classes:  # one phrase per class, in class order
            return per_phrase
        out = per_phrase.new_zeros((self.num_classes, *per_phrase.shape[1:]))
        index = self.owner.view(-1, 1, 1).expand_as(per_phrase)
        return out.scatter_reduce_(0, index, per_phrase, reduce="amax", include_self=False)

    scores_kind = "claims"  # ssa.segmentors.base: thresholded after upsampling

    @property
    def claim_threshold(self) -> float:
        return self.threshold

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """image: `HWC uint8 RGB` -> `(C, h, w) float32` class probabilities at the working
        resolution (`scores`); the semantic branch upsamples them band by band and applies the
        claim rule (`scores_kind = "claims"`), so no `(C, H, W)` map is made."""
        return self.scores(image)

    def __repr__(self) -> str:
        return (
            f"Sam3Segmentor({self.model_id!r}, {self.num_classes} classes, "
            f"{len(self.phrases)} phrases, prompt_batch={self.prompt_batch}, "
            f"threshold={self.threshold})"
        )


def _expand(features: torch.Tensor, batch: int) -> torch.Tensor:
    """`(1, ...)` -> `(batch, ...)`, a view."""
    return features.expand(batch, *features.shape[1:])
