"""Noise for a batch: from one generator, or from one generator per item.

Callers (the backbone's pass, the Seg-diffusion sampler, `Segmenter.segment_batch`) take either
one ``torch.Generator`` (drawn in order, as before) or a sequence of generators, one per item,
so that an item's noise does not depend on its batch (`diffuseg.engine.seeding`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..settings import SEED_LIMIT, check_seed

__all__ = ["per_item_generators", "batch_noise", "check_seed", "SEED_LIMIT"]


def per_item_generators(
    generator: torch.Generator | Sequence[torch.Generator] | None, count: int, item: str = "image"
) -> list[torch.Generator] | None:
    """The per-item generators of a `generator` argument; None when it is one generator or None.

    Args:
        generator: None, one generator, or `count` generators.
        count: the number of items.
        item: what an item is, for the error message ("image", "query").

    Raises:
        ValueError: naming `generator`, if it is neither a generator nor a sequence holding one
            generator per item.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return None
    if not isinstance(generator, Sequence):
        raise ValueError(
            f"`generator` must be a torch.Generator, one per {item} ({count}) or None, got {type(generator).__name__}."
        )
    gens = list(generator)
    if len(gens) != count or not all(isinstance(g, torch.Generator) for g in gens):
        raise ValueError(f"`generator` must be a torch.Generator or one per {item} ({count}), got {len(gens)} item(s).")
    return gens


def batch_noise(
    shape: Sequence[int],
    generator: torch.Generator | Sequence[torch.Generator] | None,
    device: torch.device | str,
    shared: bool = False,
) -> torch.Tensor:
    """Standard normal noise of `shape` = (B, ...), float32 on `device`.

    With one generator (or None: the global RNG) the batch is one draw, or one (1, ...) draw
    repeated over the batch when `shared`. With B generators, row b is drawn from the b-th
    (`shared` then has no effect: a draw shared by a batch would tie each row to its neighbours).

    Returns:
        float32 tensor of `shape` (an expanded view when one draw is shared).
    """
    shape = tuple(shape)
    gens = per_item_generators(generator, shape[0])
    if gens is not None:
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device).to(device) for g in gens])
    draw = (1, *shape[1:]) if shared else shape
    source = generator.device if generator is not None else device
    return torch.randn(draw, generator=generator, device=source, dtype=torch.float32).to(device).expand(shape)
