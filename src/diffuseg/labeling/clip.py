"""CLIP image-text and text-text similarity for class filters (`clip`, `caption-clip`).

`ClipScorer` wraps a Hugging Face CLIP model (`transformers.CLIPModel` with its `CLIPProcessor`),
loaded by `load_clip` from a local folder or a hub id in the local cache (e.g.
``openai/clip-vit-large-patch14``; downloaded only when not offline). Scores are cosine
similarities of the L2-normalised projected embeddings, in [-1, 1]; a class name is embedded
through each prompt template and the embeddings are averaged (then re-normalised), as CLIP's
zero-shot classifiers do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEFAULT_CLIP", "ClipScorer", "NotAClipModelError", "load_clip"]

logger = logging.getLogger(__name__)

#: A CLIP model users commonly have (the text encoder family of SD 1.x).
DEFAULT_CLIP = "openai/clip-vit-large-patch14"
_EXPECTED = (
    f"a CLIP model (transformers CLIPModel with its CLIPProcessor) such as {DEFAULT_CLIP}, as a hub id "
    "already in your Hugging Face cache or a local folder written by save_pretrained"
)
_HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


class NotAClipModelError(ValueError):
    """A path exists but does not hold a CLIP model and its processor."""


class ClipScorer:
    """Cosine similarities between an image or a text and class names, with one CLIP model.

    Args:
        model: a `transformers.CLIPModel` on the device and in the dtype to run in.
        processor: its `transformers.CLIPProcessor`.
        templates: prompt templates with ``{class}``, averaged per name.
    """

    def __init__(self, model: Any, processor: Any, templates: Sequence[str] = ("a photo of a {class}.",)) -> None:
        from .spans import check_template

        for t in templates:
            check_template(t)
        if not templates:
            raise ValueError("`templates` must hold at least one template with '{class}'.")
        self.model, self.processor, self.templates = model.eval(), processor, tuple(templates)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        return f"ClipScorer({type(self.model).__name__}, templates={len(self.templates)})"

    @torch.no_grad()
    def _text(self, texts: list[str]) -> torch.Tensor:
        enc = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        out = self.model.get_text_features(**enc)
        out = getattr(out, "pooler_output", out)  # transformers 5 may return an output object
        return torch.nn.functional.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def names(self, names: Sequence[str]) -> torch.Tensor:
        """(P, D) unit embeddings of the names, each the mean over the templates."""
        from .spans import fill_template

        texts = [fill_template(t, n) for n in names for t in self.templates]
        emb = self._text(texts).view(len(names), len(self.templates), -1).mean(1)
        return torch.nn.functional.normalize(emb, dim=-1)

    @torch.no_grad()
    def image_similarity(self, image: Any, names: Sequence[str]) -> torch.Tensor:
        """(P,) cosine similarity of `image` (path / PIL / array / tensor) to each name."""
        from ..imageio import as_pil

        enc = self.processor(images=as_pil(image), return_tensors="pt")
        pixels = enc["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
        out = self.model.get_image_features(pixel_values=pixels)
        out = getattr(out, "pooler_output", out)
        img = torch.nn.functional.normalize(out.float(), dim=-1)[0]
        return (self.names(names) @ img).cpu()

    @torch.no_grad()
    def dense_features(self, image: Any) -> torch.Tensor:
        """Per-patch image embeddings of the whole image: (D, h, w) float32, unit length.

        The image is resized to the model's square input without a crop (the classifier's
        centre crop would drop the borders), and each patch token of the last layer goes
        through the post-layernorm and the visual projection that CLIP applies to its class
        token. (DiffCut's reference reads a ConvNeXt CLIP's dense trunk features; a ViT's patch
        tokens are the equivalent here.)
        """
        from ..imageio import as_pil

        side = int(self.model.config.vision_config.image_size)
        enc = self.processor.image_processor(
            images=as_pil(image), do_center_crop=False, size={"height": side, "width": side}, return_tensors="pt"
        )
        pixels = enc["pixel_values"].to(self.device, next(self.model.parameters()).dtype)
        vision = self.model.vision_model(pixel_values=pixels)
        tokens = vision.last_hidden_state[0, 1:]  # (N, C) without the class token
        tokens = self.model.visual_projection(self.model.vision_model.post_layernorm(tokens)).float()
        grid = side // int(self.model.config.vision_config.patch_size)
        return torch.nn.functional.normalize(tokens, dim=-1).t().reshape(-1, grid, grid).cpu()

    @torch.no_grad()
    def text_similarity(self, text: str, names: Sequence[str]) -> torch.Tensor:
        """(P,) cosine similarity of `text` (e.g. a caption) to each bare name."""
        emb = self._text([text, *names])
        return (emb[1:] @ emb[0]).cpu()


def _not_available(value: str, reason: str) -> Exception:
    from ..backbone.loading import ModelNotFoundError

    return ModelNotFoundError(f"CLIP model {value!r} is not available: {reason}\nGive `clip` {_EXPECTED}.")


def _check_folder(value: str, path: Path) -> None:
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        raise NotAClipModelError(f"CLIP model {value!r} ({path}) has no config.json; expected {_EXPECTED}.")
    try:
        data = json.loads(config.read_bytes())
    except (OSError, ValueError) as e:
        raise NotAClipModelError(f"CLIP model {value!r}: {config} is unreadable ({type(e).__name__}).") from e
    if not isinstance(data, dict) or data.get("model_type") != "clip":
        got = data.get("model_type") if isinstance(data, dict) else None
        raise NotAClipModelError(
            f"CLIP model {value!r}: {config} has model_type {got!r}, not 'clip'; expected {_EXPECTED}."
        )


def load_clip(value: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ClipScorer:
    """Load a CLIP model and its processor as a `ClipScorer`.

    Args:
        value: a local folder or a hub id (local cache first; downloaded unless ``HF_HUB_OFFLINE``).
        device, dtype: where and in what to run (default CPU, float32).

    Raises:
        ModelNotFoundError: `value` is neither a folder nor a cached (or downloadable) hub id.
        NotAClipModelError: the folder does not hold a CLIP model and its processor.
    """
    from .hub import resolve_folder

    path = resolve_folder(value, _HUB_PATTERNS, _not_available)
    _check_folder(value, path)
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except (ImportError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise NotAClipModelError(
            f"CLIP model {value!r} ({path}) cannot be loaded ({type(e).__name__}: {first})."
        ) from e
    model = model.to(device=device if device is not None else "cpu", dtype=dtype or torch.float32)
    return ClipScorer(model, processor)
