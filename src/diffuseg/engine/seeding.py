"""Per-image randomness: a generator per image seeded from (global seed, image id).

An image's noise then depends only on the run's seed and the image's id, never on the engine,
the number of workers, the batch it lands in or how many images were done before a resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

__all__ = ["image_seed", "image_generator", "image_generators", "resolve_seed", "DEFAULT_SEED"]

#: The run seed when none is given: fixed, so a rerun (resume) draws the same noise.
DEFAULT_SEED = 0

#: Seeds are 63-bit: non-negative and within `torch.Generator.manual_seed`'s int64 range.
_SEED_BITS = 63


def resolve_seed(seed: int | None) -> int:
    """`seed` checked, or `DEFAULT_SEED` when None.

    Raises:
        ValueError: naming `seed`, if it is not an int in [0, 2**64) (a 64-bit unsigned seed).
    """
    from ..ops.noise import check_seed

    return DEFAULT_SEED if seed is None else check_seed(seed)


def image_seed(seed: int, image_id: str) -> int:
    """The seed of image `image_id` in a run seeded with `seed`: the first 63 bits of
    sha256(f"{seed}:{image_id}") (stable across processes, machines and Python versions)."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - _SEED_BITS)


def image_generator(seed: int, image_id: str, device: Any = "cpu") -> Any:
    """A `torch.Generator` on `device` seeded with `image_seed(seed, image_id)`."""
    import torch

    return torch.Generator(device=device).manual_seed(image_seed(seed, image_id))


def image_generators(seed: int, image_ids: Sequence[str], device: Any = "cpu") -> list[Any]:
    """One generator per id (see `image_generator`)."""
    return [image_generator(seed, i, device) for i in image_ids]
