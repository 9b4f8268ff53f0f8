"""Sliding-window inference through the `Segmenter` (`Query.window`): one window covering the
input is the whole-image run bit for bit; several windows give one well-formed segmentation."""

from __future__ import annotations

import copy

import pytest
import torch

from diffuseg.multi import MultiSegmenter
from diffuseg.plan import Query
from diffuseg.segdiffusion import widen_conv_in
from diffuseg.segdiffusion.sampler import MaskModel
from diffuseg.segmenter import Segmenter
from diffuseg.settings import SlidingWindow

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = "background, a, b|d, c"


def _segmenter(backbone, method: str, **overrides) -> Segmenter:
    """The open-vocabulary methods, set up small for the tiny model."""
    if method == "segdiffusion":
        model = MaskModel(widen_conv_in(copy.deepcopy(backbone.unet)).eval(), {"base_model": "tiny"})
        short = {"template": "{class}", "steps": 2, "ensemble": 1}
        return Segmenter(backbone, method, resources={"checkpoint": model}, **short, **overrides)
    return Segmenter(backbone, method, template="{class}" if method == "maskdiffusion" else "a {class}", **overrides)


@pytest.mark.parametrize("method", ["diffsegmenter", "maskdiffusion", "segdiffusion"])
def test_one_window_covering_the_input_is_the_whole_image_run(tiny_backbone, quadrant_image, method):
    seg = _segmenter(tiny_backbone, method)
    whole = Query(image=quadrant_image.resize((48, 32)), classes=CLASSES, size=48)
    windowed = Query(image=whole.image, classes=CLASSES, size=48, window=SlidingWindow(48, 16))
    a = seg(whole, torch.Generator().manual_seed(0))
    b = seg(windowed, torch.Generator().manual_seed(0))
    assert b.meta["window"] == {"crop": 48, "stride": 16, "windows": 1}
    assert torch.equal(a.labels, b.labels) and torch.equal(a.scores, b.scores) and a.names == b.names
    assert {k: v for k, v in b.meta.items() if k != "window"} == a.meta  # same frame: input, crop box, model size
    torch.testing.assert_close(
        b.extras["class_scores"], seg.spec.score_maps(seg.features(whole), seg.config, whole, {})
    )


@pytest.mark.parametrize("method", ["diffsegmenter", "maskdiffusion"])
def test_several_windows_give_one_segmentation_of_the_whole_input(tiny_backbone, quadrant_image, method):
    seg = _segmenter(tiny_backbone, method, batch_size=4)
    image = quadrant_image.resize((64, 48))
    whole = seg(Query(image=image, classes=CLASSES, size=64))
    out = seg(Query(image=image, classes=CLASSES, size=64, window=SlidingWindow(32, 16)))
    # a 48x64 input, 32x32 windows 16 apart: 2 rows x 3 columns, in two model calls of 4 and 2
    assert out.meta["window"]["windows"] == 6 and seg.model_calls == 1 + 2
    assert out.size == whole.size == (48, 64) and out.meta["model_size"] == whole.meta["model_size"]
    assert out.names == ["background", "a", "b", "c"] and 0 <= int(out.labels.min()) and out.num_segments <= 4
    scores = out.extras["class_scores"]
    assert scores.shape == (4, 48, 64) and not scores.isnan().any()
    assert (scores[0] == seg.config.background_score).all()  # the constant background, after averaging
    assert torch.equal(out.labels, scores.max(0).indices)
    assert out.in_input_frame().size == (48, 64)


def test_the_background_score_applies_to_the_stitched_scores(tiny_backbone, quadrant_image):
    seg = _segmenter(tiny_backbone, "diffsegmenter", background_score=1.0)
    out = seg(Query(image=quadrant_image, classes=CLASSES, size=64, window=SlidingWindow(32, 16)))
    assert (out.labels == 0).all()  # min-max scores are <= 1: ties go to the first class, the background
    low = seg.resegment(background_score=0.0)  # from the recorded windows: no model call
    assert seg.model_calls == 9 and (low.labels != 0).any()


def test_windows_draw_noise_from_the_query_generator_in_order(tiny_backbone, quadrant_image):
    query = Query(image=quadrant_image, classes="a, b", size=64, window=SlidingWindow(32, 32))

    def scores(generator) -> torch.Tensor:  # a fresh segmenter: features are cached per image, not per draw
        seg = _segmenter(tiny_backbone, "diffsegmenter", batch_size=2)  # noises its latent: every window draws
        return seg.segment_batch([query], generator=generator)[0].extras["class_scores"]

    a = scores(torch.Generator().manual_seed(5))
    assert torch.equal(a, scores([torch.Generator().manual_seed(5)]))  # one generator per query: the same draws
    assert not torch.equal(a, scores(torch.Generator().manual_seed(6)))


def test_methods_without_class_scores_and_odd_crops_are_refused(tiny_backbone, quadrant_image):
    with pytest.raises(ValueError, match="method 'diffseg' has no per-class scores"):
        Segmenter(tiny_backbone, "diffseg", probe=Query(window=SlidingWindow(32, 16)))
    seg = Segmenter(tiny_backbone, "slic")
    with pytest.raises(ValueError, match="method 'slic' has no per-class scores"):
        seg(Query(image=quadrant_image, window=SlidingWindow(32, 16)))
    seg = _segmenter(tiny_backbone, "diffsegmenter")
    with pytest.raises(ValueError, match="`window.crop` must be a multiple of 16 for this model, got 24"):
        seg(Query(image=quadrant_image, classes="a, b", window=SlidingWindow(24, 8)))
    with pytest.raises(ValueError, match="`window` must be a SlidingWindow"):
        Query(window=(32, 16))
    with pytest.raises(ValueError, match="MultiSegmenter runs whole inputs only"):
        MultiSegmenter([seg]).segment_batch([Query(image=quadrant_image, classes="a", window=SlidingWindow(32, 16))])


def test_short_side_resize_mode_scales_the_shorter_side(tiny_backbone, quadrant_image):
    seg = _segmenter(tiny_backbone, "diffsegmenter")
    out = seg(Query(image=quadrant_image.resize((60, 40)), classes="a, b", size=32, resize_mode="short_side"))
    assert out.meta["model_size"] == [32, 48] and out.meta["crop_box"] == [0, 0, 60, 40]


def test_an_eval_protocol_with_a_window_and_a_short_side(tmp_path, tiny_backbone):
    """mmseg's slide protocol (shorter side resized, windows, scored at the label's full size)."""
    import numpy as np
    from PIL import Image

    from diffuseg.datasets import ArrayDataset
    from diffuseg.eval import OutputOptions, evaluate
    from diffuseg.eval.protocols import PROTOCOLS, Protocol
    from diffuseg.types import Sample

    proto = Protocol("slide", resize_mode="short_side", model_size=32, window=SlidingWindow(32, 16))
    with pytest.raises(ValueError, match="`window` must be a SlidingWindow"):
        Protocol("slide", window=(32, 16))
    assert "window" not in PROTOCOLS["full"].record() and proto.record()["window"] == {"crop": 32, "stride": 16}
    label = np.zeros((40, 60), np.int64)
    label[:, 30:] = 1
    image = Image.fromarray(np.where(label[..., None] == 1, 200, 30).astype(np.uint8).repeat(3, -1))
    ds = ArrayDataset("two", ["background", "cat"], [Sample("s", image, label)])
    report = evaluate(
        ds, "diffsegmenter", backbone=tiny_backbone, model_id="tiny-sd1", protocol=proto,
        config_overrides={"template": "a {class}"}, output=OutputOptions(tmp_path / "r"),
    )  # fmt: skip
    assert report["protocol"]["window"] == {"crop": 32, "stride": 16} and report["dataset"]["num_evaluated"] == 1
    assert report["metrics"]["num_pixels"] == 40 * 60  # the label's full resolution


def test_segment_window_flag(tiny_model_dir, tmp_path, photo, capsys):
    import json

    from diffuseg.cli import main

    def segment(*args: str) -> int:
        common = ["segment", photo, "--model", str(tiny_model_dir), "--no-progress", "--seed", "0"]
        return main([*common, "--out", str(tmp_path / "out"), *args])

    assert segment("--method", "diffsegmenter", "--classes", "red,blue", "--template", "{class}", "--size", "64",
                   "--window", "32,16") == 0  # fmt: skip
    doc = json.loads((tmp_path / "out" / "photo.json").read_text())
    assert doc["meta"]["window"] == {"crop": 32, "stride": 16, "windows": 6}  # a 48x64 input: 2 x 3 windows
    assert (doc["height"], doc["width"]) == (32, 48)  # labels on the photo's own frame
    capsys.readouterr()
    assert segment("--method", "diffsegmenter", "--classes", "red", "--window", "32") == 2
    assert "argument --window: give CROP,STRIDE" in capsys.readouterr().err
    assert segment("--method", "diffsegmenter", "--classes", "red", "--window", "16,32") == 2
    assert "`window.stride` must be at most `window.crop` (16)" in capsys.readouterr().err
    assert segment("--method", "diffseg", "--window", "32,16", "--overwrite") == 2
    assert "method 'diffseg' has no per-class scores" in capsys.readouterr().err
    assert segment("--method", "diffsegmenter", "--classes", "red", "--template", "{class}", "--window", "24,8",
                   "--overwrite") == 2  # fmt: skip
    assert "`window.crop` must be a multiple of 16" in capsys.readouterr().err
    # batch takes the same flag and writes the same bytes as segment (its local loop)
    flags = ["--method", "diffsegmenter", "--classes", "red,blue", "--template", "{class}", "--size", "64",
             "--window", "32,16", "--model", str(tiny_model_dir), "--no-progress", "--seed", "0"]  # fmt: skip
    assert main(["batch", photo, "--out", str(tmp_path / "batch"), *flags]) == 0
    assert (tmp_path / "batch" / "photo.json").read_bytes() == (tmp_path / "out" / "photo.json").read_bytes()


def test_stitched_labels_and_scores_have_a_known_answer():
    from diffuseg.windowed import WindowScores, stitched

    query = Query(classes="a, b", window=SlidingWindow(2, 1))
    left = torch.stack([torch.ones(2, 2), torch.zeros(2, 2)])  # columns 0-1: class a scores 1
    right = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 2.0)])  # columns 1-2: class b scores 2
    out = stitched(
        query, [WindowScores((0, 2, 0, 2), left, 0.1, 0.2), WindowScores((0, 2, 1, 3), right, 0.3, 0.4)], (2, 3)
    )
    # the middle column averages the two windows: a 0.5, b 1.0
    assert out.labels.tolist() == [[0, 1, 1], [0, 1, 1]]
    assert out.scores.tolist() == [1.0, 1.5] and out.names == ["a", "b"]
    assert out.extras["class_scores"][:, 0, 1].tolist() == [0.5, 1.0]
    assert out.meta == {"window": {"crop": 2, "stride": 1, "windows": 2}}
    assert out.timings["model"] == pytest.approx(0.4) and out.timings["segment"] >= 0.6
