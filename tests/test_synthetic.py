"""Synthetic scenes, the dataset adapter and the offline CLIP tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from diffuseg.datasets import Sample, SegmentationDataset
from diffuseg.synthetic.dataset import SyntheticScenes, scene_rng
from diffuseg.synthetic.scenes import (
    BACKGROUND_NAMES,
    CLASS_NAMES,
    COLOURS,
    OBJECT_NAMES,
    SceneConfig,
    render_scene,
)


def test_scene_shapes_dtypes_and_label_range():
    scene = render_scene(SceneConfig(size=96), rng=3)
    assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
    assert scene.label.shape == (96, 96) and scene.label.dtype == np.int64
    assert scene.label.min() >= 0 and scene.label.max() < len(CLASS_NAMES)


def test_scene_is_deterministic_by_seed():
    a, b, c = render_scene(rng=7), render_scene(rng=7), render_scene(rng=8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert a.caption == b.caption
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(12))
def test_caption_names_exactly_the_classes_in_the_label_map(seed):
    scene = render_scene(rng=seed)
    present = {CLASS_NAMES[i] for i in np.unique(scene.label)}
    words = set(scene.caption.replace(",", " ").split())
    assert {o.name for o in scene.objects} == present & set(OBJECT_NAMES)
    assert present & set(OBJECT_NAMES) <= words
    for bg in scene.backgrounds:
        assert bg in words and bg in present
    for obj in scene.objects:
        assert obj.colour in words and obj.colour in COLOURS


def test_colour_alone_does_not_separate_classes():
    # Across scenes, object colours cover the background colours' hues (green on grass...).
    colours = {o.colour for s in range(40) for o in render_scene(rng=s).objects}
    assert {"green", "blue", "yellow", "white"} <= colours


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": 8}, "size"),
        ({"max_objects": 9}, "max_objects"),
        ({"min_objects": 3, "max_objects": 2}, "max_objects"),
        ({"min_radius": 0.01}, "min_radius"),
        ({"horizon_probability": 1.5}, "horizon_probability"),
        ({"textures": ("plaid",)}, "textures"),
    ],
)
def test_out_of_range_scene_parameters_raise_naming_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        SceneConfig(**kwargs)


def test_dataset_follows_the_protocol():
    ds = SyntheticScenes("val", num_scenes=3, config=SceneConfig(size=64))
    assert isinstance(ds, SegmentationDataset)
    assert len(ds) == 3 and list(ds.class_names) == list(CLASS_NAMES)
    samples = list(ds)
    assert len(samples) == 3 and all(isinstance(s, Sample) for s in samples)
    s = ds[0]
    assert s.image.mode == "RGB" and s.image.size == (64, 64)
    assert s.label.shape == (64, 64) and s.label.dtype == np.int64
    assert isinstance(s.meta["caption"], str) and s.meta["caption"]
    assert ds[-1].id == samples[-1].id
    with pytest.raises(IndexError):
        ds[3]


def test_splits_are_disjoint_and_deterministic():
    val = SyntheticScenes("val", 4)
    train = SyntheticScenes("train", 4)
    assert np.array_equal(np.asarray(val[1].image), np.asarray(SyntheticScenes("val", 4)[1].image))
    for i in range(4):
        assert not np.array_equal(np.asarray(val[i].image), np.asarray(train[i].image))
    seeds_val = {tuple(scene_rng("val", i).integers(0, 2**62, 2)) for i in range(50)}
    seeds_train = {tuple(scene_rng("train", i).integers(0, 2**62, 2)) for i in range(50)}
    assert not seeds_val & seeds_train


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"split": "dev"}, "split"), ({"num_scenes": 0}, "num_scenes"), ({"seed": -1}, "seed")],
)
def test_dataset_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        SyntheticScenes(**kwargs)


def test_clip_tokenizer_has_the_real_vocabulary_and_single_token_class_words():
    pytest.importorskip("transformers")
    from diffuseg.synthetic.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer

    try:
        tok = build_clip_tokenizer()
    except ImportError as err:
        pytest.skip(str(err))
    assert len(tok) == CLIP_VOCAB_SIZE == 49408
    ids = tok("a red circle").input_ids
    # Known ids of the OpenAI CLIP vocabulary.
    assert ids == [49406, 320, 736, 7117, 49407]
    for word in OBJECT_NAMES + BACKGROUND_NAMES + tuple(COLOURS):
        assert len(tok(word).input_ids) == 3, word  # <bos> word <eos>
