"""Naming segments by vote: known answers for mean and majority voting, merging, errors."""

from __future__ import annotations

import pytest
import torch

from diffuseg.ops.votes import name_segments, segment_votes


def test_each_segment_takes_its_class_and_segments_with_one_name_merge():
    labels = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2]])
    maps = torch.zeros(2, 3, 4)
    maps[0, :2, :2] = 1.0  # class 0 on segment 0
    maps[1, :2, 2:] = 1.0  # class 1 on segment 1
    maps[0, 2] = 0.5  # and class 0 on segment 2
    named = name_segments(labels, maps)
    assert named.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0]]


def test_mean_and_majority_differ_as_the_reference_describes():
    """60 % of the segment leans weakly to class 0, 40 % strongly to class 1."""
    labels = torch.zeros(1, 10, dtype=torch.long)
    maps = torch.zeros(2, 1, 10)
    maps[0, 0, :6], maps[1, 0, :6] = 0.55, 0.45
    maps[0, 0, 6:], maps[1, 0, 6:] = 0.0, 1.0
    assert name_segments(labels, maps, "mean").unique().tolist() == [1]
    assert name_segments(labels, maps, "majority").unique().tolist() == [0]
    votes = segment_votes(labels, maps, "majority")
    torch.testing.assert_close(votes, torch.tensor([[0.6, 0.4]]))


def test_majority_is_a_vote_not_the_references_median():
    """Pixel classes 0,0,1,1,2,2,2: the reference's median gives 1; the majority is 2."""
    labels = torch.zeros(1, 7, dtype=torch.long)
    pixel_class = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    maps = torch.nn.functional.one_hot(pixel_class, 3).t().float().view(3, 1, 7)
    assert name_segments(labels, maps, "majority").unique().tolist() == [2]


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="voting"):
        segment_votes(torch.zeros(2, 2, dtype=torch.long), torch.zeros(1, 2, 2), "median")
    with pytest.raises(ValueError, match="class_maps"):
        segment_votes(torch.zeros(2, 2, dtype=torch.long), torch.zeros(1, 3, 2))


def test_diffseg_names_its_segments_from_the_query_classes(tiny_backbone, quadrant_image):
    from diffuseg.plan import Query
    from diffuseg.segmenter import Segmenter

    seg = Segmenter(tiny_backbone, "diffseg", label="classes", label_template="{class}", image_size=32)
    out = seg(Query(image=quadrant_image, classes="x, y|z"), torch.Generator().manual_seed(0))
    assert out.names == ["x", "y"]
    assert set(out.labels.unique().tolist()) <= {0, 1}
    segments = out.extras["segments"]
    assert segments.shape == out.labels.shape
    for s in segments.unique():  # each segment got one name
        assert out.labels[segments == s].unique().numel() == 1
    assert Segmenter(tiny_backbone, "diffseg", image_size=32)(quadrant_image).names is None


def test_naming_without_classes_leaves_segments_unnamed(tiny_backbone, quadrant_image):
    from diffuseg.segmenter import Segmenter

    out = Segmenter(tiny_backbone, "diffseg", label="classes", image_size=32)(quadrant_image)
    assert out.names is None


def test_cli_names_diffseg_segments_with_classes(tiny_model_dir, photo, tmp_path, capsys):
    import json

    from diffuseg.cli import main

    base = ["segment", photo, "--model", str(tiny_model_dir), "--method", "diffseg", "--size", "32", "--no-progress"]
    assert main([*base, "--classes", "x,y", "--out", str(tmp_path / "a")]) == 0
    record = json.loads((tmp_path / "a" / "photo.json").read_text())
    assert {s["name"] for s in record["segments"]} <= {"x", "y"}
    assert main([*base, "--label", "classes", "--out", str(tmp_path / "b")]) == 2
    assert "--label classes names the segments from --classes" in capsys.readouterr().err
    assert main([*base, "--label", "caption", "--out", str(tmp_path / "c")]) == 2
    assert "--label caption names the segments from the nouns of a caption" in capsys.readouterr().err
    assert main([*base, "--caption", "a cat on a mat", "--out", str(tmp_path / "d")]) == 0
    record = json.loads((tmp_path / "d" / "photo.json").read_text())
    assert {s["name"] for s in record["segments"]} <= {"cat", "mat"}
    assert main([*base, "--label", "none", "--classes", "x", "--out", str(tmp_path / "e")]) == 2


def test_diffseg_names_segments_from_the_caption_nouns(tiny_backbone, quadrant_image):
    from diffuseg.plan import Query
    from diffuseg.segmenter import Segmenter

    seg = Segmenter(tiny_backbone, "diffseg", label="caption", image_size=32)
    out = seg(Query(image=quadrant_image, caption="two cats, a dog"), torch.Generator().manual_seed(0))
    assert out.names == ["cat", "dog"]
    with pytest.raises(ValueError, match="caption"):
        seg(Query(image=quadrant_image), torch.Generator().manual_seed(0))
    assert seg(Query(image=quadrant_image, caption="very quickly"), torch.Generator().manual_seed(0)).names is None
    prefixes = []

    def captioner(image, prefix):
        prefixes.append(prefix)
        return "a cat"

    by_captioner = Segmenter(
        tiny_backbone, "diffseg", label="caption", image_size=32, resources={"captioner": captioner}
    )
    assert by_captioner(quadrant_image, torch.Generator().manual_seed(0)).names == ["cat"]
    assert prefixes and set(prefixes) == {""}


def test_diffcut_names_its_segments_from_the_same_pass(tiny_backbone, quadrant_image):
    from diffuseg.plan import Query
    from diffuseg.segmenter import Segmenter

    seg = Segmenter(tiny_backbone, "diffcut", label="classes", label_template="{class}", image_size=32, tau=0.9)
    out = seg(Query(image=quadrant_image, classes="x, y"), torch.Generator().manual_seed(0))
    assert out.names == ["x", "y"] and seg.model_calls == 1
    segments = out.extras["segments"]
    for s in segments.unique():
        assert out.labels[segments == s].unique().numel() == 1
