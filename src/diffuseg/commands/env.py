"""``diffuseg env``: versions, devices and locally available models, for bug reports."""

from __future__ import annotations

import argparse
import platform
import sys
from typing import Any

from . import COMMANDS

__all__ = ["register", "run", "collect"]


def collect() -> dict[str, Any]:
    """Versions, devices, methods and local models as a dict."""
    import importlib.metadata as md

    import torch

    from .._version import __version__
    from ..backbone.loading import cached_models, toy_model_path
    from ..methods import get_method, list_methods

    versions = {"diffuseg": __version__, "python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "numpy", "pillow", "scipy", "scikit-image", "gradio", "ray"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append("mps")
    toy = toy_model_path()
    return {
        "versions": versions,
        "platform": platform.platform(),
        "devices": devices,
        "methods": list_methods(),
        "presets": {name: get_method(name).presets for name in list_methods() if get_method(name).presets},
        "models": {
            "toy": str(toy) if (toy / "unet" / "config.json").is_file() else "missing",
            "hugging_face_cache": cached_models(),
        },
    }


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("env", help=COMMANDS["env"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ._options import show_value

    info = collect()
    for k, v in info["versions"].items():
        print(f"{k:14s} {v}")
    print(f"{'platform':14s} {info['platform']}")
    print(f"{'devices':14s} {', '.join(info['devices'])}")
    print(f"{'methods':14s} {', '.join(info['methods'])}")
    print(f"{'presets':14s} method settings that replace the paper's defaults on other model families")
    for method, families in info["presets"].items():
        for family, overrides in families.items():
            shown = ", ".join(f"{k}={show_value(v)}" for k, v in overrides.items())
            print(f"{'':14s} {method} on {family}: {shown}")
    print(f"{'model toy':14s} {info['models']['toy']}")
    cached = info["models"]["hugging_face_cache"]
    print(f"{'cached models':14s} {', '.join(cached) if cached else 'none'}")
    sys.stdout.flush()
    return 0
