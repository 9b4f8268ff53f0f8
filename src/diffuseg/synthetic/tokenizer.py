"""Build a Hugging Face `CLIPTokenizer` offline from the real CLIP BPE vocabulary.

The OpenAI CLIP tokenizer's merges ship as ``bpe_simple_vocab_16e6.txt.gz`` inside the
`open_clip` package (``open_clip_torch`` on PyPI). We rebuild ``vocab.json`` and ``merges.txt``
exactly as CLIP's ``SimpleTokenizer`` does (openai/CLIP ``clip/simple_tokenizer.py``): the 256
byte-level characters, their ``</w>`` variants, one token per merge, then ``<|startoftext|>``
and ``<|endoftext|>``: 49,408 tokens. ``open_clip`` is located with `importlib` and never
imported (importing it needs torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import logging
from functools import lru_cache
from pathlib import Path

__all__ = ["CLIP_VOCAB_SIZE", "bpe_path", "build_clip_tokenizer", "write_clip_vocab"]

logger = logging.getLogger(__name__)

CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2  # openai/CLIP simple_tokenizer.py: merges[1:49152-256-2+1]


def bpe_path() -> Path:
    """Locate ``bpe_simple_vocab_16e6.txt.gz`` inside the installed `open_clip` package.

    Raises:
        ImportError: when `open_clip` is not installed, with the install command.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "Building the CLIP tokenizer needs the CLIP BPE vocabulary from open_clip; "
            "install it with `pip install --no-deps open_clip_torch`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise ImportError(f"open_clip is installed but {path} is missing; reinstall open_clip_torch.")
    return path


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's token -> id table and BPE merges, rebuilt as openai/CLIP's SimpleTokenizer does.

    Cached: callers must not mutate the returned objects.
    """
    lines = gzip.open(bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary has {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}.")
    return {t: i for i, t in enumerate(vocab)}, merges


def write_clip_vocab(directory: str | Path) -> tuple[Path, Path]:
    """Write CLIP's ``vocab.json`` and ``merges.txt`` into `directory`.

    These are the files the slow (transformers 4.x) `CLIPTokenizer` reads; they are written
    beside ``tokenizer.json`` so the shipped folder loads with either generation.

    Returns:
        The paths of vocab.json and merges.txt.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = _clip_vocab_and_merges()
    vocab_file = directory / "vocab.json"
    merges_file = directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_file, merges_file


def build_clip_tokenizer(model_max_length: int = 77):
    """Build a `transformers.CLIPTokenizer` with the real CLIP vocabulary, in memory.

    Args:
        model_max_length: padded prompt length; 77 as in Stable Diffusion.

    Returns:
        transformers.CLIPTokenizer whose pad token is ``<|endoftext|>`` (Stable Diffusion 1.x).
    """
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab_and_merges()
    try:  # transformers >= 5: tokenizers-backed, takes the tables
        return CLIPTokenizer(
            vocab=vocab,
            merges=merges,
            model_max_length=model_max_length,
            pad_token="<|endoftext|>",
        )
    except TypeError:  # transformers 4.x: slow tokenizer reads files
        import tempfile

        vocab_file, merges_file = write_clip_vocab(tempfile.mkdtemp(prefix="clip_vocab_"))
    return CLIPTokenizer(
        vocab_file=str(vocab_file),
        merges_file=str(merges_file),
        model_max_length=model_max_length,
        pad_token="<|endoftext|>",
    )
