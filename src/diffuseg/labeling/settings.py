"""The naming settings of method configs (`label`, `voting`, `label_template`): torch-free."""

from __future__ import annotations

from ..settings import VOTINGS, check_choice
from .spans import check_template

__all__ = ["FILTERS", "LABELS", "check_naming"]

#: How an unsupervised method names its segments: "none" (segment ids, the papers'),
#: "classes" (the query's class names, by cross-attention), "caption" (the nouns of the caption,
#: by cross-attention) or "clip" (the query's class names, by dense CLIP features: DiffCut's recipe).
LABELS = ("none", "classes", "caption", "clip")

#: The class filters (`--filter`); ``none`` keeps the query's classes as given.
FILTERS = ("none", "diffusion", "clip", "caption-clip")


def check_naming(label: str, voting: str, template: str) -> None:
    """Validate the naming settings of a method config (`label`, `voting`, `label_template`)."""
    check_choice(label, LABELS, "label")
    check_choice(voting, VOTINGS, "voting")
    check_template(template)
