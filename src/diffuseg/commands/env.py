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
    from ..backbone.loading import TOY_MODELS, cached_models, toy_model_path
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
    return {
        "versions": versions,
        "platform": platform.platform(),
        "devices": devices,
        "methods": list_methods(),
        "families": _families(),
        "presets": {name: get_method(name).presets for name in list_methods() if get_method(name).presets},
        "models": {
            **{
                name: str(toy_model_path(name)) if (toy_model_path(name) / "model_index.json").is_file() else "missing"
                for name in TOY_MODELS
            },
            "hugging_face_cache": cached_models(),
        },
    }


def _families() -> dict[str, str]:
    """Model family -> what it is (the families presets are keyed by)."""
    from ..backbone.backbone import FAMILIES

    about = {
        "sd1": "Stable Diffusion 1.x (UNet)",
        "sd2": "Stable Diffusion 2.x (UNet)",
        "sdxl": "SDXL family, e.g. SSD-1B (UNet)",
        "toy": "the proving-ground model shipped with diffuseg (UNet)",
        "other": "another diffusers UNet",
        "sd3": "Stable Diffusion 3 (MM-DiT, joint attention)",
        "sd35": "Stable Diffusion 3.5 (MM-DiT with q/k norms, dual attention)",
        "flux": "FLUX.1 (MM-DiT, dual- and single-stream blocks)",
        "toy-mmdit": "the proving-ground diffusion transformer shipped with diffuseg (SD3-shaped)",
    }
    return {family: about.get(family, "") for family in FAMILIES}


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
    print(f"{'families':14s} " + f"\n{'':14s} ".join(f"{k}: {v}" for k, v in info["families"].items()))
    print(f"{'presets':14s} method settings that replace the paper's defaults on other model families")
    for method, families in info["presets"].items():
        for family, overrides in families.items():
            shown = ", ".join(f"{k}={show_value(v)}" for k, v in overrides.items())
            print(f"{'':14s} {method} on {family}: {shown}")
    for name, where in info["models"].items():
        if name != "hugging_face_cache":
            print(f"{'model ' + name:14s} {where}")
    cached = info["models"]["hugging_face_cache"]
    print(f"{'cached models':14s} {', '.join(cached) if cached else 'none'}")
    sys.stdout.flush()
    return 0
