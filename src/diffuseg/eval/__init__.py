"""Evaluation: metrics and matching protocols, the runner and reports.

The benchmark datasets live in `diffuseg.datasets`; their names are re-exported here for
convenience.

Example:
    >>> from diffuseg.eval import OutputOptions, evaluate, load_dataset
    >>> ds = load_dataset("voc21", "~/data/VOCdevkit")
    >>> report = evaluate(ds, "slic", protocol="full", limit=10, output=OutputOptions("results"))
    >>> report["metrics"]["miou"]
"""

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
    MATCHINGS,
    ImageCounts,
    MetricAccumulator,
    Scores,
    class_metrics,
    confusion_matrix,
    contingency,
    hungarian_per_image,
    score,
)
from .options import EngineOptions, OutputOptions
from .protocols import PROTOCOLS, Protocol, get_protocol
from .render import render_report
from .report import compare_reports, load_report, to_markdown
from .runner import evaluate
from .store import ResultStore, ResumeMismatchError

__all__ = [
    "IGNORE_INDEX",
    "Sample",
    "SegmentationDataset",
    "DATASETS",
    "dataset_names",
    "load_dataset",
    "ArrayDataset",
    "FolderDataset",
    "SampleReadError",
    "class_info",
    "MATCHINGS",
    "ImageCounts",
    "MetricAccumulator",
    "Scores",
    "class_metrics",
    "confusion_matrix",
    "contingency",
    "hungarian_per_image",
    "score",
    "PROTOCOLS",
    "Protocol",
    "get_protocol",
    "compare_reports",
    "load_report",
    "to_markdown",
    "evaluate",
    "render_report",
    "EngineOptions",
    "OutputOptions",
    "ResultStore",
    "ResumeMismatchError",
]
