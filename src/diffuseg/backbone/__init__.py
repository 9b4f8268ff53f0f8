"""The diffusion backbone: model loading, one-pass feature extraction, recording."""

from .backbone import DiffusionBackbone, PromptEmbeddings
from .features import FeatureRequest, Features
from .loading import DEFAULT_MODEL, ModelNotFoundError, NotADiffusionModelError
from .recorder import record

__all__ = [
    "DEFAULT_MODEL",
    "DiffusionBackbone",
    "FeatureRequest",
    "Features",
    "ModelNotFoundError",
    "NotADiffusionModelError",
    "PromptEmbeddings",
    "record",
]
