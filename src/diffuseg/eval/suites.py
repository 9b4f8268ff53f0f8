"""Benchmark suites: the sets of benchmarks papers report together, each with its paper's settings.

A suite is a tuple of `SuiteEntry` in the papers' table order. `run_suite` scores one method on
every benchmark found under one data folder (each in its own resumable results file,
``<suite>_<dataset>_<method>``, through `evaluate`), skips the ones that are missing, and
writes one table (``suite_<suite>_<method>.md`` / ``.json``) with the mean mIoU over the rows
that ran.

``ovss``
    The eight benchmarks of the training-free open-vocabulary papers (SCLIP, ClearCLIP,
    ProxyCLIP, Trident), in their order: VOC21, Context60, COCO-Object, VOC20, Context59,
    COCO-Stuff-171, Cityscapes-19, ADE-150. Each query carries SCLIP's class-name file with
    synonyms (`diffuseg.datasets.ovss_class_names`); scored at the label's full resolution
    (mmseg resizes the prediction to the original image). COCO-Object and COCO-Stuff-171 use all
    5,000 val2017 images. From SCLIP's configs (``wangf3014/SCLIP`` ``configs/cfg_*.py``,
    ``clip_segmentor.py``): the input's short side (`short_side`: mmseg ``Resize(scale=(2048, S),
    keep_ratio=True)``) and the sliding window (`slide_crop` / `slide_stride`, SCLIP's defaults
    224 / 112) are applied (`ovss_protocol`), each rounded up to a multiple of
    `DIFFUSION_MULTIPLE` (64: the side every diffusion backbone here takes; CLIP's patch-16 sizes
    336 / 224 / 112 become 384 / 256 / 128, 448 stays, 560 becomes 576), for open-vocabulary
    methods (those with class score maps; the others see the whole input at the short side).
    Recorded, **not applied**: the background probability threshold (`background_threshold`,
    SCLIP's ``prob_thd``: a pixel whose best class probability is below it becomes background)
    and the logit scale (`logit_scale`): the methods here have no CLIP softmax over classes; their
    own background rule applies.
    Known difference: SCLIP's COCO-Object labels (``datasets/cvt_coco_object.py``) turn
    unlabelled pixels (255) into background; ``cocoobject81`` ignores them.
``diffcut``
    DiffCut's unsupervised table (reference notes diffseg_diffcut.md §5): VOC, Context, COCO-Object,
    COCO-Stuff-27, Cityscapes-27, ADE20K under the ``diffcut`` protocol (1024 px input, scored at
    128 x 128); VOC / Context / COCO-Object with the GT-aware "many-to-one background" matching
    (``diffcut-background``). Known differences: DiffCut counts VOC's boundary pixels and
    COCO-Object's unlabelled ones as background (here ignored), and scores ADE's raw labels off
    by one (here 0 = "other" is ignored, as everyone else).
``diffseg``
    DiffSeg's table: COCO-Stuff-27 (the curated 2,175 images) and Cityscapes-27 under the
    ``diffseg`` protocol (512 px, per-image Hungarian).

``root`` holds each dataset in the folder its archive unpacks to (`SUITE_FOLDERS`):
``ROOT/VOCdevkit`` (VOC2012 and VOC2010 with Context), ``ROOT/coco``, ``ROOT/cityscapes``,
``ROOT/ADEChallengeData2016``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any

from .protocols import PROTOCOLS, Protocol

__all__ = [
    "SUITES",
    "SUITE_FOLDERS",
    "SuiteEntry",
    "SuiteBenchmark",
    "find_benchmarks",
    "ovss_protocol",
    "DIFFUSION_MULTIPLE",
    "entry_settings",
    "suite_run_name",
]

logger = logging.getLogger(__name__)

#: Dataset folders under a suite's root: what each official archive unpacks to.
SUITE_FOLDERS = {
    "voc": "VOCdevkit",
    "coco": "coco",
    "cityscapes": "cityscapes",
    "ade": "ADEChallengeData2016",
}

_SCLIP = "wangf3014/SCLIP configs/cfg_{}.py"


@dataclasses.dataclass(frozen=True)
class SuiteEntry:
    """One benchmark of a suite and the settings its paper evaluates it with.

    Attributes:
        label: the column name papers print (``VOC21``, ``COCO-Stuff-171``).
        dataset: the `diffuseg.datasets.load_dataset` name.
        folder: the dataset's folder under the suite's root (a value of `SUITE_FOLDERS`).
        protocol: the crop / resize / scoring `Protocol`.
        split: the split scored; None = the dataset's default.
        class_names_file: a shipped class-name file (`diffuseg.datasets.OVSS_NAME_FILES`) whose
            names (with synonyms) each query carries; None = the dataset's names.
        matching: one of `diffuseg.eval.MATCHINGS`; None = the method's default.
        background_threshold: the OVSS papers' ``prob_thd`` (recorded, not applied).
        logit_scale: SCLIP's ``logit_scale`` (recorded, not applied).
        short_side: the paper's short side (applied through `protocol`, rounded up to a multiple
            of `DIFFUSION_MULTIPLE`).
        slide_crop: the paper's sliding-window side (likewise).
        slide_stride: the paper's sliding-window stride (likewise).
        source: where the settings come from.
    """

    label: str
    dataset: str
    folder: str
    protocol: Protocol
    split: str | None = None
    class_names_file: str | None = None
    matching: str | None = None
    background_threshold: float | None = None
    logit_scale: float | None = None
    short_side: int | None = None
    slide_crop: int | None = None
    slide_stride: int | None = None
    source: str = ""


#: The OVSS papers' sizes (CLIP ViT-B/16) are rounded up to a multiple of this for a diffusion
#: backbone (SD 1.x / 2.x / XL take multiples of 64; MM-DiTs of 16, so 64 suits every one).
DIFFUSION_MULTIPLE = 64


def _round_up(side: int) -> int:
    return -(-side // DIFFUSION_MULTIPLE) * DIFFUSION_MULTIPLE


def ovss_protocol(short_side: int, crop: int, stride: int, window: bool = True) -> Protocol:
    """The OVSS papers' protocol for a diffusion model: the shorter side resized to `short_side`,
    `crop` x `crop` windows every `stride` pixels (mmseg ``slide_inference``; `window` False: the
    whole resized input), each rounded up to a multiple of `DIFFUSION_MULTIPLE`; scored at the
    label's full resolution."""
    from ..settings import SlidingWindow

    side, crop, stride = _round_up(short_side), _round_up(crop), _round_up(stride)
    return Protocol(
        "ovss",
        crop="none",
        resize_mode="short_side",
        model_size=side,
        window=SlidingWindow(crop, stride) if window else None,
    )


def _ovss(label: str, dataset: str, folder: str, names: str, cfg: str, **kw: Any) -> SuiteEntry:
    """An OVSS entry with SCLIP's defaults (``clip_segmentor.py``: logit scale 40, prob_thd 0,
    slide crop 224 / stride 112; short side 336) unless `kw` says otherwise."""
    settings = {"logit_scale": 40.0, "short_side": 336, "slide_crop": 224, "slide_stride": 112} | kw
    protocol = ovss_protocol(settings["short_side"], settings["slide_crop"], settings["slide_stride"])
    return SuiteEntry(label, dataset, folder, protocol, class_names_file=names, source=_SCLIP.format(cfg), **settings)


#: The suites, each a tuple of entries in the papers' table order.
SUITES: dict[str, tuple[SuiteEntry, ...]] = {
    "ovss": (
        _ovss("VOC21", "voc21", "VOCdevkit", "voc21", "voc21", logit_scale=65.0, background_threshold=0.1),
        _ovss(
            "Context60", "context60", "VOCdevkit", "context60", "context60", logit_scale=50.0, background_threshold=0.1
        ),  # fmt: skip
        _ovss(
            "COCO-Object",
            "cocoobject81",
            "coco",
            "coco_object",
            "coco_object",
            split="val2017",
            logit_scale=50.0,
            background_threshold=0.1,
        ),  # fmt: skip
        _ovss("VOC20", "voc20", "VOCdevkit", "voc20", "voc20"),
        _ovss("Context59", "context59", "VOCdevkit", "context59", "context59"),
        _ovss(
            "COCO-Stuff-171", "cocostuff171", "coco", "coco_stuff", "coco_stuff164k", split="val2017", short_side=448
        ),  # fmt: skip
        _ovss("Cityscapes-19", "cityscapes19", "cityscapes", "city_scapes", "city_scapes", short_side=560),
        _ovss("ADE-150", "ade150", "ADEChallengeData2016", "ade20k", "ade20k"),
    ),
    "diffcut": tuple(
        SuiteEntry(
            label,
            dataset,
            folder,
            PROTOCOLS["diffcut"],
            matching=matching,
            source="PaulCouairon/DiffCut eval_diffcut.py (reference notes diffseg_diffcut.md §5)",
        )  # fmt: skip
        for label, dataset, folder, matching in (
            ("VOC", "voc21", "VOCdevkit", "diffcut-background"),
            ("Context", "context60", "VOCdevkit", "diffcut-background"),
            ("COCO-Object", "cocoobject81", "coco", "diffcut-background"),
            ("COCO-Stuff-27", "cocostuff27", "coco", "hungarian-per-image"),
            ("Cityscapes-27", "cityscapes27", "cityscapes", "hungarian-per-image"),
            ("ADE20K", "ade150", "ADEChallengeData2016", "hungarian-per-image"),
        )
    ),
    "diffseg": tuple(
        SuiteEntry(
            label,
            dataset,
            folder,
            PROTOCOLS["diffseg"],
            matching="hungarian-per-image",
            source="google/diffseg benchmarks.ipynb (reference notes diffseg_diffcut.md §3)",
        )  # fmt: skip
        for label, dataset, folder in (
            ("COCO-Stuff-27", "cocostuff27", "coco"),
            ("Cityscapes-27", "cityscapes27", "cityscapes"),
        )
    ),
}


def get_suite(name: str) -> tuple[SuiteEntry, ...]:
    """The entries of suite `name`.

    Raises:
        ValueError: naming `suite` if it is unknown (the message lists the suites).
    """
    if name not in SUITES:
        raise ValueError(f"unknown `suite` {name!r}; choose one of {sorted(SUITES)}.")
    return SUITES[name]


def suite_run_name(suite: str, dataset: str, method: str) -> str:
    """File stem of one benchmark's results in a suite: ``<suite>_<dataset>_<method>``."""
    from .runner import run_name

    return run_name(suite, dataset, method)


@dataclasses.dataclass(frozen=True)
class SuiteBenchmark:
    """A suite entry as found under a root: its `dataset` (opened), or None and `missing` (why)."""

    entry: SuiteEntry
    path: Path
    dataset: Any = None
    missing: str | None = None


def find_benchmarks(suite: str, root: str | os.PathLike) -> list[SuiteBenchmark]:
    """Open every benchmark of `suite` under `root` (``ROOT/<entry.folder>``); a folder that is
    missing, or whose layout is incomplete, gives a `SuiteBenchmark` with ``missing`` set.

    Raises:
        ValueError: naming `suite` (unknown) or `root` (not a folder, or none of the suite's
            datasets under it: the message lists where each was looked for).
    """
    from ..datasets import load_dataset

    entries = get_suite(suite)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ValueError(f"`root` {str(root)!r} is not a folder; give the folder holding {_folders(entries)}.")
    found = []
    for entry in entries:
        path = root / entry.folder
        if not path.is_dir():
            found.append(SuiteBenchmark(entry, path, missing=f"not found: looked for {path}"))
            continue
        try:
            found.append(SuiteBenchmark(entry, path, load_dataset(entry.dataset, path, entry.split)))
        except (FileNotFoundError, ValueError) as e:
            found.append(SuiteBenchmark(entry, path, missing=str(e).splitlines()[0]))
    if all(b.missing for b in found):
        where = "; ".join(f"{b.entry.label}: {b.missing}" for b in found)
        raise ValueError(f"`root` {str(root)!r} holds none of the {suite} suite's datasets ({where}).")
    return found


def _folders(entries: tuple[SuiteEntry, ...]) -> list[str]:
    return list(dict.fromkeys(e.folder for e in entries))


def entry_settings(suite: str, entry: SuiteEntry, method: str) -> dict[str, Any]:
    """The arguments of `evaluate` (and `check_output`) an entry fixes: ``protocol``,
    ``matching``, ``class_names`` and the output ``name`` (``<suite>_<dataset>_<method>``)."""
    from ..datasets import ovss_class_names
    from ..methods import get_method

    names = ovss_class_names(entry.class_names_file) if entry.class_names_file else None
    protocol = entry.protocol
    if protocol.window is not None and get_method(method).score_maps is None:  # no class scores to stitch
        protocol = dataclasses.replace(protocol, window=None)
    return {
        "protocol": protocol,
        "matching": entry.matching,
        "class_names": names,
        "name": suite_run_name(suite, entry.dataset, method),
    }


def recorded_settings(entry: SuiteEntry) -> dict[str, Any]:
    """The entry's settings that are recorded but not applied (the methods here have no CLIP
    softmax for them)."""
    keys = ("background_threshold", "logit_scale")
    return {k: getattr(entry, k) for k in keys if getattr(entry, k) is not None}


def mean_miou(values: list[float | None]) -> float | None:
    """The mean of the values that are numbers (NaN and None left out); None if none is."""
    nums = [v for v in values if v is not None and not math.isnan(v)]
    return sum(nums) / len(nums) if nums else None
