"""Find the local folder of a second model (captioner, CLIP) named by a path or a hub id."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["resolve_folder"]

logger = logging.getLogger(__name__)

_OFFLINE = ("1", "true", "True", "ON", "on", "yes")


def resolve_folder(value: str, patterns: Sequence[str], not_available: Callable[[str, str], Exception]) -> Path:
    """A local folder for `value`: an existing path; else a hub id from the local Hugging Face
    cache; else downloaded (files matching `patterns`) unless ``HF_HUB_OFFLINE`` is set.

    Raises:
        the exception `not_available(value, reason)` builds, when none of these works.
    """
    path = Path(os.path.expanduser(value))
    if path.exists():
        return path
    looks_like_path = value.startswith((".", "/", "~")) or value.count("/") != 1 or "\\" in value
    if looks_like_path:
        raise not_available(value, f"no such folder: {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub ships with transformers
        raise not_available(value, str(e)) from e
    try:
        return Path(snapshot_download(value, local_files_only=True, allow_patterns=list(patterns)))
    except Exception as cache_error:  # noqa: BLE001 - any cache miss means "try the network"
        if os.environ.get("HF_HUB_OFFLINE", "") in _OFFLINE:
            raise not_available(value, "not in the local Hugging Face cache (offline mode).") from cache_error
    try:
        logger.info("downloading %s from the Hugging Face Hub", value)
        return Path(snapshot_download(value, allow_patterns=list(patterns)))
    except Exception as e:  # noqa: BLE001
        raise not_available(value, f"not cached locally and the download failed ({type(e).__name__}).") from e
