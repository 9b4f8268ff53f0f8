"""The class lists shipped as package data (``diffuseg/data/classes/NAME.json``): the one place
that reads that folder.

Each list holds a dataset's class names (and its palette where the dataset has an official one);
the dataset readers (`diffuseg.datasets.registry`) and the vocabularies of
`diffuseg.labeling.vocabulary` (``--classes dataset:NAME``) read them through `class_info`.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["class_info", "class_lists"]


@cache
def _data_json(*parts: str) -> dict[str, Any]:
    """A JSON file of the package data, ``diffuseg/data/<parts>`` (read once)."""
    ref = resources.files("diffuseg").joinpath("data", *parts)
    return json.loads(ref.read_text())


def class_info(name: str) -> dict[str, Any]:
    """Class names (and palette where the dataset has an official one) for dataset `name`."""
    return _data_json("classes", f"{name}.json")


def class_lists() -> list[str]:
    """The names of the class lists shipped in ``diffuseg/data/classes`` (the names `class_info`
    reads), in the folder's order."""
    folder = resources.files("diffuseg").joinpath("data", "classes")
    return [p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json")]
