"""Logging of a training run to its run directory (``diffuseg train ...``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["setup_run_logging"]


def setup_run_logging(out: Path, filename: str = "train.log") -> None:
    """Log progress (INFO) to ``out/filename``, and to stderr unless a root handler already does."""
    out.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    root = logging.getLogger("diffuseg")
    root.setLevel(logging.INFO)
    for old in [h for h in root.handlers if getattr(h, "_diffuseg_train", False)]:
        root.removeHandler(old)
    handlers: list[logging.Handler] = [logging.FileHandler(out / filename)]
    if not logging.getLogger().handlers:  # `diffuseg.cli.main` installs one (basicConfig)
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._diffuseg_train = True  # type: ignore[attr-defined]
        root.addHandler(handler)
