"""The memory check of a model input: refuse, before anything is allocated, an input whose
recorded maps (and the method's own work on them) would not fit on the backbone's device.
Used by the `Segmenter` for every pass (a whole input, or one window of it)."""

from __future__ import annotations

from typing import Any

from . import devices
from .plan import Pass

__all__ = ["check_memory", "need_bytes"]


def need_bytes(backbone: Any, spec: Any, batch_size: int, pass_: Pass, model_size: tuple[int, int]) -> int:
    """Bytes one model call of `batch_size` inputs of `model_size` (h, w) records for `pass_`,
    plus the method's working memory on one of them (`MethodSpec.working_bytes`)."""
    rows = batch_size * len(pass_.prompts)
    need = backbone.record_bytes(pass_.request, model_size, rows)
    if spec.working_bytes is not None:
        f = backbone.vae_scale_factor
        need += spec.working_bytes(-(-model_size[0] // f) * -(-model_size[1] // f))
    return need


def check_memory(backbone: Any, spec: Any, batch_size: int, pass_: Pass, model_size: tuple[int, int]) -> None:
    """Refuse, before anything is allocated, a model input whose recorded maps (and the
    method's own work on them) would not fit in the memory free on the backbone's device.

    Args:
        backbone: the loaded model (`Backbone`: device, record_bytes, size_multiple).
        spec: the method (`MethodSpec`: name, working_bytes).
        batch_size: inputs per model call.
        pass_: the model work.
        model_size: (h, w) of one model input.

    Raises:
        ValueError: naming `image_size`, the estimate, the free memory and a size that fits.
    """
    if pass_.sampler is not None:
        return
    free = devices.available_bytes(backbone.device)  # looked up at call time: tests stand in a small machine
    need = need_bytes(backbone, spec, batch_size, pass_, model_size)
    if free is None or need <= free:
        return
    longer, multiple = max(model_size), backbone.size_multiple
    fit = None
    for side in range(longer - multiple, multiple - 1, -multiple):
        scaled = tuple(max(multiple, round(s * side / longer)) for s in model_size)
        if need_bytes(backbone, spec, batch_size, pass_, scaled) <= free:  # type: ignore[arg-type]
            fit = side
            break
    gib = 2.0**30
    hint = f"`image_size` {fit} fits" if fit else "no input size fits"
    raise ValueError(
        f"a {model_size[0]}x{model_size[1]} model input (`image_size` {longer}) needs about {need / gib:.1f} GiB "
        f"for method {spec.name!r} (attention maps and their processing), but {free / gib:.1f} GiB are "
        f"free on {backbone.device}; {hint}."
    )
