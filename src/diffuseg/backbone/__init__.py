"""The diffusion backbone: model loading, one-pass feature extraction, recording."""

from .backbone import DiffusionBackbone, PromptEmbeddings
from .features import FeatureRequest, Features
from .load import DTYPES, load_backbone, parse_dtype
from .loading import DEFAULT_MODEL, ModelNotFoundError, NotADiffusionModelError
from .recorder import record

__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "DiffusionBackbone",
    "FeatureRequest",
    "Features",
    "ModelNotFoundError",
    "NotADiffusionModelError",
    "PromptEmbeddings",
    "load_backbone",
    "parse_dtype",
    "record",
]
