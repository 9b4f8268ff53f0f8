"""Class vocabularies and token spans, with the real CLIP BPE vocabulary."""

from __future__ import annotations

import logging

import pytest

from diffuseg.labeling import (
    BACKGROUND,
    background_index,
    check_template,
    class_prompt,
    dataset_vocabularies,
    fill_template,
    find_spans,
    joined_prompt,
    load_classes,
    name_ids,
    parse_classes,
    token_budget,
    token_spans,
)

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tok():
    from diffuseg.synthetic.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer()


def _tokens(tok, ids):
    return tok.convert_ids_to_tokens(list(ids))


def _span_of(tok, prompt, names):
    ids = tok(prompt).input_ids  # with BOS/EOS, as the text encoder sees them
    return ids, token_spans(tok, ids, names)


# ----------------------------------------------------------------------------- spans
@pytest.mark.parametrize("name", ["traffic light", "potted plant", "diningtable", "tvmonitor", "pottedplant"])
def test_multi_token_names(tok, name):
    ids, (span,) = _span_of(tok, f"a photograph of a {name} in the street", [name])
    assert len(span) > 1 and span == list(range(span[0], span[0] + len(span)))
    assert [ids[i] for i in span] == name_ids(tok, name)
    assert tok.decode([ids[i] for i in span]) == name


def test_name_ids_follow_tokens_added_to_the_tokenizer():
    """Names are tokenized once per tokenizer (memo), but a token added since (textual
    inversion) changes their ids."""
    from diffuseg.synthetic.tokenizer import build_clip_tokenizer

    tok = build_clip_tokenizer()
    before = name_ids(tok, "a zzqxv cat")
    assert name_ids(tok, "a zzqxv cat") == before
    tok.add_tokens(["zzqxv"])
    after = name_ids(tok, "a zzqxv cat")
    assert after != before and len(tok) - 1 in after


def test_bpe_splits_single_words(tok):
    assert _tokens(tok, name_ids(tok, "diningtable")) == ["din", "ing", "table</w>"]
    assert _tokens(tok, name_ids(tok, "tvmonitor")) == ["tv", "monitor</w>"]
    assert _tokens(tok, name_ids(tok, "traffic light")) == ["traffic</w>", "light</w>"]


def test_name_ids_alone_equal_ids_in_prompt(tok):
    """CLIP lowercases and splits words before BPE: a name's ids are the same in context."""
    prompt = "A Traffic Light, a diningtable; café crème brûlée and 日本 (tv/monitor)."
    ids = tok(prompt, add_special_tokens=False).input_ids
    for name in ["traffic light", "diningtable", "café", "crème brûlée", "日本", "tv/monitor"]:
        sub = name_ids(tok, name)
        assert any(ids[i : i + len(sub)] == sub for i in range(len(ids))), name


def test_repeated_word_gets_all_positions(tok):
    ids, (span,) = _span_of(tok, "a photograph of cat, a cat on a sofa", ["cat"])
    # BOS a photograph of cat , a cat on a sofa EOS
    assert span == [4, 7]
    assert all(_tokens(tok, [ids[i]]) == ["cat</w>"] for i in span)


def test_longer_name_claims_its_tokens(tok):
    ids, (cat, cat_food) = _span_of(tok, "a cat food bowl next to a cat", ["cat", "cat food"])
    assert cat_food == [2, 3] and cat == [8]
    assert find_spans([1, 2, 3, 1, 2], [[1, 2], [2], [1, 2, 3]]) == [[3, 4], [], [0, 1, 2]]
    assert find_spans([5, 5], [[5], [5], []]) == [[0, 1], [0, 1], []]  # equal names share positions


def test_no_match_inside_a_longer_word(tok):
    """ "table" is the last BPE token of "diningtable" but not a word there."""
    ids, (span,) = _span_of(tok, "a diningtable and a table", ["table"])
    assert span == [7]
    with pytest.raises(ValueError, match=r"\['table'\].*truncated"):
        _span_of(tok, "a photograph of a diningtable", ["table"])


def test_punctuation(tok):
    # "cat." is "cat</w>" ".</w>", so the class "cat" matches a caption's "cat."
    assert _tokens(tok, name_ids(tok, "cat.")) == ["cat</w>", ".</w>"]
    ids, (span,) = _span_of(tok, "there is a cat.", ["cat"])
    assert _tokens(tok, [ids[i] for i in span]) == ["cat</w>"]
    # "tv/monitor" is three words: tv / monitor
    assert _tokens(tok, name_ids(tok, "tv/monitor")) == ["tv</w>", "/</w>", "monitor</w>"]
    ids, (span, tv) = _span_of(tok, "a tv/monitor. and a tv", ["tv/monitor", "tv"])
    assert span == [2, 3, 4] and tv == [8]  # BOS a tv / monitor . and a tv
    # a punctuation run is one token: "cat.." holds "..</w>", so the name "cat." does not match
    assert find_spans(tok("cat..").input_ids, [name_ids(tok, "cat.")]) == [[]]


def test_non_ascii_and_case(tok):
    assert _tokens(tok, name_ids(tok, "café")) == ["cafÃ©</w>"]  # byte-level BPE symbols
    assert len(name_ids(tok, "日本")) == 3  # bytes of two CJK characters
    ids, spans = _span_of(tok, "Crème Brûlée at a CAFÉ in 日本", ["crème brûlée", "café", "日本"])
    for name, span in zip(["crème brûlée", "café", "日本"], spans, strict=True):
        assert tok.decode([ids[i] for i in span]) == name
    assert name_ids(tok, "Cat") == name_ids(tok, "CAT") == name_ids(tok, "cat")
    _, (span,) = _span_of(tok, "a photo of a cat", ["Cat"])
    assert span == [5]
    # a CJK run is one word: "日本" does not match inside "日本語"
    assert find_spans(tok("日本語").input_ids, [name_ids(tok, "日本")]) == [[]]


def test_span_errors(tok):
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        name_ids(tok, "  ")
    with pytest.raises(ValueError, match=r"\['dog'\].*75-token budget"):
        _span_of(tok, "a photo of a cat", ["cat", "dog"])


# ----------------------------------------------------------------------------- prompts
def test_templates():
    assert check_template("a photo of a {class}") == "a photo of a {class}"
    assert fill_template("{x} {class} {}", "cat") == "{x} cat {}"
    for bad in ["a photo", "a {class} and a {class}", "a {Class}"]:
        with pytest.raises(ValueError, match="`template`"):
            check_template(bad)


def test_prompt_budget(tok, caplog):
    assert token_budget(tok) == 75
    assert class_prompt(tok, "a photo of a {class}", "cat") == "a photo of a cat"
    assert class_prompt(tok, "a photo of a {class}", "cat", "on a sofa") == "a photo of a cat, on a sofa"
    with pytest.raises(ValueError, match=r"takes 76 tokens; the text encoder's budget is 75"):
        class_prompt(tok, "a photo of a {class}" + " cat" * 71, "cat")
    caption = " ".join(f"word{i}" for i in range(60))  # "word" "1", "word" "1" "0": 170 tokens
    with caplog.at_level(logging.WARNING, logger="diffuseg.labeling.spans"):
        prompt = class_prompt(tok, "a photo of a {class}", "cat", caption)
    assert "caption was cut to 69 of its 170 tokens" in caplog.text
    head = "a photo of a cat, "
    assert prompt.startswith(head + "word0 word1") and caption.startswith(prompt[len(head) :])
    assert len(tok(prompt, add_special_tokens=False).input_ids) == 75
    ids = tok(prompt, truncation=True, max_length=77).input_ids
    assert token_spans(tok, ids, ["cat"]) == [[5]]


def test_joined_prompt(tok):
    names = ["cat", "traffic light", "crème brûlée"]
    prompt = joined_prompt(tok, "a photograph of {class}", names)
    assert prompt == "a photograph of cat and traffic light and crème brûlée"
    ids = tok(prompt).input_ids
    spans = token_spans(tok, ids, names)
    assert [tok.decode([ids[i] for i in s]) for s in spans] == names
    long_names = [f"very long class name number {i} with extra words" for i in range(30)]  # 9 tokens each
    with pytest.raises(ValueError, match=r"75-token budget: 7 of the 30 classes fit"):
        joined_prompt(tok, "a photograph of {class}", long_names)
    n_fit = len(tok("a photograph of " + " and ".join(long_names[:7]), add_special_tokens=False).input_ids)
    n_over = len(tok("a photograph of " + " and ".join(long_names[:8]), add_special_tokens=False).input_ids)
    assert (n_fit, n_over) == (72, 82)
    with pytest.raises(ValueError, match="`names`"):
        joined_prompt(tok, "a photograph of {class}", [])


# ----------------------------------------------------------------------------- vocabularies
def test_parse_classes():
    assert parse_classes("cat, tv|monitor") == (("cat",), ("tv", "monitor"))
    assert parse_classes(["café", ("日本", "Japan")]) == (("café",), ("日本", "Japan"))
    assert parse_classes(None) == parse_classes(()) == ()  # () = parsed "no classes": idempotent
    assert parse_classes(parse_classes("a, b|c")) == (("a",), ("b", "c"))


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        ("", "`classes` is empty"),
        (" , ", "`classes` is empty"),
        ([], "`classes` is empty"),
        ("cat, dog, Cat", r"lists \['cat'\] more than once"),
        ("cat|kitty, dog|Kitty", r"lists \['kitty'\] more than once"),
        ("cat|cat", r"lists \['cat'\] more than once"),
        ("cat, dog, cat, dog", r"lists \['cat', 'dog'\] more than once"),
        ("cat, !!!", "'!!!', which has no letter or digit"),
        ("cat|--", "'--', which has no letter or digit"),
        ("cat, ", "empty class name"),
        ("cat, a||b", "empty class name"),
    ],
)
def test_parse_classes_errors(classes, match):
    with pytest.raises(ValueError, match=match):
        parse_classes(classes)


def test_load_dataset_classes():
    voc = load_classes("dataset:voc21")
    assert len(voc) == 21 and voc[0] == (BACKGROUND,) and voc[20] == ("tvmonitor",)
    assert background_index(voc) == 0
    synthetic = load_classes("dataset:synthetic")
    assert len(synthetic) == 11 and background_index(synthetic) is None
    for name in dataset_vocabularies():  # every shipped list parses (no duplicates, no empty names)
        assert load_classes(f"dataset:{name}")
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'; allowed: \[.*'voc21'"):
        load_classes("dataset:nope")


def test_load_classes_file_and_string(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# my classes\n\ncat | kitty\n  crème brûlée  \n# end\ntv/monitor|screen\n", encoding="utf-8")
    assert load_classes(str(path)) == (("cat", "kitty"), ("crème brûlée",), ("tv/monitor", "screen"))
    path.write_text("cat\nKitty|cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"classes.txt.*\['cat'\] more than once"):
        load_classes(str(path))
    path.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty"):
        load_classes(str(path))
    assert load_classes("cat, dog|puppy") == (("cat",), ("dog", "puppy"))
    # a missing file is an error naming it, not one class named after the path
    with pytest.raises(ValueError, match=r"`classes` '.*missing.txt' reads as a file path .* no such file exists"):
        load_classes(str(tmp_path / "missing.txt"))


def test_background_index():
    assert background_index([("sky",), ("Background", "bg")]) == 1
    assert background_index(["cat", "bg|background"]) is None  # a raw string is one name
    assert background_index(parse_classes("cat, bg|BACKGROUND")) == 1
    assert background_index(()) is None
