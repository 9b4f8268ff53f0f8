"""Class vocabularies: parse the names a caller gives, load a dataset's or a file's, find the
background class.

A vocabulary is a tuple of classes, each a tuple ``(display name, synonym, ...)``; label id =
position. Strings use ``,`` between classes and ``|`` between synonyms: ``"cat, tv|monitor"``
-> ``(("cat",), ("tv", "monitor"))``.

This module imports nothing from the rest of the package at import time (``diffuseg.plan``
imports it); dataset class lists are read lazily.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

__all__ = [
    "BACKGROUND",
    "DATASET_PREFIX",
    "FILE_SUFFIXES",
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


#: What a class list (or a class) given as a collection must be, in error messages.
_SEQUENCE_HINT = (
    "a list or tuple of classes, each a string 'name|synonym' or a sequence of names (label id = position, "
    "so the order matters)"
)


def _is_sequence(value: Any) -> bool:
    """Whether `value` is an ordered collection of classes or names: not a string, bytes, a set
    (no order, and label id = position) or a mapping (its values would be lost)."""
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray, Mapping, AbstractSet))


def _class_names(item: Any) -> tuple[str, ...]:
    """One class given as ``"name|synonym"`` or an iterable of names -> stripped names.

    Raises:
        ValueError: naming `classes`, for a class that is neither, or a name that is not a string
            or holds a ',' or '|' (the separators of the string form).
    """
    if isinstance(item, str):
        names: Iterable[Any] = item.split("|")
    elif _is_sequence(item):
        names = list(item)
        for name in names:
            if not isinstance(name, str):
                raise ValueError(
                    f"`classes` has {name!r} ({type(name).__name__}) as a name of the class {item!r}; "
                    "names must be strings."
                )
            if "|" in name:
                raise ValueError(
                    f"`classes` has the name {name!r} in the class {item!r}; '|' joins synonyms in a string "
                    "class ('tv|monitor'): give each name of a sequence on its own."
                )
    else:
        raise ValueError(
            f"`classes` has {item!r} ({type(item).__name__}) as a class; give a class as a string "
            "'name|synonym' or a sequence of names (a list or tuple: the first name is the display name)."
        )
    out = tuple(n.strip() for n in names)
    for name in out:
        if "," in name:
            raise ValueError(
                f"`classes` has the class name {name!r}; ',' separates classes, so a name cannot hold one: "
                "give each class on its own (one per line in a class file), synonyms joined by '|'."
            )
    return out


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
            compared case-insensitively; when `classes` or a class is not a string or an ordered
            collection (an int, bytes, a set or a mapping), a name is not a string, or a name
            holds a ',' (or, given in a sequence, a '|'); the message names the offending value.
    """
    if isinstance(classes, Vocabulary):
        return classes  # parsed and checked already
    if classes is None or (isinstance(classes, tuple) and not classes):
        return Vocabulary()  # () is what None parses to, so re-parsing a parsed vocabulary is idempotent
    if not isinstance(classes, str) and not _is_sequence(classes):
        raise ValueError(
            f"`classes` must be None, a string ('cat, tv|monitor') or {_SEQUENCE_HINT}; "
            f"got {classes!r} ({type(classes).__name__})."
        )
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


#: Endings that make a ``--classes`` value a file name (`load_classes`): never a class name.
FILE_SUFFIXES = (".txt", ".text", ".csv", ".tsv", ".json", ".jsonl", ".lst", ".list", ".names", ".yaml", ".yml")

#: The path separators of this system ('/' everywhere; '\\' too on Windows).
_SEPARATORS = tuple(sep for sep in {"/", os.sep, os.altsep} if sep)


def _file_classes(path: Path) -> Vocabulary:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = "it is not UTF-8 text" if isinstance(e, UnicodeDecodeError) else (e.strerror or str(e))
        raise ValueError(
            f"`classes` names the class file {str(path)!r}, which cannot be read: {reason}; give a UTF-8 "
            "text file with one class per line."
        ) from None
    items = [line.strip() for line in lines]
    items = [line for line in items if line and not line.startswith("#")]
    try:
        return parse_classes(items)
    except ValueError as e:
        raise ValueError(f"class file {str(path)!r}: {e}") from None


def _path_kind(spec: str) -> str | None:
    """What `spec` is on disk: "file", "dir", or None (nothing, or a name the OS refuses)."""
    try:
        path = Path(spec).expanduser()
        return "file" if path.is_file() else "dir" if path.is_dir() else None
    except (OSError, ValueError):  # a name too long for the OS, or with a NUL byte
        return None


def _path_look(spec: str) -> str | None:
    """Why `spec` reads as a file path rather than class names, or None: it ends in a file
    suffix (`FILE_SUFFIXES`), or it is one class (no ',' or '|') and holds a path separator or
    starts with '~'."""
    text = spec.strip()
    suffix = next((x for x in FILE_SUFFIXES if text.lower().endswith(x)), None)
    if suffix:
        return f"it ends in {suffix!r}"
    if "," in text or "|" in text:
        return None
    sep = next((x for x in _SEPARATORS if x in text), None)
    if sep:
        return f"it holds the path separator {sep!r}"
    return "it starts with '~'" if text.startswith("~") else None


def load_classes(spec: str) -> Vocabulary:
    """Read a class vocabulary as the CLI's ``--classes`` gives it.

    Args:
        spec: one of
            - ``"dataset:NAME"``: that dataset's class names (`dataset_vocabularies` lists the
              names; ``"dataset:synthetic"`` is the synthetic scenes' classes);
            - the path of an existing UTF-8 text file: one class per line, synonyms joined by
              '|'; blank lines and lines starting with '#' are skipped;
            - otherwise a comma-separated list, synonyms joined by '|' (see `parse_classes`).

            A value that is not an existing file but reads as a path is refused, never taken
            as a class name: one that ends in a file suffix (`FILE_SUFFIXES`: ``.txt``,
            ``.csv``, ``.json``, ``.lst``, ``.names``, ...), or a single class (no ',' or
            '|') that holds a path separator or starts with '~' (``classes/voc.txt``,
            ``tv/monitor``, ``~/mine``). A class name with a '/' is given among other classes
            (``"cat, tv/monitor"``), with a synonym (``"tv/monitor|tv"``) or in a class file.
            An existing directory is refused when the value reads as a path; a bare word that
            happens to name a directory (``cat``) is a class name.

    Returns:
        tuple of classes, each a tuple (display name, synonym, ...).

    Raises:
        ValueError: naming `classes`: an unknown dataset (listing the allowed names), a
            missing file or directory given as a path, a class file that cannot be read, or a
            list that `parse_classes` rejects.
    """
    if not isinstance(spec, str):
        raise ValueError(
            f"`classes` must be a string ('dataset:NAME', a file path or 'cat, dog'), got {type(spec).__name__}."
        )
    if spec.strip().lower().startswith(DATASET_PREFIX):
        return _dataset_classes(spec.strip()[len(DATASET_PREFIX) :].strip())
    kind, look = _path_kind(spec), _path_look(spec)
    if kind == "file":
        return _file_classes(Path(spec).expanduser())
    if look is None:
        return parse_classes(spec)
    found = "it is a directory, not a class file" if kind == "dir" else "no such file exists"
    allowed = "give an existing class file (one class per line), class names ('cat, tv|monitor') or 'dataset:NAME'"
    if "separator" in look and kind != "dir":
        allowed += (
            "; a class name with a '/' goes among other classes ('cat, tv/monitor'), with a synonym "
            "('tv/monitor|tv') or in a class file"
        )
    raise ValueError(f"`classes` {spec!r} reads as a file path ({look}) but {found}; {allowed}.")


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
