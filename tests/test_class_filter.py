"""Class filters: the training-free ``diffusion`` filter, its place between a query's classes and
the method, and what it records."""

from __future__ import annotations

import json

import pytest
import torch

from diffuseg.labeling.filters import DiffusionFilter, FilterResult, make_filter
from diffuseg.plan import Query
from diffuseg.segmenter import Segmenter

CLASSES = (("a",), ("b", "d"), ("background",), ("c",))


@pytest.mark.parametrize("score", ["attention", "denoising"])
def test_filter_scores_every_class_keeps_a_subset_in_order_and_is_seeded(score, tiny_backbone, quadrant_image):
    flt = DiffusionFilter(score=score, image_size=32, timesteps=(100, 500), draws=2, template="{class}")
    out = flt(tiny_backbone, quadrant_image, CLASSES, torch.Generator().manual_seed(0))
    again = flt(tiny_backbone, quadrant_image, CLASSES, torch.Generator().manual_seed(0))
    assert out == again
    assert set(out.scores) == {"a", "b", "c"}  # background is never scored
    assert all(torch.isfinite(torch.tensor(v)) for v in out.scores.values())
    assert ("background",) in out.kept
    assert list(out.kept) == [c for c in CLASSES if c in out.kept]  # a sub-vocabulary, in order
    if not out.fell_back:
        threshold = flt.min_area if score == "attention" else 0.0
        assert {c[0] for c in out.kept} - {"background"} == {n for n, v in out.scores.items() if v > threshold}


def test_attention_scores_are_areas_that_sum_to_one(tiny_backbone, quadrant_image):
    out = DiffusionFilter(score="attention", image_size=32, template="{class}")(
        tiny_backbone, quadrant_image, CLASSES, torch.Generator().manual_seed(0)
    )
    assert sum(out.scores.values()) == pytest.approx(1.0)  # every position is won by one class


def test_denoising_batches_every_prompt_and_draw_of_a_timestep(tiny_backbone, quadrant_image):
    calls = []
    handle = tiny_backbone.unet.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    try:
        DiffusionFilter(score="denoising", image_size=32, timesteps=(100, 300, 500), draws=2, template="{class}")(
            tiny_backbone, quadrant_image, CLASSES, torch.Generator().manual_seed(0)
        )
    finally:
        handle.remove()
    assert calls == [(1 + 4) * 2] * 3  # (empty prompt + 4 names) x 2 draws, one call per timestep


def test_a_filter_that_keeps_nothing_falls_back_to_all_and_says_so(tiny_backbone, quadrant_image):
    out = DiffusionFilter(score="attention", image_size=32, min_area=1.0, template="{class}")(
        tiny_backbone, quadrant_image, CLASSES, torch.Generator().manual_seed(0)
    )
    assert out.fell_back and out.kept == CLASSES
    assert out.record()["fell_back"] is True and out.record()["kept"] == ["a", "b", "background", "c"]


def test_bad_filter_settings_name_the_argument():
    with pytest.raises(ValueError, match="class_filter.*'clip-x'"):
        make_filter("clip-x")
    with pytest.raises(ValueError, match="'clip' needs a CLIP model.*--clip"):
        make_filter("clip")
    assert make_filter("none") is None and make_filter(None) is None
    for bad in ({"score": "loss"}, {"draws": 0}, {"timesteps": ()}, {"min_area": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            DiffusionFilter(**bad)


class _KeepFirst:
    """A stand-in filter that keeps the first class and counts its calls."""

    name = "first"

    def __init__(self):
        self.calls = 0

    def __call__(self, backbone, image, classes, generator=None, caption=None):
        self.calls += 1
        return FilterResult(classes[:1], {c[0]: float(i) for i, c in enumerate(classes)}, False, self.name)


def test_segmenter_gives_the_method_only_the_kept_classes_and_records_them(tiny_backbone, quadrant_image):
    flt = _KeepFirst()
    seg = Segmenter(tiny_backbone, "diffsegmenter", class_filter=flt, image_size=32, template="{class}")
    out = seg(Query(image=quadrant_image, classes="a, b, c"), torch.Generator().manual_seed(0))
    assert out.names == ["a"]
    assert out.meta["class_filter"]["kept"] == ["a"] and out.meta["class_filter"]["filter"] == "first"
    seg.resegment(background_score=0.3)
    assert flt.calls == 1  # re-segmenting re-uses the filter's decision
    json.dumps(out.to_json_dict())


def test_segmenter_filter_by_name_and_without_a_backbone():
    with pytest.raises(ValueError, match="class_filter.*backbone"):
        Segmenter(None, "kmeans-color", class_filter="diffusion")


def test_eval_records_the_kept_classes(tiny_backbone, tmp_path):
    from diffuseg.eval import OutputOptions, evaluate
    from diffuseg.synthetic.dataset import SyntheticScenes

    report = evaluate(
        SyntheticScenes("val", 2), "diffsegmenter", backbone=tiny_backbone, class_filter=_KeepFirst(),
        config_overrides={"image_size": 32, "template": "{class}"}, output=OutputOptions(tmp_path),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert report["dataset"]["num_evaluated"] == 2
    assert report["class_filter"]["kept_per_image"] == 1 and report["class_filter"]["fell_back"] == 0
    (results,) = tmp_path.glob("*.jsonl")
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    images = [x for x in lines if x.get("type") == "image"]
    assert all(x["class_filter"]["kept"] == ["grass"] for x in images)


def test_cli_filter_flag(tiny_model_dir, photo, tmp_path, capsys):
    from diffuseg.cli import main

    base = ["segment", photo, "--model", str(tiny_model_dir), "--seed", "0", "--no-progress"]
    assert main([*base, "--method", "slic", "--filter", "diffusion", "--out", str(tmp_path / "a")]) == 2
    base += ["--size", "32"]
    assert "--filter applies to methods that use class names" in capsys.readouterr().err
    assert main([*base, "--method", "diffseg", "--filter", "diffusion", "--out", str(tmp_path / "b")]) == 2
    assert "--filter chooses among --classes" in capsys.readouterr().err
    argv = [*base, "--method", "diffsegmenter", "--template", "{class}", "--filter", "diffusion"]
    # "a photo of a x and y" just fits the tiny tokenizer's 14-token budget
    assert main([*argv, "--classes", "x,y", "--out", str(tmp_path / "c")]) == 0
    record = json.loads((tmp_path / "c" / "photo.json").read_text())
    assert record["meta"]["class_filter"]["filter"] == "diffusion"
    assert set(record["meta"]["class_filter"]["scores"]) == {"x", "y"}
