"""The method registry: every method the library drives, in one table (`METHODS`).

A new method is a module in `diffuseg.methods` that defines a `MethodSpec` (see
`diffuseg.methods.spec`), imported here and added to the table. Methods never import each other
or this module; they import only `diffuseg.methods.spec` and shared code in `diffuseg.ops`.
"""

from __future__ import annotations

from . import diffcut, diffseg, diffsegmenter, kmeanscolor, maskdiffusion, seg4diff, segdiffusion, single, slic
from .spec import MethodSpec

__all__ = ["METHODS", "get_method", "list_methods"]


def _table(*specs: MethodSpec) -> dict[str, MethodSpec]:
    """Name -> spec; two specs with one name are a programming error."""
    table: dict[str, MethodSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise RuntimeError(f"two methods register the name {spec.name!r}.")
        table[spec.name] = spec
    return table


#: Every method, by name (the CLI's ``--method``).
METHODS: dict[str, MethodSpec] = _table(
    diffcut.SPEC,  # DiffCut (Couairon et al., NeurIPS 2024): unsupervised
    diffseg.SPEC,  # DiffSeg (Tian et al., CVPR 2024): unsupervised
    diffsegmenter.SPEC,  # DiffSegmenter (arXiv 2309.02773): open-vocabulary
    kmeanscolor.SPEC,  # k-means on colours: baseline
    maskdiffusion.SPEC,  # MaskDiffusion (arXiv 2403.11194): open-vocabulary
    maskdiffusion.KMEANS_SPEC,  # MaskDiffusion's k-means variant: unsupervised
    seg4diff.SPEC,  # Seg4Diff (NeurIPS 2025): unsupervised, an empty prompt's text-token maps
    segdiffusion.SPEC,  # Seg-diffusion: open-vocabulary, a fine-tuned mask UNet
    single.SPEC,  # one segment: baseline
    slic.SPEC,  # SLIC superpixels: baseline
)


def get_method(name: str | MethodSpec) -> MethodSpec:
    """The registered method called `name` (a `MethodSpec` passes through).

    Raises:
        ValueError: if no method has that name (the message lists the known ones).
    """
    if isinstance(name, MethodSpec):
        return name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}.")
    return METHODS[name]


def list_methods() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(METHODS)
