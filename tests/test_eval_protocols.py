"""Protocol presets: crop boxes, nearest resizing rules, scoring grids, method overrides."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffuseg.eval.protocols import (
    PROTOCOLS,
    Protocol,
    get_protocol,
    prepare,
    resize_nearest,
    to_score_grid,
)


def _pair(h: int, w: int) -> tuple[Image.Image, np.ndarray]:
    label = np.arange(h * w, dtype=np.int64).reshape(h, w)
    return Image.fromarray(np.zeros((h, w, 3), np.uint8)), label


def test_diffseg_crops_the_short_side_centre_then_512():
    image, label = _pair(6, 11)
    img, lab = prepare(image, label, PROTOCOLS["diffseg"])
    assert img.size == (512, 512) and lab.shape == (512, 512)
    # crop columns (11 - 6) // 2 = 2 .. 8
    assert np.array_equal(np.unique(lab), np.unique(label[:, 2:8]))


def test_diffcut_crops_min_side_minus_one_then_scores_at_128():
    image, label = _pair(6, 10)
    img, lab = prepare(image, label, PROTOCOLS["diffcut"])
    assert img.size == (1024, 1024) and lab.shape == (1024, 1024)
    # side 5, torchvision offsets: top round(0.5) = 0, left round(2.5) = 2
    assert np.array_equal(np.unique(lab), np.unique(label[0:5, 2:7]))
    grid = to_score_grid(lab, PROTOCOLS["diffcut"])
    assert grid.shape == (128, 128) and np.array_equal(grid, lab[::8, ::8])  # F.interpolate nearest


def test_full_protocol_keeps_everything():
    image, label = _pair(7, 9)
    img, lab = prepare(image, label, PROTOCOLS["full"])
    assert img.size == (9, 7) and np.array_equal(lab, label)
    q = _protocol_query(PROTOCOLS["full"])
    assert (q.size, q.resize_mode, q.label_size) == (None, "keep_aspect", None)  # the method's own size
    q = _protocol_query(PROTOCOLS["diffseg"])
    assert (q.size, q.resize_mode, q.label_size) == (512, "crop", None)


def _protocol_query(protocol):
    """The Query the eval runner builds for one sample under `protocol`."""
    from diffuseg.eval.runner import _query
    from diffuseg.types import Sample

    sample = Sample("s", Image.new("RGB", (9, 7)), np.zeros((7, 9), np.int64), {"caption": "a cat"})
    query = _query(sample, sample.image, protocol, ["background", "cat"])
    assert query.id == "s" and query.caption == "a cat" and query.class_names == ["background", "cat"]
    return query


def test_nearest_rules():
    row = np.array([[10, 11, 12, 13]])
    assert resize_nearest(row, (1, 2), "floor").tolist() == [[10, 12]]
    assert resize_nearest(row, (1, 2), "exact").tolist() == [[11, 13]]
    assert resize_nearest(row, (1, 8), "floor").tolist() == [[10, 10, 11, 11, 12, 12, 13, 13]]


def test_bad_protocols():
    with pytest.raises(ValueError, match="protocol"):
        get_protocol("stego")
    with pytest.raises(ValueError, match="crop"):
        Protocol("x", crop="circle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="input_size"):
        Protocol("x", input_size=0)


def test_diffcut_protocol_asks_for_assignment_at_the_scoring_size():
    from diffuseg.eval.protocols import get_protocol

    q = _protocol_query(get_protocol("diffcut"))
    assert (q.size, q.resize_mode, q.label_size) == (1024, "crop", 128)
    assert _protocol_query(get_protocol("diffseg")).label_size is None


def test_maskdiffusion_protocol_squashes_at_512_and_scores_at_256_by_352(tmp_path):
    """The method is told 512 px, squashed; labels and predictions are scored on 256 x 352; a
    resumed run accepts the (H, W) score grid of its fingerprint."""
    from diffuseg.datasets import ArrayDataset
    from diffuseg.eval import EngineOptions, OutputOptions, evaluate
    from diffuseg.eval.protocols import get_protocol, to_score_grid
    from diffuseg.types import Sample

    proto = get_protocol("maskdiffusion")
    assert proto.query_size == 512 and proto.label_size == 352 and proto.resize_mode == "squash"
    label = np.zeros((64, 128), np.int64)
    label[:, 64:] = 1
    assert to_score_grid(label, proto).shape == (256, 352)
    image = Image.fromarray(np.zeros((64, 128, 3), np.uint8))
    ds = ArrayDataset("two", ["x", "y"], [Sample("a", image, label)])
    seen = []

    def factory(*args, **kwargs):
        from diffuseg.segmenter import Segmenter

        seg = Segmenter(*args, **kwargs)
        inner = seg.segment_batch

        def spy(queries, *a, **k):
            seen.extend((q.size, q.resize_mode, q.label_size) for q in queries)
            return inner(queries, *a, **k)

        seg.segment_batch = spy
        return seg

    report = evaluate(
        ds,
        "single-segment",
        protocol="maskdiffusion",
        output=OutputOptions(tmp_path),
        engine=EngineOptions(segmenter_factory=factory),
    )
    assert seen == [(512, "squash", 352)]
    assert report["metrics"]["num_pixels"] == 256 * 352
    again = evaluate(ds, "single-segment", protocol="maskdiffusion", output=OutputOptions(tmp_path, resume=True))
    assert again["metrics"] == report["metrics"]
