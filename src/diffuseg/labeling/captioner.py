"""An image captioner for methods that build prompts from captions (DiffSegmenter's ``captioner`` resource).

`BlipCaptioner` wraps a Hugging Face BLIP captioning model (`BlipForConditionalGeneration` and its
`BlipProcessor`) and captions an image *conditionally*: BLIP continues a given text prefix, so
``captioner(image, "a photograph of cat")`` returns e.g. ``"a photograph of cat sitting on a couch"``.
That is the call ``captioner(image: PIL.Image.Image, prefix: str) -> str`` that DiffSegmenter makes.

The reference's recipe (VCG-team/DiffSegmenter): BLIP-large (``Salesforce/blip-image-captioning-large``,
which its scripts load from a local ``blip/blip-image-captioning-large`` folder) conditionally captions the
image from one prefix per class name c -- ``"a photography of {c}"`` in the VOC10 and COCO scripts,
``"a photograph of {c}"`` in the VOC12 script -- with ``processor(image, prefix)`` then ``model.generate``
and ``processor.decode(..., skip_special_tokens=True)``; the caption is that class's prompt.

Decoding is greedy (deterministic), at most `max_new_tokens` new tokens (default 30). BLIP's decoder
returns the prefix's tokens followed by the continuation, so the decoded text starts with the prefix *as
BLIP's uncased BERT tokenizer writes it* (lowercased, punctuation spaced out: ``"t-shirt"`` decodes as
``"t - shirt"``). With ``keep_prefix=True`` (the default) that decoded prefix is replaced by the prefix as
given, so the caption starts with exactly `prefix`; ``keep_prefix=False`` returns BLIP's decoded text
unchanged, as the reference does (identical for lowercase one-word class names).

`caption_many` captions one image from several prefixes with one ``generate`` call per prefix *length*
(in tokens). Prefixes of different lengths are not padded into one batch: BLIP's ``generate`` overwrites
the first column with its BOS token and drops the last column (the ``[SEP]``), so right padding leaves
``[SEP]``/``[PAD]`` tokens inside the shorter prefixes, and left padding is only right where ``generate``
derives position ids from the attention mask (recent transformers; not 4.x, whose BLIP text decoder
counts positions from the first column). Same-length groups need no padding, so the batched captions are
those of one call per prefix on every transformers version.

The weights are the user's: diffuseg ships none. `load_captioner` (the resource loader,
``--resource captioner=Salesforce/blip-image-captioning-large``) takes a local folder or a hub id already
in the local Hugging Face cache (downloaded only when not offline).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_CAPTIONER",
    "DEFAULT_MAX_NEW_TOKENS",
    "BlipCaptioner",
    "NotACaptionerError",
    "load_captioner",
]

logger = logging.getLogger(__name__)

#: The reference's captioner (BLIP-large, COCO captioning).
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-large"
#: Default bound on the tokens BLIP adds after the prefix.
DEFAULT_MAX_NEW_TOKENS = 30

_EXPECTED = (
    f"a BLIP captioning model (BlipForConditionalGeneration with its BlipProcessor) such as {DEFAULT_CAPTIONER}, "
    "as a hub id already in your Hugging Face cache or a local folder (e.g. one written by the model's and the "
    "processor's save_pretrained)"
)
_HUB_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


class NotACaptionerError(ValueError):
    """A path exists but does not hold a BLIP captioning model and its processor."""


class BlipCaptioner:
    """Conditional image captioning with BLIP: ``captioner(image, prefix) -> prefix + continuation``.

    Args:
        model: a `transformers.BlipForConditionalGeneration`, on the device and in the dtype to run in.
        processor: its `transformers.BlipProcessor` (image processor + BERT tokenizer).
        max_new_tokens: the most tokens generated after the prefix (default 30; the reference leaves
            transformers' default ``max_length=20``, counted with the prefix).
        keep_prefix: start the caption with `prefix` exactly as given (default) rather than with BLIP's
            decoding of it (lowercased, punctuation spaced out).

    Example:
        >>> captioner = load_captioner("Salesforce/blip-image-captioning-large", "cuda", torch.float16)
        >>> captioner(image, "a photograph of cat")
        'a photograph of cat sitting on a couch'
    """

    def __init__(
        self, model: Any, processor: Any, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, keep_prefix: bool = True
    ) -> None:
        if int(max_new_tokens) < 1:
            raise ValueError(f"`max_new_tokens` must be >= 1, got {max_new_tokens}.")
        self.model = model.eval()
        self.processor = processor
        self.max_new_tokens = int(max_new_tokens)
        self.keep_prefix = keep_prefix

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def __repr__(self) -> str:
        name = getattr(self.model.config, "name_or_path", "") or type(self.model).__name__
        return (
            f"BlipCaptioner({name!r}, device={self.device}, dtype={self.dtype}, max_new_tokens={self.max_new_tokens})"
        )

    def __call__(self, image: Any, prefix: str = "") -> str:
        """The caption of `image` that continues `prefix` ("" = unconditional captioning)."""
        return self.caption_many(image, [prefix])[0]

    @torch.no_grad()
    def caption_many(self, image: Any, prefixes: Sequence[str]) -> list[str]:
        """The captions of one image continuing each of `prefixes`, in order.

        Prefixes with the same number of tokens share one ``generate`` call (see the module docstring for why
        different lengths are not padded together); the results equal one `__call__` per prefix.
        """
        if isinstance(prefixes, str):
            raise TypeError("`prefixes` must be a sequence of strings, not one string; use captioner(image, prefix).")
        prefixes = [str(p) for p in prefixes]
        if not prefixes:
            return []
        tokenizer = self.processor.tokenizer
        pixels = self.processor(images=image, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(device=self.device, dtype=self.dtype)
        # [CLS] prefix [SEP], as the processor tokenizes it; generate() turns [CLS] into BLIP's BOS and drops [SEP].
        rows = [list(tokenizer(p).input_ids) for p in prefixes]
        groups: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(len(row), []).append(i)
        out: list[str] = [""] * len(prefixes)
        for members in groups.values():
            ids = torch.tensor([rows[i] for i in members], dtype=torch.long, device=self.device)
            generated = self.model.generate(
                pixel_values=pixels.repeat(len(members), 1, 1, 1),
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                num_beams=1,
            )
            for i, seq in zip(members, generated.tolist(), strict=True):
                out[i] = self._decode(seq, prefixes[i], rows[i])
        return out

    def _decode(self, seq: list[int], prefix: str, prompt_ids: list[int]) -> str:
        tokenizer = self.processor.tokenizer
        text = tokenizer.decode(seq, skip_special_tokens=True).strip()
        if self.keep_prefix and prefix.strip():
            decoded_prefix = tokenizer.decode(prompt_ids, skip_special_tokens=True).strip()
            if text.startswith(decoded_prefix):
                text = prefix.strip() + text[len(decoded_prefix) :]
        return text.strip()


def _not_available(value: str, reason: str) -> Exception:
    from ..backbone.loading import ModelNotFoundError

    return ModelNotFoundError(f"captioner {value!r} is not available: {reason}\nGive `captioner` {_EXPECTED}.")


def _not_a_captioner(value: str, path: Path, what: str) -> NotACaptionerError:
    where = repr(value) if str(path) == value else f"{value!r} ({path})"
    return NotACaptionerError(f"captioner {where} is not a BLIP captioning model: {what}. Expected {_EXPECTED}.")


def _resolve(value: str) -> Path:
    """A local folder for `value`: an existing path, else a hub id from the cache (or the hub when online)."""
    from .hub import resolve_folder

    return resolve_folder(value, _HUB_PATTERNS, _not_available)


def _check_folder(value: str, path: Path) -> None:
    """Raise NotACaptionerError unless `path` is a folder whose config.json is a BLIP captioning model's."""
    if not path.is_dir():
        raise _not_a_captioner(value, path, "it is a file, not a folder")
    config = path / "config.json"
    if not config.is_file():
        raise _not_a_captioner(value, path, "the folder has no config.json")
    try:
        data = json.loads(config.read_bytes())
    except (OSError, ValueError) as e:
        raise _not_a_captioner(value, path, f"its config.json is unreadable ({type(e).__name__})") from e
    if not isinstance(data, dict):
        raise _not_a_captioner(value, path, "its config.json is not a JSON object")
    model_type = data.get("model_type")
    if model_type != "blip":
        raise _not_a_captioner(value, path, f"its config.json has model_type {model_type!r}, not 'blip'")
    arch = data.get("architectures") or []
    if arch and "BlipForConditionalGeneration" not in arch:
        raise _not_a_captioner(
            value, path, f"it is a {', '.join(map(str, arch))}, not a BlipForConditionalGeneration (captioning) model"
        )


def load_captioner(
    value: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> BlipCaptioner:
    """Load a BLIP captioning model and its processor as a `BlipCaptioner` (the ``captioner`` resource loader).

    Args:
        value: a local folder holding the model and processor files, or a hub id (e.g.
            ``Salesforce/blip-image-captioning-large``) looked up in the local Hugging Face cache first,
            downloaded only when ``HF_HUB_OFFLINE`` is not set.
        device: where to run (default: CPU).
        dtype: the weights' dtype (None = float32), e.g. the backbone's ``torch.float16`` on CUDA.
        max_new_tokens: see `BlipCaptioner`.

    Raises:
        ModelNotFoundError: `value` is neither a folder nor a cached (or downloadable) hub id.
        NotACaptionerError: the folder does not hold a BLIP captioning model and its processor.
    """
    path = _resolve(value)
    _check_folder(value, path)
    from transformers import BlipForConditionalGeneration, BlipProcessor

    parts: dict[str, Any] = {}
    for name, load in (
        ("model", lambda: BlipForConditionalGeneration.from_pretrained(path, local_files_only=True)),
        ("processor", lambda: BlipProcessor.from_pretrained(path, local_files_only=True)),
    ):
        try:
            parts[name] = load()
        except (ImportError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - transformers/tokenizers/safetensors raise many kinds
            first_line = (str(e).strip().splitlines() or [""])[0][:300]
            raise _not_a_captioner(
                value, path, f"its {name} cannot be loaded ({type(e).__name__}: {first_line})"
            ) from e
    model = parts["model"].to(device=device if device is not None else "cpu", dtype=dtype or torch.float32)
    return BlipCaptioner(model, parts["processor"], max_new_tokens=max_new_tokens)
