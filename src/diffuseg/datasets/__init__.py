"""Benchmark datasets read from local folders, below both the engine and the evaluation.

Nothing is downloaded: `load_dataset` opens a benchmark in its official download layout (or the
package's generated ``synthetic`` scenes); every dataset yields `Sample` with int64 label maps
(255 = ignore) and carries its class names (`class_info`, package data).

Example:
    >>> from diffuseg.datasets import load_dataset
    >>> ds = load_dataset("voc21", "~/data/VOCdevkit")
    >>> sample = ds[0]
"""

from .base import IGNORE_INDEX, Sample, SegmentationDataset
from .class_files import OVSS_NAME_FILES, ovss_class_names, parse_class_names, read_class_names_file
from .classes import class_info, class_lists
from .folder import ArrayDataset, FolderDataset, SampleReadError
from .registry import DATASETS, dataset_names, load_dataset

__all__ = [
    "IGNORE_INDEX",
    "Sample",
    "SegmentationDataset",
    "class_info",
    "class_lists",
    "OVSS_NAME_FILES",
    "ovss_class_names",
    "parse_class_names",
    "read_class_names_file",
    "ArrayDataset",
    "FolderDataset",
    "SampleReadError",
    "DATASETS",
    "dataset_names",
    "load_dataset",
]
