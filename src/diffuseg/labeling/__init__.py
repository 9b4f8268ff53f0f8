"""Class vocabularies and the token spans of class names in prompts.

Example:
    >>> from diffuseg.labeling import load_classes, token_spans
    >>> classes = load_classes("cat, tv|monitor")
    >>> ids = tokenizer("a photograph of a cat").input_ids
    >>> token_spans(tokenizer, ids, ["cat"])
    [[5]]
"""

from .spans import (
    PLACEHOLDER,
    check_template,
    class_prompt,
    fill_template,
    find_spans,
    joined_prompt,
    name_ids,
    token_budget,
    token_spans,
)
from .vocabulary import (
    BACKGROUND,
    DATASET_PREFIX,
    Vocabulary,
    background_index,
    dataset_vocabularies,
    load_classes,
    name_rows,
    parse_classes,
)

__all__ = [
    "BACKGROUND",
    "DATASET_PREFIX",
    "PLACEHOLDER",
    "Vocabulary",
    "background_index",
    "name_rows",
    "check_template",
    "class_prompt",
    "dataset_vocabularies",
    "fill_template",
    "find_spans",
    "joined_prompt",
    "load_classes",
    "name_ids",
    "parse_classes",
    "token_budget",
    "token_spans",
]
