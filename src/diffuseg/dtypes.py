"""Weight dtypes by name: the one list the CLI's --dtype offers and the loaders accept.

Light on purpose (torch is imported only when a name is parsed), so a command's ``--help`` can
list the choices without loading torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DTYPES", "parse_dtype"]

#: Names of the weight dtypes -> torch dtype attribute.
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def parse_dtype(dtype: Any) -> Any:
    """A weight dtype: a name of `DTYPES` or a `torch.dtype` (None -> None: the weights' own).

    Returns:
        the `torch.dtype`, or None.

    Raises:
        ValueError: naming `dtype`, for a name that is not in `DTYPES`.
    """
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {sorted(DTYPES)}, got {dtype!r}.")
    return getattr(torch, DTYPES[dtype])
