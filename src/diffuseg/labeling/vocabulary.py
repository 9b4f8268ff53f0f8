"""Class vocabularies: parse the names a caller gives, load a dataset's or a file's, find the
background class.

A vocabulary is a tuple of classes, each a tuple ``(display name, synonym, ...)``; label id =
position. Strings use ``,`` between classes and ``|`` between synonyms: ``"cat, tv|monitor"``
-> ``(("cat",), ("tv", "monitor"))``.

This module imports nothing from the rest of the package at import time (``diffuseg.plan``
imports it); dataset class lists are read lazily.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "BACKGROUND",
    "DATASET_PREFIX",
    "Vocabulary",
    "background_index",
    "dataset_vocabularies",
    "load_classes",
    "parse_classes",
]


class Vocabulary(tuple):
    """A parsed class list: one tuple (display name, synonym, ...) per class, label id =
    position, checked by `parse_classes`, which hands a `Vocabulary` back as it is: a list is
    parsed once, however many queries carry it."""

    __slots__ = ()


#: The name that marks a class as "background" (compared case-insensitively).
BACKGROUND = "background"

#: `load_classes` reads ``"dataset:NAME"`` as that dataset's class names.
DATASET_PREFIX = "dataset:"

_SYNTHETIC = "synthetic"


def _class_names(item: Any) -> tuple[str, ...]:
    """One class given as ``"name|synonym"`` or an iterable of names -> stripped names."""
    if isinstance(item, str):
        names: Iterable[Any] = item.split("|")
    elif isinstance(item, Iterable):
        names = item
    else:
        raise ValueError(
            f"`classes` has {item!r} ({type(item).__name__}) as a class; give a class as a string "
            "'name|synonym' or a sequence of names."
        )
    return tuple(str(n).strip() for n in names)


def parse_classes(classes: str | Iterable[str | Iterable[str]] | None) -> Vocabulary:
    """Normalise class names: ``"cat, tv|monitor"`` or ``["cat", ("tv", "monitor")]`` ->
    ``(("cat",), ("tv", "monitor"))``. The first name of each class is its display name; the
    others are synonyms.

    Args:
        classes: a comma-separated string (synonyms joined by '|'), an iterable of classes
            (each a '|'-joined string or an iterable of names), or None for "no classes given"
            (the empty tuple ``()``, what None parses to, is accepted as the same).

    Returns:
        tuple of classes, each a tuple of stripped names; ``()`` for None or ``()``.

    Raises:
        ValueError: when the list is empty (``""``, ``" , "``, ``[]``), a name is empty or has
            no letter or digit (``"!!!"``), or a name (display name or synonym) occurs twice,
            compared case-insensitively; the message names the offending names.
    """
    if isinstance(classes, Vocabulary):
        return classes  # parsed and checked already
    if classes is None or (isinstance(classes, tuple) and not classes):
        return Vocabulary()  # () is what None parses to, so re-parsing a parsed vocabulary is idempotent
    items: list[Any] = classes.split(",") if isinstance(classes, str) else list(classes)
    out = [_class_names(item) for item in items]
    if all(not any(out_names) for out_names in out):
        shown = classes if isinstance(classes, str) else items
        raise ValueError(
            f"`classes` is empty ({shown!r}); give at least one class name, classes separated by ',' "
            "and synonyms by '|' (e.g. 'cat, tv|monitor')."
        )
    for item, names in zip(items, out, strict=True):
        if not names or any(not n for n in names):
            raise ValueError(
                f"`classes` has an empty class name in {item!r}; separate classes with ',' and synonyms with '|'."
            )
        bad = [n for n in names if not any(ch.isalnum() for ch in n)]
        if bad:
            raise ValueError(
                f"`classes` has the class name {bad[0]!r}, which has no letter or digit; a class name "
                "must contain at least one."
            )
    seen: dict[str, int] = {}
    for names in out:
        for n in names:
            seen[n.lower()] = seen.get(n.lower(), 0) + 1
    dupes = sorted(n for n, count in seen.items() if count > 1)
    if dupes:
        raise ValueError(f"`classes` lists {dupes} more than once (names and synonyms must be distinct).")
    return Vocabulary(out)


def dataset_vocabularies() -> list[str]:
    """The dataset names `load_classes` accepts after ``"dataset:"``, sorted: the class lists
    shipped in ``diffuseg/data/classes`` (`diffuseg.datasets.class_lists`) plus ``"synthetic"``."""
    from ..datasets.classes import class_lists

    return sorted({*class_lists(), _SYNTHETIC})


def _dataset_classes(name: str) -> Vocabulary:
    allowed = dataset_vocabularies()
    if name not in allowed:
        raise ValueError(f"`classes` names the unknown dataset {name!r}; allowed: {allowed}.")
    if name == _SYNTHETIC:
        from ..synthetic.scenes import CLASS_NAMES

        return parse_classes(CLASS_NAMES)
    from ..datasets.classes import class_info

    return parse_classes(class_info(name)["names"])


def _file_classes(path: Path) -> Vocabulary:
    lines = path.read_text(encoding="utf-8").splitlines()
    items = [line.strip() for line in lines]
    items = [line for line in items if line and not line.startswith("#")]
    try:
        return parse_classes(items)
    except ValueError as e:
        raise ValueError(f"class file {str(path)!r}: {e}") from None


def _is_file(spec: str) -> bool:
    try:
        return Path(spec).expanduser().is_file()
    except (OSError, ValueError):  # a name too long for the OS, or with a NUL byte
        return False


def load_classes(spec: str) -> Vocabulary:
    """Read a class vocabulary as the CLI's ``--classes`` gives it.

    Args:
        spec: one of
            - ``"dataset:NAME"``: that dataset's class names (`dataset_vocabularies` lists the
              names; ``"dataset:synthetic"`` is the synthetic scenes' classes);
            - the path of an existing UTF-8 text file: one class per line, synonyms joined by
              '|'; blank lines and lines starting with '#' are skipped;
            - otherwise a comma-separated list, synonyms joined by '|' (see `parse_classes`).

    Returns:
        tuple of classes, each a tuple (display name, synonym, ...).

    Raises:
        ValueError: for an unknown dataset (listing the allowed names), or a list that
            `parse_classes` rejects.
    """
    if not isinstance(spec, str):
        raise ValueError(
            f"`classes` must be a string ('dataset:NAME', a file path or 'cat, dog'), got {type(spec).__name__}."
        )
    if spec.strip().lower().startswith(DATASET_PREFIX):
        return _dataset_classes(spec.strip()[len(DATASET_PREFIX) :].strip())
    if _is_file(spec):
        return _file_classes(Path(spec).expanduser())
    return parse_classes(spec)


def background_index(classes: Sequence[str | Sequence[str]]) -> int | None:
    """The index of the background class: the first class any of whose names is
    "background" (case-insensitive; VOC's class 0), or None when there is none.

    Args:
        classes: a vocabulary (tuples of names) or a list of display names.
    """
    for i, cls in enumerate(classes):
        names = (cls,) if isinstance(cls, str) else cls
        if any(str(n).strip().lower() == BACKGROUND for n in names):
            return i
    return None


def name_rows(classes: Vocabulary) -> list[tuple[int, str]]:
    """(class index, name) for every name, synonyms included, of every class except the
    background class (`background_index`), in class order: the names open-vocabulary methods
    look for (a class then scores the best of its names)."""
    bg = background_index(classes)
    return [(k, name) for k, names in enumerate(classes) if k != bg for name in names]
