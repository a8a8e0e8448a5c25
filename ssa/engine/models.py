"""The engine's model defaults (the original's large models, and `--light` smaller ones) and the
one way they are loaded: a hub id or a local `save_pretrained` folder, with loading failures
turned into one-line SSAErrors that name the option, the model and the fix."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ssa.errors import SSAError, first_line

ROLES = ("captioner", "clip", "clipseg", "oneformer_ade", "oneformer_coco")

DEFAULT_MODELS: dict[str, str] = {
    "captioner": "Salesforce/blip-image-captioning-large",
    "clip": "openai/clip-vit-large-patch14",
    "clipseg": "CIDAS/clipseg-rd64-refined",
    "oneformer_ade": "shi-labs/oneformer_ade20k_swin_large",
    "oneformer_coco": "shi-labs/oneformer_coco_swin_large",
}
# SHI Labs publish a Swin-T OneFormer for ADE20K but, as far as we could check, none for COCO, so
# --light keeps the COCO Swin-L (pass --oneformer-coco to choose another).
LIGHT_MODELS: dict[str, str] = {
    "captioner": "Salesforce/blip-image-captioning-base",
    "clip": "openai/clip-vit-base-patch32",
    "clipseg": "CIDAS/clipseg-rd16",
    "oneformer_ade": "shi-labs/oneformer_ade20k_swin_tiny",
    "oneformer_coco": "shi-labs/oneformer_coco_swin_large",
}

T = TypeVar("T")


def option_name(role: str) -> str:
    return "--" + role.replace("_", "-")


def looks_like_path(model_id: str) -> bool:
    """A local folder rather than a hub id (`owner/name`)."""
    return model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or "\\" in model_id


def resolve_models(overrides: dict[str, str | None], light: bool = False) -> dict[str, str]:
    """The model id of every role: the given one, else the (light) default. A path that does
    not exist is refused here, before any model is loaded."""
    unknown = set(overrides) - set(ROLES)
    if unknown:
        raise SSAError(f"unknown engine model role(s) {sorted(unknown)}; valid: {', '.join(ROLES)}")
    defaults = LIGHT_MODELS if light else DEFAULT_MODELS
    models = {role: overrides.get(role) or defaults[role] for role in ROLES}
    for role, model_id in models.items():
        if looks_like_path(model_id) and not Path(model_id).expanduser().is_dir():
            raise SSAError(
                f"{option_name(role)} {model_id}: no such folder; pass a folder saved with "
                f"save_pretrained (model and processor) or a hub id such as {defaults[role]}"
            )
    return models


def load_error(role: str, model_id: str, exc: BaseException) -> SSAError:
    first = first_line(exc, 200)
    hint = ""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        hint = "; offline (HF_HUB_OFFLINE=1) only cached ids and local folders load"
    return SSAError(
        f"cannot load {option_name(role)} {model_id} ({first}); pass a hub id or a local folder "
        f"holding the model and its processor (save_pretrained both){hint}; without hub access, "
        f"download {model_id} elsewhere and pass {option_name(role)} <folder>"
    )


def load(role: str, model_id: str, loader: Callable[[str], T]) -> T:
    """`loader(model_id)`, with any loading failure raised as a one-line SSAError."""
    try:
        return loader(model_id)
    except SSAError as exc:
        raise SSAError(f"{option_name(role)}: {exc}") from None
    except pickle.UnpicklingError:
        from ssa.hub import unpickling_refused

        raise SSAError(unpickling_refused(f"{option_name(role)} {model_id}")) from None
    except (OSError, ValueError, KeyError, TypeError, ImportError, RuntimeError) as exc:
        raise load_error(role, model_id, exc) from None


class HFModel:
    """A Hugging Face model and its processor, loaded for one engine role and batched calls."""

    def __init__(
        self, role: str, model_cls: Any, model_id: str, device: str = "cpu", batch_size: int = 16
    ) -> None:
        import torch
        from transformers import AutoProcessor

        from ssa.hub import pretrained_kwargs

        kwargs = pretrained_kwargs(model_id)  # also goes offline when the hub is unreachable
        self.model_id = model_id
        self.device = torch.device(device)
        self.batch_size = batch_size
        # Code that a model ships is never run (and never asked about on a terminal).
        self.processor = load(
            role, model_id, lambda m: AutoProcessor.from_pretrained(m, **kwargs)
        )
        self.model = load(
            role, model_id, lambda m: model_cls.from_pretrained(m, **kwargs)
        )
        self.model.to(self.device).eval()


def features(out: Any):
    """CLIP feature outputs: a tensor (transformers 4) or an output whose `pooler_output` holds
    the projected features (transformers 5)."""
    import torch

    return out if torch.is_tensor(out) else out.pooler_output
