"""Caption nouns offline: noun phrases, adjectives dropped, plural and singular merged, compound
nouns kept, and the token spans of every form in the caption."""

from __future__ import annotations

import pytest

from diffuseg.labeling.nouns import caption_nouns, singular


@pytest.mark.parametrize(
    ("caption", "nouns"),
    [
        ("a striped orange circle and a striped green star in the sky", (("circle",), ("star",), ("sky",))),
        (
            "an orange square, a striped black heart and a checkered red star on grass",
            (("square",), ("heart",), ("star",), ("grass",)),
        ),
        ("a cat sitting on a couch next to a remote control", (("cat",), ("couch",), ("remote control",))),
        ("two cats and a cat on a red sofa", (("cat", "cats"), ("sofa",))),
        ("a dog runs on the beach while people watch", (("dog",), ("beach",), ("person", "people"))),
        ("Two Dogs", (("dog", "Dogs"),)),
        ("a man standing in front of a building", (("man",), ("building",))),
        ("the traffic light is green", (("traffic light",),)),
        ("a woman's umbrella", (("woman",), ("umbrella",))),
        ("", ()),
        ("very quickly and then", ()),
    ],
)
def test_caption_nouns(caption, nouns):
    assert caption_nouns(caption) == nouns


def test_singular():
    assert [singular(w) for w in ("cats", "buses", "berries", "men", "glass", "boxes", "bus", "sky")] == [
        "cat", "bus", "berry", "man", "glass", "box", "bus", "sky",
    ]  # fmt: skip


def test_every_form_of_a_noun_finds_its_tokens_with_the_clip_tokenizer():
    """Plural and singular, a repeated noun and a multi-token noun, with the real CLIP BPE."""
    pytest.importorskip("transformers")
    from diffuseg.labeling.spans import token_spans
    from diffuseg.labeling.vocabulary import name_rows
    from diffuseg.synthetic.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    caption = "a cat and two cats near a diningtable, and another cat by the traffic light"
    nouns = caption_nouns(caption)
    assert nouns == (("cat", "cats"), ("diningtable",), ("traffic light",))
    ids = tok(caption).input_ids
    rows = name_rows(nouns)
    spans = dict(zip([n for _, n in rows], token_spans(tok, ids, [n for _, n in rows]), strict=True))
    tokens = tok.convert_ids_to_tokens(ids)
    assert [tokens[i] for i in spans["cat"]] == ["cat</w>", "cat</w>"]  # both mentions of "cat"
    assert [tokens[i] for i in spans["cats"]] == ["cats</w>"]
    assert tok.decode([ids[i] for i in spans["diningtable"]]) == "diningtable" and len(spans["diningtable"]) > 1
    assert tok.decode([ids[i] for i in spans["traffic light"]]) == "traffic light"
