"""Every method's `MethodInfo`, without loading any method (torch-free): the command line's
help and option parsing read this; `registry.METHODS` holds the runnable specs, one per entry
(a test checks they match)."""

from __future__ import annotations

import sys
from typing import Any

from . import (
    diffcut_config,
    diffseg_config,
    diffsegmenter_config,
    kmeanscolor_config,
    maskdiffusion_config,
    seg4diff_config,
    segdiffusion_config,
    single_config,
    slic_config,
)
from .info import MethodInfo

__all__ = ["INFOS", "infos"]

#: Every method's info, sorted by name.
INFOS: tuple[MethodInfo, ...] = tuple(
    sorted(
        (
            diffcut_config.INFO,
            diffseg_config.INFO,
            diffsegmenter_config.INFO,
            kmeanscolor_config.INFO,
            maskdiffusion_config.INFO,
            maskdiffusion_config.KMEANS_INFO,
            seg4diff_config.INFO,
            segdiffusion_config.INFO,
            single_config.INFO,
            slic_config.INFO,
        ),
        key=lambda info: info.name,
    )
)


def infos() -> list[Any]:
    """`INFOS`, then any method registered at run time (an entry of `registry.METHODS` that the
    catalog lacks, e.g. a plugin's), read only when the registry is already loaded: a
    `MethodSpec` has the fields of a `MethodInfo`."""
    known = {info.name for info in INFOS}
    registry = sys.modules.get(f"{__package__}.registry")
    extra = [spec for name, spec in sorted(registry.METHODS.items()) if name not in known] if registry else []
    return [*INFOS, *extra]
