"""Sliding-window inference for open-vocabulary methods (`diffuseg.plan.Query.window`).

The training-free open-vocabulary papers (SCLIP, ClearCLIP, ProxyCLIP) score an image the way
mmsegmentation's ``EncoderDecoder.slide_inference`` does (open-mmlab/mmsegmentation,
``mmseg/models/segmentors/encoder_decoder.py`` at 0067e6d8): the image resized so its shorter
side is e.g. 336 (`Query.resize_mode` "short_side"), ``crop`` x ``crop`` windows ``stride``
apart (the last one shifted back to end at the border, nothing padded), class logits per
window, summed into a full-size buffer and divided by the number of windows over each pixel,
then the per-pixel argmax.

Here the canvas is the model input of the whole query, exactly as a whole-image run frames it
(the method's plan, the query's size and `resize_mode`). The `Segmenter` cuts it into the
windows of `diffuseg.ops.windows.plan_windows`; each window is a sub-query (`crop_queries`: the
same classes, caption and image, sized to the window) whose pixels are the canvas's own (no
second resize) and whose model pass runs like any other query's, batched with the other windows
of the same size and drawing its noise, window after window in row-major order, from the
query's generator (or the batch's, in model-call order). The method's class scores
(`MethodSpec.score_maps`) of each window are averaged where windows overlap (`stitched`), and
labels and per-class scores are taken from the average as the method takes them from its own
scores. A background class scores the same constant in every window, and the float64 average of
equal values is exactly that value: the background score (or threshold) acts after stitching.

A window that covers the whole canvas is the whole-image run: the same pixels, pass, noise and
scores, hence the same labels and scores bit for bit.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch

from .ops.masks import argmax0, mean_score_per_label
from .ops.windows import plan_windows, stitch
from .plan import Query
from .settings import SlidingWindow
from .types import Segmentation

__all__ = ["check_windowed", "crop_queries", "stitched", "WindowScores"]


def check_windowed(spec: Any, window: SlidingWindow, multiple: int | None) -> None:
    """Refuse a window the method or the model cannot run, before any image is read.

    Args:
        spec: the method (`diffuseg.methods.MethodSpec`).
        window: the query's window.
        multiple: the model's input size granularity (`Backbone.size_multiple`), or None.

    Raises:
        ValueError: naming the method when it has no class scores (`MethodSpec.score_maps`), or
            naming `window.crop` when the model cannot take a window of that side.
    """
    if getattr(spec, "score_maps", None) is None:
        from .methods import METHODS

        able = sorted(name for name, m in METHODS.items() if m.score_maps is not None)
        raise ValueError(
            f"method {spec.name!r} has no per-class scores to average over windows; `window` (sliding-window "
            f"inference) works with the methods that have them ({', '.join(able)})."
        )
    if multiple is not None and window.crop % multiple:
        raise ValueError(f"`window.crop` must be a multiple of {multiple} for this model, got {window.crop}.")


def crop_queries(
    query: Query, pixels: torch.Tensor
) -> tuple[Query, list[tuple[tuple[int, int, int, int], torch.Tensor]]]:
    """The windows of one query's model input, in row-major order.

    Args:
        query: the whole-image query, its `window` set.
        pixels: (3, H, W) float32 in [0, 1], the query's model input (the canvas).

    Returns:
        The windows' sub-query (they share one size: ``min(crop, H)`` x ``min(crop, W)``): the
        query's classes, caption and image, `size` the window's longer side, "keep_aspect", no
        window, so the method plans a pass for a window-sized input (a captioner still describes
        the whole image); and per window its box (y0, y1, x0, x1) on the canvas and its pixels
        (3, y1 - y0, x1 - x0), a view of the canvas.

    Raises:
        ValueError: if `query` has no window.
    """
    if query.window is None:
        raise ValueError("`query.window` is None; give a SlidingWindow to cut the input into windows.")
    h, w = (int(s) for s in pixels.shape[-2:])
    crop, stride = query.window.crop, query.window.stride
    boxes = plan_windows(h, w, crop, stride)
    sub = dataclasses.replace(query, size=max(min(crop, h), min(crop, w)), resize_mode="keep_aspect", window=None)
    return sub, [(box, pixels[:, box[0] : box[1], box[2] : box[3]]) for box in boxes]


@dataclasses.dataclass(frozen=True)
class WindowScores:
    """One window's class scores and what they cost.

    Attributes:
        box: (y0, y1, x0, x1) on the canvas.
        scores: the method's (K, y1 - y0, x1 - x0) float32 class scores (`MethodSpec.score_maps`).
        model_seconds: the window's share of its model call.
        segment_seconds: the method's time on the window's features.
    """

    box: tuple[int, int, int, int]
    scores: torch.Tensor
    model_seconds: float
    segment_seconds: float


def stitched(query: Query, crops: Sequence[WindowScores], shape: tuple[int, int]) -> Segmentation:
    """One segmentation of the whole canvas from the class scores of its windows.

    Args:
        query: the whole-image query (its class names name the labels, its window is recorded).
        crops: every window's scores.
        shape: (H, W) of the canvas (the model input of the whole query).

    Returns:
        `Segmentation` with int64 labels (H, W) in [0, K) (argmax of the averaged scores, first
        index on ties), `names` the class names, `scores` (K,) each class's mean averaged score
        over its pixels, extras["class_scores"] the averaged (K, H, W) scores (on the CPU),
        ``meta["window"]`` {"crop", "stride", "windows"} and the windows' summed `timings`.
    """
    t0 = time.perf_counter()
    scores = stitch([c.scores for c in crops], [c.box for c in crops], shape)
    labels = argmax0(scores)
    window = query.window
    return Segmentation(
        labels=labels.cpu(),
        names=list(query.class_names),
        scores=mean_score_per_label(scores, labels),
        extras={"class_scores": scores.cpu()},
        meta={"window": {"crop": window.crop, "stride": window.stride, "windows": len(crops)}} if window else {},
        timings={
            "model": sum(c.model_seconds for c in crops),
            "segment": sum(c.segment_seconds for c in crops) + time.perf_counter() - t0,
        },
    )
