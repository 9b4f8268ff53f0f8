"""The nouns of a caption, offline: class candidates for naming segments from a caption.

DiffSeg's reference tags the caption with NLTK (``word_tokenize`` + ``pos_tag``), which needs
NLTK's data files downloaded at run time. Captions from a captioner (BLIP) or a user are short
noun phrases joined by prepositions, conjunctions and a few verbs ("a cat sitting on a couch
next to a remote control"), so closed word lists do the job without any download: the caption is
cut into chunks of content words at determiners, numbers, prepositions, conjunctions, pronouns,
auxiliaries, common caption verbs and punctuation; leading adjectives (colours, patterns, sizes,
materials) are dropped; what is left (at most two words: "remote control", "traffic light") is a
noun. Forms of one noun (singular / plural, "cat" / "cats") are one class named by the singular,
with the forms that occur as synonyms, so each finds its own tokens in the caption. This is a heuristic: a verb that
is not on the list can end up as a noun; the result is logged.
"""

from __future__ import annotations

import logging
import re

from .vocabulary import Vocabulary

__all__ = ["caption_nouns", "singular"]

logger = logging.getLogger(__name__)

_DETERMINERS = set(
    "a an the this that these those some any each every his her its their our my your another other "
    "several many few both no all such much more most one two three four five six seven eight nine ten "
    "eleven twelve dozen couple pair lot lots group bunch".split()
)
_PREPOSITIONS = set(
    "on in at of with without under over above below behind beside besides between near by for from into "
    "onto through across along around against next to inside outside toward towards up down off out atop "
    "beneath among during like than about upon within underneath front top bottom side middle".split()
)
_CONJUNCTIONS = set("and or but while as that which who whose where when whom nor so then".split())
_PRONOUNS = set("it he she they them him we you i there here itself themselves something someone".split())
_AUX = set(
    "is are was were be been being has have had do does did can will would could should may might must "
    "not isn't aren't doesn't".split()
)
#: Verbs captions use, in the forms they take there.
_VERBS = set(
    "sit sits sat sitting stand stands stood standing lie lies lay lying laying hold holds holding "
    "walk walks walking run runs running ride rides riding eat eats eating play plays playing look looks "
    "looking fly flies flying hang hangs hanging rest rests resting wear wears wearing carry carries carrying "
    "park parked sleep sleeps sleeping swim swims swimming drive drives driving pull pulls pulling "
    "watch watches watching show shows showing cover covered covers filled full made shown seen taken "
    "surrounded topped stacked lined placed displayed perched".split()
)
_ADVERBS = set("very together outside inside nearby close far away back just also too there".split())
#: Adjectives captions put before nouns (dropped from the front of a noun phrase).
_ADJECTIVES = set(
    "red orange yellow green blue purple pink black white gray grey brown beige golden silver colorful "
    "colourful dark bright pale striped checkered dotted spotted plaid patterned plain "
    "big small large little tiny huge giant tall short long old young new wooden metal metallic glass plastic "
    "stone brick empty open closed clean dirty wet dry cute pretty beautiful nice round square-shaped "
    "sunny cloudy snowy grassy sandy busy quiet single double half whole".split()
)
_IRREGULAR = {
    "men": "man",
    "women": "woman",
    "people": "person",
    "children": "child",
    "mice": "mouse",
    "feet": "foot",
    "teeth": "tooth",
    "geese": "goose",
    "sheep": "sheep",
    "fish": "fish",
    "glasses": "glasses",
    "scissors": "scissors",
}
_STOP = _DETERMINERS | _PREPOSITIONS | _CONJUNCTIONS | _PRONOUNS | _AUX | _VERBS | _ADVERBS
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|[^\sA-Za-z]")


def singular(word: str) -> str:
    """A noun's singular by English spelling rules ("cats" -> "cat", "buses" -> "bus",
    "berries" -> "berry", "men" -> "man"); words that do not look plural are returned as given."""
    w = word.lower()
    if w in _IRREGULAR:
        return _IRREGULAR[w]
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith(("ches", "shes", "sses", "xes", "zes", "uses")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "ous")):
        return w[:-1]
    return w


def _chunks(caption: str) -> list[list[str]]:
    """Runs of content words, as written (case kept), split at closed-class words and punctuation."""
    chunks: list[list[str]] = [[]]
    previous = ""
    for tok in _WORD.findall(caption):
        low = tok.lower()
        after_determiner = previous in _DETERMINERS
        # "a building", "the painting": an -ing word right after a determiner is a noun
        verb_like = low in _VERBS and not (after_determiner and low.endswith("ing"))
        if not tok[0].isalpha() or (low in _STOP and not (after_determiner and low.endswith("ing"))) or verb_like:
            chunks.append([])
        elif low.endswith("ly") and len(low) > 4:
            chunks.append([])
        elif low.endswith("'s"):  # "a woman's umbrella": the owner is a noun of its own
            chunks[-1].append(tok[:-2])
            chunks.append([])
        else:
            chunks[-1].append(tok)
        previous = low
    return [c for c in chunks if c]


def _noun(chunk: list[str]) -> str | None:
    words = list(chunk)
    while len(words) > 1 and (
        words[0].lower() in _ADJECTIVES or (words[0].lower().endswith("ed") and len(words[0]) > 4)
    ):
        words.pop(0)
    if len(words) == 1 and words[0].lower() in _ADJECTIVES:  # "... is green"
        return None
    return " ".join(words[-2:])


def caption_nouns(caption: str | None) -> Vocabulary:
    """The caption's nouns as a vocabulary: one class per noun, in order of first mention, named
    by its singular (lower case) with the other forms it takes in the caption as synonyms.

    Examples:
        >>> caption_nouns("two cats and a cat on a red sofa next to a remote control")
        (('cat', 'cats'), ('sofa',), ('remote control',))
        >>> caption_nouns("People watch")
        (('person', 'People'),)

    Returns:
        () for a caption without nouns (or None).
    """
    if not caption:
        return ()
    forms: dict[str, list[str]] = {}
    for chunk in _chunks(caption):
        noun = _noun(chunk)
        if noun is None:
            continue
        *head, last = noun.split(" ")
        key = " ".join([*(w.lower() for w in head), singular(last)])
        seen = forms.setdefault(key, [])
        if noun not in seen:
            seen.append(noun)
    # the singular (the display name, whether or not the caption uses it), then the forms used
    out = [(key, *(n for n in names if n.lower() != key)) for key, names in forms.items()]
    logger.debug("nouns of %r: %s", caption, out)
    return tuple(out)
