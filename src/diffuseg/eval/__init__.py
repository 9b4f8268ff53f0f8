"""Evaluation: metrics and matching protocols, the runner and reports.

The benchmark datasets live in `diffuseg.datasets`; their names are re-exported here for
convenience. The names below are imported on first use (PEP 562), so ``diffuseg eval --help``
reads the settings' choices (`diffuseg.eval.settings`) without loading PyTorch.

Example:
    >>> from diffuseg.eval import OutputOptions, evaluate, load_dataset
    >>> ds = load_dataset("voc21", "~/data/VOCdevkit")
    >>> report = evaluate(ds, "slic", protocol="full", limit=10, output=OutputOptions("results"))
    >>> report["metrics"]["miou"]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from ..datasets import (
        DATASETS,
        IGNORE_INDEX,
        ArrayDataset,
        FolderDataset,
        Sample,
        SampleReadError,
        SegmentationDataset,
        class_info,
        dataset_names,
        load_dataset,
    )
    from .metrics import (
        ImageCounts,
        MetricAccumulator,
        Scores,
        class_metrics,
        confusion_matrix,
        contingency,
        hungarian_per_image,
        score,
    )
    from .multi_runner import evaluate_methods
    from .options import EngineOptions, OutputOptions
    from .protocols import PROTOCOLS, Protocol, get_protocol
    from .render import render_report
    from .report import compare_reports, load_report, to_markdown
    from .runner import evaluate
    from .settings import MATCHINGS
    from .store import ResultStore, ResumeMismatchError

#: public name -> module that defines it
_EXPORTS = {
    **dict.fromkeys(
        (
            "DATASETS",
            "IGNORE_INDEX",
            "ArrayDataset",
            "FolderDataset",
            "Sample",
            "SampleReadError",
            "SegmentationDataset",
            "class_info",
            "dataset_names",
            "load_dataset",
        ),
        "..datasets",
    ),
    "MATCHINGS": ".settings",
    **dict.fromkeys(
        (
            "ImageCounts",
            "MetricAccumulator",
            "Scores",
            "confusion_matrix",
            "contingency",
            "hungarian_per_image",
            "score",
        ),
        ".metrics",
    ),
    **dict.fromkeys(("EngineOptions", "OutputOptions"), ".options"),
    **dict.fromkeys(("PROTOCOLS", "Protocol", "get_protocol"), ".protocols"),
    **dict.fromkeys(("compare_reports", "load_report", "to_markdown"), ".report"),
    "evaluate": ".runner",
    "render_report": ".render",
    "evaluate_methods": ".multi_runner",
    **dict.fromkeys(("ResultStore", "ResumeMismatchError"), ".store"),
}

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "ArrayDataset",
    "FolderDataset",
    "Sample",
    "SampleReadError",
    "SegmentationDataset",
    "class_info",
    "dataset_names",
    "load_dataset",
    "MATCHINGS",
    "ImageCounts",
    "MetricAccumulator",
    "Scores",
    "class_metrics",
    "confusion_matrix",
    "contingency",
    "hungarian_per_image",
    "score",
    "EngineOptions",
    "OutputOptions",
    "PROTOCOLS",
    "Protocol",
    "get_protocol",
    "compare_reports",
    "load_report",
    "to_markdown",
    "evaluate",
    "render_report",
    "evaluate_methods",
    "ResultStore",
    "ResumeMismatchError",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
