"""Loading from the Hugging Face hub, local folders and checkpoint URLs, for every branch (mask
sources, segmentors, the engine's models): the `from_pretrained` keywords (`pretrained_kwargs`:
never run shipped code; `local_files_only` when offline), offline detection (`HF_HUB_OFFLINE`,
or one probe of an unreachable hub) and the one-line load errors with their hints.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ssa.errors import SSAError, first_line


def config_hint(model_id: str, exc: BaseException) -> str:
    """What to do when a model's config does not load: code the model ships is never run;
    a local folder needs its save_pretrained files; a hub id offline must be in the cache."""
    if "custom code" in str(exc) or "trust_remote_code" in str(exc):
        return (
            "ssa does not run code that a model ships (trust_remote_code); pass a model whose "
            "architecture transformers implements"
        )
    if Path(model_id).expanduser().is_dir():
        return "the folder needs config.json and the weights that save_pretrained writes"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import constants

        return (
            f"it is not in the local cache (HF_HUB_OFFLINE=1); download it where the hub is "
            f"reachable (`hf download {model_id}`) into the cache {constants.HF_HUB_CACHE}, or "
            f"pass a local save_pretrained folder"
        )
    return (
        "pass a hub id or a local save_pretrained folder; offline, download it elsewhere and "
        "pass the folder"
    )


def unpickling_refused(what: str) -> str:
    """The one line for a pickled weights file (`.bin`) that torch's `weights_only` loader
    refused: it would run code when loaded, and nothing of it ran."""
    return (
        f"cannot load {what}: its pickled weights (.bin) hold objects that torch refuses to "
        f"load without running code (weights_only), so nothing of it ran; pass safetensors "
        f"weights (save_pretrained writes them) from a source you trust"
    )


def offline_kwargs(model_id: str | None = None) -> dict[str, Any]:
    """`from_pretrained` keywords for `HF_HUB_OFFLINE` as set now: huggingface_hub reads the
    variable once, at import, and otherwise retries the hub for about 20 s before failing.
    With `model_id` (a hub id about to load) an unreachable hub is detected first
    (`go_offline_if_hub_unreachable`)."""
    if model_id is not None:
        go_offline_if_hub_unreachable(model_id)
    return {"local_files_only": True} if os.environ.get("HF_HUB_OFFLINE") == "1" else {}


def pretrained_kwargs(model_id: str | None = None) -> dict[str, Any]:
    """The keywords of every Auto class `from_pretrained` here: code a model ships is never
    run (nor asked about on a terminal), and `offline_kwargs`."""
    return {"trust_remote_code": False, **offline_kwargs(model_id)}


def is_hub_id(model_id: str) -> bool:
    """`name` or `org/name` that is not a path on this machine (a missing folder such as
    `/data/model` or `./model` is a path too: its error needs no hub)."""
    import re

    if Path(model_id).expanduser().exists() or model_id.startswith((".", "~", "/")):
        return False
    return re.fullmatch(r"[\w.-]+(/[\w.-]+)?", model_id) is not None


HUB_TIMEOUT_S = 2.5
_hub_checked: list[str] = []  # the endpoint, once it was tried in this process


def go_offline_if_hub_unreachable(model_id: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    """Before a hub id (not a local folder) loads, with `HF_HUB_OFFLINE` unset: one HEAD
    request to huggingface_hub's endpoint, once per process. When it gets no answer within
    `timeout` seconds, switch this process offline (`HF_HUB_OFFLINE=1`, huggingface_hub's
    flag too), so the model loads from the local cache, or fails with the cache's hint, with
    one logged line instead of about 30 s of retries. Returns whether it went offline."""
    import logging
    import urllib.error
    import urllib.request

    if os.environ.get("HF_HUB_OFFLINE") == "1" or not is_hub_id(model_id):
        return False
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if endpoint in _hub_checked:
        return False
    _hub_checked.append(endpoint)
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:
        return False  # it answered
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        os.environ["HF_HUB_OFFLINE"] = "1"
        constants.HF_HUB_OFFLINE = True
        logging.getLogger(__name__).warning(
            "the Hugging Face hub %s is unreachable (%s); working offline from the local cache "
            "(set HF_HUB_OFFLINE=1 to skip this check)", endpoint, reason,
        )
        return True
    return False


def load_error(kind: str, model_id: str, exc: BaseException) -> SSAError:
    """One line for a Hugging Face model that cannot be loaded: what failed (the first line of
    `exc`) and what to do (`config_hint`; offline it names the cache to put it in)."""
    return SSAError(
        f"cannot load {kind} hf:{model_id} ({first_line(exc, 200)}); {config_hint(model_id, exc)}"
    )
