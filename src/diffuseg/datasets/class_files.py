"""Class-name files with synonyms, as the training-free open-vocabulary (OVSS) papers use them.

SCLIP, ClearCLIP, ProxyCLIP and Trident read the names their CLIP queries for each benchmark
from a ``configs/cls_<dataset>.txt`` file: one class per line, in the dataset's label order,
the names of a class separated by commas (SCLIP: ``person, person in shirt, ...``) or by
semicolons (ProxyCLIP's background line ``sky; wall; tree; ...``). Each name is queried; a class
scores the best of its names (SCLIP ``clip_segmentor.py`` ``postprocess_result``: the max over a
class's names of the softmaxed logits, then the argmax over classes). The methods of this
package score a `diffuseg.plan.Query` class the same way (the max over its names), so a file
becomes the query's classes as it is: ``(display name, synonym, ...)`` per line, the first name
being the display name.

The package ships the eight files of SCLIP's configs (``diffuseg/data/ovss_names``, see its
README for the source and commit); `ovss_class_names` reads them, `read_class_names_file` reads
any such file (``diffuseg eval --class-names FILE``).
"""

from __future__ import annotations

import logging
import os
import re
from importlib import resources
from pathlib import Path

__all__ = ["OVSS_NAME_FILES", "ovss_class_names", "parse_class_names", "read_class_names_file"]

logger = logging.getLogger(__name__)

#: The class-name files shipped in ``diffuseg/data/ovss_names`` (``cls_<name>.txt``): SCLIP's names.
OVSS_NAME_FILES = (
    "voc21",
    "context60",
    "coco_object",
    "voc20",
    "context59",
    "coco_stuff",
    "city_scapes",
    "ade20k",
)

_SEPARATOR = re.compile(r"[,;]")


def parse_class_names(text: str, source: str = "<text>") -> tuple[tuple[str, ...], ...]:
    """Parse the text of a class-name file: one class per line, its names separated by ',' or ';'.

    A name listed in two classes stays with the class whose display name (first name) it is and
    is dropped from the other, with a warning: SCLIP's ``cls_coco_object.txt`` lists ``bed``
    among the background's names and as class 60; there both get identical logits and the
    argmax's tie goes to the background, so class 60 could never win.

    Args:
        text: the file's text (a final newline is optional).
        source: the file's name, for messages.

    Returns:
        one tuple ``(display name, synonym, ...)`` of stripped names per line, in line order
        (label id = line number - 1).

    Raises:
        ValueError: naming `source` and the line number: an empty line (also one of blanks or
            separators only) or an empty name, a duplicate class (two lines with the same
            display name, compared case-insensitively), a name listed twice in one line, or a
            synonym listed in two classes neither of which it names; or a file without classes.
    """
    lines = text.splitlines()
    if not lines:
        raise ValueError(f"class-name file {source}: it holds no classes; give one class per line.")
    classes: list[list[str]] = []
    first_line: dict[str, int] = {}  # display name (lower case) -> line number
    for number, line in enumerate(lines, start=1):
        names = [n.strip() for n in _SEPARATOR.split(line)]
        if not any(names):
            raise ValueError(f"class-name file {source}: line {number} is empty; give one class per line.")
        if not all(names):
            raise ValueError(f"class-name file {source}: line {number} ({line!r}) has an empty name.")
        keys = [n.lower() for n in names]
        if len(set(keys)) != len(keys):
            raise ValueError(f"class-name file {source}: line {number} lists a name twice ({line!r}).")
        if keys[0] in first_line:
            raise ValueError(
                f"class-name file {source}: line {number} repeats the class {names[0]!r} of line "
                f"{first_line[keys[0]]}; each class takes one line."
            )
        first_line[keys[0]] = number
        classes.append(names)
    return tuple(_resolve_shared(classes, first_line, source))


def _resolve_shared(classes: list[list[str]], display: dict[str, int], source: str) -> list[tuple[str, ...]]:
    """Drop a synonym that is another class's display name; refuse one shared by two classes
    that both list it as a synonym only."""
    owner: dict[str, int] = {}  # synonym (lower case) -> line number of its first class
    out = []
    for number, names in enumerate(classes, start=1):
        kept = [names[0]]
        for name in names[1:]:
            key = name.lower()
            if key in display:
                logger.warning(
                    "class-name file %s: %r of line %d is the class of line %d; it is kept there only",
                    source, name, number, display[key],
                )  # fmt: skip
                continue
            if key in owner:
                raise ValueError(
                    f"class-name file {source}: the name {name!r} is listed in line {owner[key]} and line "
                    f"{number}; a name belongs to one class."
                )
            owner[key] = number
            kept.append(name)
        out.append(tuple(kept))
    return out


def read_class_names_file(path: str | os.PathLike) -> tuple[tuple[str, ...], ...]:
    """Read a class-name file (`parse_class_names`) from `path` (UTF-8 text).

    Raises:
        ValueError: naming `class_names` when the file cannot be read, or what
            `parse_class_names` raises (naming the file and line).
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = "it is not UTF-8 text" if isinstance(e, UnicodeDecodeError) else (e.strerror or str(e))
        raise ValueError(
            f"`class_names` file {str(path)!r} cannot be read: {reason}; give a UTF-8 text file with one "
            "class per line, its names separated by ','."
        ) from None
    return parse_class_names(text, str(path))


def ovss_class_names(name: str) -> tuple[tuple[str, ...], ...]:
    """The shipped class-name file ``cls_<name>.txt`` (SCLIP's names), parsed.

    Raises:
        ValueError: naming `name` if it is not one of `OVSS_NAME_FILES`.
    """
    if name not in OVSS_NAME_FILES:
        raise ValueError(f"unknown class-name file `name` {name!r}; choose one of {OVSS_NAME_FILES}.")
    ref = resources.files("diffuseg").joinpath("data", "ovss_names", f"cls_{name}.txt")
    return parse_class_names(ref.read_text(encoding="utf-8"), f"diffuseg/data/ovss_names/cls_{name}.txt")
