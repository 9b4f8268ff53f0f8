"""`Segmenter`: images in, `Segmentation` out, for any registered method.

It runs the backbone once per batch and keeps the last recorded `Features`: re-segmenting the
same images with other post-processing parameters (thresholds, anchors, refinement) re-uses
them and runs no second UNet pass.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from .backbone.backbone import DiffusionBackbone
from .backbone.features import FeatureRequest, Features
from .imageio import ImageInput, preprocess, stack_batch
from .methods import MethodSpec, get_method
from .types import Segmentation

__all__ = ["Segmenter", "extraction_options"]

logger = logging.getLogger(__name__)

#: Config fields that describe the UNet pass, with the value used when a method has no such field.
_EXTRACTION_DEFAULTS: dict[str, Any] = {
    "timestep": 0,
    "image_size": None,
    "resize_mode": "crop",
    "add_noise": False,
    "shared_noise": False,
    "prompt": "",
    "latent_mode": "mean",
}


def extraction_options(config: Any) -> dict[str, Any]:
    """The UNet-pass settings a method config asks for (missing fields take neutral values)."""
    return {k: getattr(config, k, v) for k, v in _EXTRACTION_DEFAULTS.items()}


def _digest(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class Segmenter:
    """Segment images with one method on one backbone.

    A config's `image_size` of None means the model's native resolution
    (`DiffusionBackbone.native_size`) for methods that run the model, and the image's own size
    for image-only methods (baselines).

    Args:
        backbone: the diffusion model; may be None for methods that need only the image.
        method: registry name (see `diffuseg.methods.list_methods()`) or a `MethodSpec`.
        batch_size: images per UNet pass in `segment_batch`.
        **overrides: config fields to change from the method's defaults.

    Example:
        >>> seg = Segmenter(backbone, "diffseg", kl_thresholds=(0.9, 0.9, 0.9))
        >>> result = seg("photo.jpg")              # one UNet pass
        >>> result2 = seg.resegment(num_anchors_per_side=8)  # no UNet pass
    """

    def __init__(
        self,
        backbone: DiffusionBackbone | None,
        method: str | MethodSpec,
        *,
        batch_size: int = 1,
        **overrides: Any,
    ) -> None:
        self.spec = method if isinstance(method, MethodSpec) else get_method(method)
        self.config = self.spec.make_config(**overrides)
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        self.batch_size = batch_size
        self.backbone = backbone
        self.request: FeatureRequest = self.spec.request_for(backbone.unet if backbone is not None else None)
        if backbone is None and not self.request.is_empty:
            raise ValueError(f"method {self.spec.name!r} needs a diffusion backbone; got `backbone=None`.")
        self._check_config()
        self.unet_passes = 0
        self._cache: tuple[tuple[Any, ...], Features] | None = None
        self._last_inputs: list[ImageInput] | None = None

    # ------------------------------------------------------------------ configuration
    def _check_config(self) -> None:
        if self.backbone is not None and not self.request.is_empty:
            self.backbone.check_timestep(extraction_options(self.config)["timestep"])
            size = extraction_options(self.config)["image_size"]
            if size is not None and size % self.backbone.size_multiple:
                raise ValueError(f"`image_size` must be a multiple of {self.backbone.size_multiple} for this "
                                 f"model, got {size}.")

    def configure(self, **overrides: Any) -> Segmenter:
        """Change config fields in place (validated); returns self."""
        known = {f.name for f in dataclasses.fields(self.config)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {self.spec.name!r}; allowed: {sorted(known)}.")
        config = dataclasses.replace(self.config, **overrides)
        old, self.config = self.config, config
        try:
            self._check_config()
        except ValueError:
            self.config = old
            raise
        return self

    # ------------------------------------------------------------------ extraction
    def _prepare(self, images: Sequence[ImageInput]) -> tuple[torch.Tensor, list[dict[str, Any]]]:
        opts = extraction_options(self.config)
        if self.backbone is not None and not self.request.is_empty:
            return self.backbone.preprocess(images, opts["image_size"], opts["resize_mode"])
        # image-only methods: None keeps the image's own size
        tensors, metas = preprocess(list(images), opts["image_size"], opts["resize_mode"], multiple=1, min_side=1)
        return stack_batch(tensors), metas

    def extract(self, images: Sequence[ImageInput], generator: torch.Generator | None = None,
                refresh: bool = False) -> Features:
        """Preprocess and run (or re-use) the UNet pass for a batch; returns its `Features`."""
        pixels, metas = self._prepare(images)
        opts = extraction_options(self.config)
        key = (_digest(pixels), tuple(sorted(opts.items())), self.request)
        if not refresh and self._cache is not None and self._cache[0] == key:
            logger.debug("re-using the recorded features (no UNet pass)")
            features = self._cache[1]
        elif self.request.is_empty or self.backbone is None:
            features = Features(images=pixels)
        else:
            features = self.backbone.extract(
                pixels, self.request, prompts=opts["prompt"], timestep=opts["timestep"],
                add_noise=opts["add_noise"], shared_noise=opts["shared_noise"],
                latent_mode=opts["latent_mode"], generator=generator,
            )
            self.unet_passes += 1
        features.meta = [dict(m) for m in metas]
        self._cache = (key, features)
        return features

    # ------------------------------------------------------------------ segmentation
    def segment_batch(
        self, images: Sequence[ImageInput], generator: torch.Generator | None = None
    ) -> list[Segmentation]:
        """Segment images, `batch_size` per UNet pass; one `Segmentation` per image, in order.

        Labels are at the model input size; `meta` records `input_size` and `crop_box` so
        `Segmentation.to_input_frame()` maps them back onto the image as given.
        """
        images = list(images)
        results: list[Segmentation] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            t0 = time.perf_counter()
            features = self.extract(chunk, generator=generator)
            t1 = time.perf_counter()
            for i in range(len(chunk)):
                seg = self.spec.run(features.select(i), self.config)
                seg.meta = {**features.meta[i], **seg.meta, "model": getattr(self.backbone, "name", None),
                            "seconds_extract": (t1 - t0) / len(chunk),
                            "seconds_segment": time.perf_counter() - t1}
                results.append(seg)
        self._last_inputs = images
        return results

    def __call__(self, image: ImageInput, generator: torch.Generator | None = None, **overrides: Any) -> Segmentation:
        """Segment one image; `overrides` change config fields first (see `configure`)."""
        if overrides:
            self.configure(**overrides)
        return self.segment_batch([image], generator=generator)[0]

    def resegment(self, **overrides: Any) -> list[Segmentation] | Segmentation:
        """Segment the last images again with changed post-processing parameters.

        Re-uses the recorded features when the changed fields do not affect the UNet pass.
        Returns one `Segmentation` if the last call segmented one image, else a list.
        """
        if self._last_inputs is None:
            raise RuntimeError("nothing to re-segment yet: call the segmenter on an image first.")
        self.configure(**overrides)
        out = self.segment_batch(self._last_inputs)
        return out[0] if len(out) == 1 else out
