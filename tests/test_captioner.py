"""The BLIP captioner resource, on a tiny seeded BLIP built from configs (offline)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffuseg.backbone.loading import ModelNotFoundError
from diffuseg.labeling.captioner import BlipCaptioner, NotACaptionerError, load_captioner

#: BERT-style vocabulary; [DEC] plays BLIP's BOS (id 30522 in the real model).
VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]",
    "a", "photograph", "photography", "of", "cat", "sofa", "on", "the", "sitting", "dog", "and", "in",
    "##s", "-", "t", "shirt", ",", "potted", "plant",
]  # fmt: skip
PAD, SEP, BOS = 0, 3, 5


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    """A tiny BLIP captioning model and its processor, saved as save_pretrained writes them."""
    from transformers import (
        BertTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    directory = tmp_path_factory.mktemp("blip")
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizer.from_pretrained(str(directory), bos_token="[DEC]")
    assert tokenizer.bos_token_id == BOS and tokenizer.sep_token_id == SEP and tokenizer.pad_token_id == PAD
    (directory / "vocab.txt").unlink()  # the processor writes its own tokenizer files
    text = dict(
        vocab_size=len(VOCAB),
        hidden_size=32,
        encoder_hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        # generate(): column 0 becomes bos_token_id, generation stops at sep_token_id and pads with pad_token_id.
        bos_token_id=BOS,
        pad_token_id=PAD,
        sep_token_id=SEP,
        eos_token_id=SEP,
    )
    vision = dict(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32))
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def captioner(blip_dir):
    return load_captioner(str(blip_dir), "cpu", None, max_new_tokens=5)  # short captions keep the tests fast


@pytest.fixture(scope="module")
def image():
    return Image.fromarray((np.random.RandomState(0).rand(40, 48, 3) * 255).astype(np.uint8))


def _generated(captioner, monkeypatch):
    """Record the id sequences the model's generate() returns."""
    calls: list[list[list[int]]] = []
    generate = captioner.model.generate

    def spy(*args, **kwargs):
        out = generate(*args, **kwargs)
        calls.append(out.tolist())
        return out

    monkeypatch.setattr(captioner.model, "generate", spy)
    return calls


def test_signature_matches_resource_load():
    params = list(inspect.signature(load_captioner).parameters)
    assert params[:3] == ["value", "device", "dtype"]


def test_round_trip_and_prefix(captioner, image, monkeypatch):
    assert isinstance(captioner, BlipCaptioner) and captioner.max_new_tokens == 5
    assert BlipCaptioner(captioner.model, captioner.processor).max_new_tokens == 30
    assert captioner.dtype == torch.float32 and captioner.device.type == "cpu"
    calls = _generated(captioner, monkeypatch)
    prefix = "a photograph of cat"
    text = captioner(image, prefix)
    assert isinstance(text, str) and text.startswith(prefix) and len(text) > len(prefix)
    # The invariant under the text: BLIP returns BOS, the prefix's ids, then the continuation.
    prefix_ids = captioner.processor.tokenizer(prefix, add_special_tokens=False).input_ids
    (seq,) = calls[0]
    assert seq[0] == BOS and seq[1 : 1 + len(prefix_ids)] == prefix_ids
    assert len(seq) <= 1 + len(prefix_ids) + captioner.max_new_tokens


def test_decoded_prefix_is_uncased_and_spaced(blip_dir, captioner, image):
    raw = BlipCaptioner(captioner.model, captioner.processor, max_new_tokens=5, keep_prefix=False)
    assert raw(image, "a photograph of T-shirt").startswith("a photograph of t - shirt")
    kept = captioner(image, "a photograph of T-shirt")
    assert kept.startswith("a photograph of T-shirt")
    assert (
        kept[len("a photograph of T-shirt") :]
        == raw(image, "a photograph of T-shirt")[len("a photograph of t - shirt") :]
    )


def test_deterministic_and_unconditional(captioner, image):
    assert captioner(image, "a photograph of sofa") == captioner(image, "a photograph of sofa")
    assert captioner(image) == captioner(image, "")
    assert isinstance(captioner(image), str)


def test_caption_many_equals_one_by_one(captioner, image, monkeypatch):
    prefixes = [
        "a photograph of cat",
        "a photograph of potted plant",
        "a photograph of dog",
        "a photography of t-shirt",
    ]
    one_by_one = [captioner(image, p) for p in prefixes]
    calls = _generated(captioner, monkeypatch)
    assert captioner.caption_many(image, prefixes) == one_by_one
    assert len(calls) == 3  # prefix lengths 4, 5, 4, 6 tokens: one generate call per length
    assert captioner.caption_many(image, []) == []
    with pytest.raises(TypeError, match="sequence"):
        captioner.caption_many(image, "a photograph of cat")


def test_max_new_tokens(captioner, image):
    short = BlipCaptioner(captioner.model, captioner.processor, max_new_tokens=2)
    assert len(short.processor.tokenizer(short(image, "a photograph of cat"), add_special_tokens=False).input_ids) <= 6
    with pytest.raises(ValueError, match="max_new_tokens"):
        BlipCaptioner(captioner.model, captioner.processor, max_new_tokens=0)


def test_low_precision(blip_dir, image):
    half = load_captioner(str(blip_dir), torch.device("cpu"), torch.bfloat16, max_new_tokens=5)
    assert half.dtype == torch.bfloat16
    assert half(image, "a photograph of cat").startswith("a photograph of cat")


def test_missing_folder(tmp_path):
    value = str(tmp_path / "no-such-blip")
    with pytest.raises(ModelNotFoundError, match="captioner") as info:
        load_captioner(value, "cpu", None)
    assert value in str(info.value) and "Salesforce/blip-image-captioning-large" in str(info.value)


def test_uncached_hub_id_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="nobody/no-such-blip.*offline"):
        load_captioner("nobody/no-such-blip", "cpu", None)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "no config.json"),
        ({"model_type": "clip"}, "model_type 'clip'"),
        ({"model_type": "blip", "architectures": ["BlipForQuestionAnswering"]}, "BlipForQuestionAnswering"),
        ({"model_type": "blip", "architectures": ["BlipForConditionalGeneration"]}, "cannot be loaded"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_not_a_captioner(tmp_path, config, expected):
    folder = tmp_path / "other"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(NotACaptionerError, match="captioner") as info:
        load_captioner(str(folder), "cpu", None)
    message = str(info.value)
    assert str(folder) in message and expected in message and "blip-image-captioning-large" in message


def test_file_is_not_a_captioner(tmp_path):
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    with pytest.raises(ValueError, match="not a folder"):
        load_captioner(str(file), "cpu", None)


def test_diffsegmenter_loads_the_captioner_resource_from_a_folder(blip_dir, tiny_backbone, quadrant_image):
    """`--resource captioner=FOLDER`: the Segmenter loads BLIP once and each class prompt is the
    caption continuing ``template(class)``."""
    from diffuseg.plan import Query
    from diffuseg.segmenter import Segmenter

    seen = []
    extract = tiny_backbone.extract

    def spy(pixels, request, prompts, *args, **kwargs):
        seen.append(list(prompts))
        return extract(pixels, request, prompts, *args, **kwargs)

    tiny_backbone.extract = spy
    seg = Segmenter(tiny_backbone, "diffsegmenter", template="{class}", resources={"captioner": str(blip_dir)})
    assert isinstance(seg.resources["captioner"], BlipCaptioner)
    out = seg(Query(image=quadrant_image, classes="cat, sofa"), torch.Generator().manual_seed(0))
    assert out.names == ["cat", "sofa"]
    assert [p.split()[0].rstrip(",") for p in seen[0]] == ["cat", "sofa"]  # each prompt starts with its class


def test_diffseg_names_segments_from_a_blip_caption_through_the_cli(
    blip_dir, tiny_model_dir, photo, tmp_path, monkeypatch
):
    """--label caption with --captioner: BLIP captions the image, its nouns name the segments;
    the captioner is loaded once (on --label-device)."""
    from diffuseg.cli import main
    from diffuseg.labeling import captioner as module

    loads = []
    real = module.load_captioner
    monkeypatch.setattr(module, "load_captioner", lambda *a, **k: loads.append(a) or real(*a, **k))
    argv = ["segment", photo, "--model", str(tiny_model_dir), "--method", "diffseg", "--label", "caption",
            "--captioner", str(blip_dir), "--label-device", "cpu", "--size", "32", "--no-progress",
            "--out", str(tmp_path / "a")]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((tmp_path / "a" / "photo.json").read_text())
    assert record["config"]["label"] == "caption"
    assert len(loads) == 1 and loads[0][1] == "cpu"
